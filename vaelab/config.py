"""Typed configs: dataclasses for data, model and training, YAML presets, ``--set`` overrides.

A config is three sections plus a name::

    name: vae-mnist
    data:  {name: mnist5k, ...}          -> DataConfig
    model: {name: vae, latent_dim: 16}   -> the registered model's own config dataclass
    train: {epochs: 20, batch_size: 64}  -> TrainConfig

Every key is checked against its dataclass: an unknown key or a wrong type raises ConfigError that
lists the valid keys with their types, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .typed_values import coerce, fields_help

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass
class DataConfig:
    """Where the images come from and how they are shaped (see ``vaelab datasets``)."""

    name: str = "mnist5k"  # mnist5k | digits | folder:PATH | mnist | fashion-mnist | cifar10 | stl10 | celeba | lsun:CATEGORY
    image_size: int | None = None  # None: the dataset's native size; otherwise resize + centre-crop
    channels: int | None = None  # None: native; 1 = grayscale, 3 = RGB
    root: str = "data"  # where torchvision datasets live (or are downloaded to with download: true)
    download: bool = False  # nothing is downloaded unless this is true
    labels_csv: str | None = None  # folder datasets: CSV of file name, then integer or 0/1 columns
    strict: bool = False  # folder datasets: a corrupt file is an error instead of a counted warning
    include_classes: list[int] | None = None  # keep only these class labels (train on "normal" data for anomaly scores)
    # the share of the training images held out, stratified by class, as the validation split: every choice (the
    # best epoch, a sampler's settings, a preset's knobs) is made on it, and the test split is only reported
    # (mnist5k: 500 of its 4,000 training images). 0: no validation split (the run keeps its last weights)
    validation_fraction: float = 0.125
    # folders: decode once into the on-disk pixel cache that every later run and verb memory-maps (vaelab/data/
    # pixel_cache.py; `vaelab cache` lists and clears it); false: decode at every load, held in memory below
    # in_memory_limit_gb and decoded per batch above it
    cache: bool = True
    in_memory_limit_gb: float = 2.0  # uncached folders smaller than this (as uint8) are decoded once into a tensor
    num_workers: int = 2  # DataLoader workers for datasets that stream from disk


@dataclass
class TrainConfig:
    """The training loop's settings; the model's own losses and optimizers live in its config."""

    epochs: int = 20
    # the number of training images the epochs (and every other epoch-counted setting) were chosen for: a smaller
    # training split scales them up by reference / images so the run makes the same optimizer steps
    # (vaelab/training/data_size.py); None: the epochs as given. `vaelab train --epochs N` clears it
    reference_train_images: int | None = None
    size_scaling: dict | None = None  # written by the trainer when it scaled: what changed, from and to
    batch_size: int = 64
    seed: int = 0
    # auto: bf16 autocast for the models measured to keep their quality in it (vaelab.accel.BF16_BY_DEFAULT), on a
    # GPU with bf16 or a CPU with AMX / AVX-512 BF16; fp32 elsewhere. fp16 (+ GradScaler) is CUDA only
    precision: Precision = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    log_every: int = 25  # steps between metrics.jsonl / TensorBoard rows
    checkpoint_every_steps: int = 0  # 0: only at the end of epochs (see checkpoint_every_epochs)
    checkpoint_every_epochs: int = 1
    keep_checkpoints: int = 2
    sample_every_epochs: int = 1
    num_sample_images: int = 64
    grad_clip_norm: float | None = None
    max_steps: int | None = None  # stop after this many optimizer steps
    time_budget: str | None = None  # stop cleanly after this much training time: 90s, 10m, 1.5h
    eval_images: int = 1000  # test images for the per-epoch test ELBO (the final one uses up to 10,000)
    # keep the epoch with the best samples as model-best.safetensors (what sample/evaluate load by default), scored
    # each epoch by FID of best_samples samples in the domain classifier's space (vaelab/metrics/quality.py)
    track_best: bool = True
    best_samples: int = 500
    # at the end, score the best-scored epoch and the last weights again on 3 fresh draws and keep the best only
    # where it wins by more than the draws' noise (vaelab/training/end_of_run.py, confirm_best); false: keep the
    # best-scored epoch as it is
    confirm_best: bool = True
    best_every_epochs: int = 1  # score every n-th epoch (and the last): for epochs of a second or less, the score
    # (~0.1 s for 500 digits on 2 cores) is a sizeable share of the run (benchmarks/RESULTS.md, "Per-epoch work")
    on_nan: Literal["stop", "rollback"] = "stop"  # rollback: restore the last checkpoint, lower the lr, go on
    max_rollbacks: int = 3
    rollback_lr_factor: float = 0.5
    # learning-rate schedule over lr_schedule_epochs (or train.epochs), set at each epoch's start
    # (vaelab/training/lr_schedule.py):
    # constant | gamma (Larsen et al.'s VAE-GAN code: lr * (1 - (e/E)^lr_gamma * (1 - lr_final_factor))) | cosine
    lr_schedule: Literal["constant", "gamma", "cosine"] = "constant"
    lr_final_factor: float = 5e-4  # the last epoch's rate over the first (Larsen et al.: 1e-5 / 0.02)
    lr_gamma: float = 0.75
    lr_schedule_epochs: int | None = None  # the schedule's length (None: train.epochs); after it the rate stays at its end
    # sample, score, evaluate and save an exponential moving average of the weights (e.g. 0.999: over the last ~1,000
    # steps; vaelab/training/weight_average.py); None: the trained weights themselves
    ema_decay: float | None = None
    # the latent sampler fitted on the best weights' training codes at the end of training (models with an encoder)
    # and used by sample / evaluate / the explorer (vaelab/samplers): gmm | flow | two-stage, or prior for N(0, I)
    # and no fit
    sampler: Literal["prior", "gmm", "flow", "two-stage"] = "gmm"
    # where the run is logged besides its folder (vaelab/tracking.py): tensorboard | mlflow | wandb (the last two
    # are the extras vaelab[mlflow] / vaelab[wandb]); [] for none. Their servers and projects come from their own
    # settings (MLFLOW_TRACKING_URI, WANDB_MODE, WANDB_PROJECT, ...) unless these keys set them
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    tracker_uri: str | None = None  # MLflow's tracking URI (None: MLFLOW_TRACKING_URI, else MLflow's default)
    tracker_project: str | None = None  # MLflow's experiment / W&B's project (None: "vaelab", or WANDB_PROJECT)
    tracker_optional: bool = False  # a tracker that cannot be reached at the start: a warning, not an error
    # The speed levers of vaelab.accel, each with a switch (what each measured: benchmarks/RESULTS.md)
    compile: bool = False  # torch.compile each sub-network in place (same weights and checkpoints)
    channels_last: bool = True  # NHWC weights and batches (convolutions skip a layout copy per call); not on MPS
    cpu_bf16_convs: bool = True  # CPU, bf16: the conv rewrites of vaelab/accel/cpu_bf16_convs.py
    fused_optimizer: bool = True  # Adam/AdamW/SGD with fused=True (one kernel per step)


@dataclass
class Config:
    name: str = "vae-mnist"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = None  # the model's config dataclass, chosen by model.name
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "data": dataclasses.asdict(self.data),
            "model": dataclasses.asdict(self.model),
            "train": dataclasses.asdict(self.train),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


TRACKER_NAMES = ("tensorboard", "mlflow", "wandb")  # train.trackers (vaelab/tracking.py)

# Keys renamed since a run folder may have been written: its config.yaml still loads (and resumes).
RENAMED_KEYS = {"train": {"patch_gemm_weight_grads": "cpu_bf16_convs"}}
# Keys removed (nothing set them), with the one value they ever held: an older config.yaml holding it still loads.
REMOVED_KEYS = {"model": {"augment_probability": 1.0}}


def from_dict(cls: type, values: dict | None, section: str) -> Any:
    """Build dataclass ``cls`` from ``values``, checking every key and type."""
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a mapping of keys to values, got {values!r}")
    values = dict(values or {})
    for old, new in RENAMED_KEYS.get(section, {}).items():
        if old in values:
            values.setdefault(new, values.pop(old))
    for gone, held in REMOVED_KEYS.get(section, {}).items():
        if gone in values and values[gone] == held:
            values.pop(gone)
    if section == "train" and "tensorboard" in values:  # before train.trackers: a switch for TensorBoard alone
        on = values.pop("tensorboard")
        on = on.strip().lower() not in ("false", "0", "no", "off") if isinstance(on, str) else bool(on)
        values.setdefault("trackers", ["tensorboard"] if on else [])
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in '{section}': {', '.join(unknown)}.\nValid keys of '{section}' "
            f"({cls.__name__}):\n{fields_help(cls)}"
        )
    kwargs = {k: coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


# ---------------------------------------------------------------------------------------------------
# Presets, files and overrides
# ---------------------------------------------------------------------------------------------------


def preset_names() -> list[str]:
    files = resources.files("vaelab.presets").iterdir()
    return sorted(p.name[: -len(".yaml")] for p in files if p.name.endswith(".yaml"))


def read_preset(name: str) -> dict:
    names = preset_names()
    if name not in names:
        raise ConfigError(f"no preset named '{name}'. Available presets: {', '.join(names)} (see `vaelab presets`)")
    text = resources.files("vaelab.presets").joinpath(f"{name}.yaml").read_text()
    raw = yaml.safe_load(text) or {}
    raw.setdefault("name", name)
    return raw


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections data/model/train, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``3``, ``1e-4``, ``[1, 2]``, ``null``)."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set model.latent_dim=32")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        if len(keys) == 1 and keys[0] in ("name", "description"):
            raw[keys[0]] = str(value)
            continue
        if len(keys) != 2 or keys[0] not in ("data", "model", "train"):
            raise ConfigError(
                f"--set {item!r}: the key must be data.KEY, model.KEY, train.KEY or name "
                f"(e.g. --set train.epochs=5)"
            )
        section = raw.setdefault(keys[0], {})
        if section is None:
            section = raw[keys[0]] = {}
        section[keys[1]] = value
    # epochs the user gives are epochs of their data: a preset's size scaling (train.reference_train_images) is off
    # unless the same overrides set it again
    given = [item.split("=", 1)[0].strip() for item in overrides]
    if "train.epochs" in given and "train.reference_train_images" not in given:
        raw["train"]["reference_train_images"] = None
    return raw


def build_config(raw: dict) -> Config:
    """Turn a raw mapping (preset, file, or run folder's config.yaml) into a checked Config."""
    from .models.registry import model_class

    unknown = sorted(set(raw) - {"name", "description", "data", "model", "train"})
    if unknown:
        raise ConfigError(f"unknown top-level key(s): {', '.join(unknown)}; valid: name, description, data, model, train")
    model_raw = dict(raw.get("model") or {})
    model_name = model_raw.get("name", "vae")
    model_cls = model_class(model_name).config_class
    cfg = Config(
        name=str(raw.get("name", "run")),
        description=str(raw.get("description", "")),
        data=from_dict(DataConfig, raw.get("data"), "data"),
        model=from_dict(model_cls, model_raw, "model"),
        train=from_dict(TrainConfig, raw.get("train"), "train"),
    )
    _check_positive(cfg)
    return cfg


def _check_positive(cfg: Config) -> None:
    t = cfg.train
    unknown = [name for name in t.trackers if name not in TRACKER_NAMES]
    if unknown or len(set(t.trackers)) != len(t.trackers):
        raise ConfigError(f"train.trackers must list each of {', '.join(TRACKER_NAMES)} at most once, got "
                          f"{t.trackers}")
    for key in ("epochs", "batch_size", "log_every", "keep_checkpoints", "eval_images", "best_every_epochs"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {getattr(t, key)}")
    for key in ("checkpoint_every_steps", "checkpoint_every_epochs", "sample_every_epochs", "num_sample_images"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key} must be 0 (off) or positive, got {getattr(t, key)}")
    if t.reference_train_images is not None and t.reference_train_images < 1:
        raise ConfigError(f"train.reference_train_images must be at least 1 (or null: the epochs as given), got "
                          f"{t.reference_train_images}")
    if t.lr_schedule_epochs is not None and t.lr_schedule_epochs < 1:
        raise ConfigError(f"train.lr_schedule_epochs must be at least 1 (or null: train.epochs), got {t.lr_schedule_epochs}")
    if not 0.0 <= t.lr_final_factor <= 1.0 or t.lr_gamma <= 0:
        raise ConfigError(f"train.lr_final_factor must lie in [0, 1] and train.lr_gamma be positive, got "
                          f"{t.lr_final_factor} and {t.lr_gamma}")
    if t.ema_decay is not None and not 0.0 < t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must lie strictly between 0 and 1 (0.999 averages over ~1,000 steps) or be "
                          f"null (no average), got {t.ema_decay}")
    d = cfg.data
    if d.image_size is not None and d.image_size < 4:
        raise ConfigError(f"data.image_size must be at least 4 pixels, got {d.image_size}")
    if d.channels not in (None, 1, 3):
        raise ConfigError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {d.channels}")
    if not 0.0 <= d.validation_fraction < 1.0:
        raise ConfigError(f"data.validation_fraction must lie in [0, 1) (0.125 holds out 1 training image in 8), got "
                          f"{d.validation_fraction}")


def load_config(preset: str | None = None, config_file: str | None = None, overrides: list[str] = ()) -> Config:
    if preset and config_file:
        raise ConfigError("give either --preset or --config, not both")
    if config_file:
        raw = read_config_file(config_file)
    else:
        raw = read_preset(preset or "vae-mnist")
    return build_config(apply_overrides(raw, list(overrides)))


def parse_duration(text: str) -> float:
    """'90s', '10m', '1.5h', '2h30m' or plain seconds -> seconds (train.time_budget)."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smh])", text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text.replace(" ", ""):
        raise ConfigError(f"cannot read the duration {text!r}; write it like 90s, 10m, 1.5h or 2h30m")
    return sum(float(n) * {"s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def fill_data_shape(cfg: Config, data) -> None:
    """Write the data's image shape and classes (``data``: a ``vaelab.data.DataSplits``) into the model config, so
    that config.yaml alone rebuilds the model."""
    m = cfg.model
    for key, value in (("image_size", data.image_size), ("channels", data.channels)):
        if getattr(m, key, None) not in (None, value):
            raise ConfigError(f"model.{key}={getattr(m, key)} but the data give {value}; set data.{key} instead")
        setattr(m, key, value)
    if hasattr(m, "num_classes"):
        if data.num_classes == 0:
            raise ConfigError(f"model '{m.name}' is conditional but {cfg.data.name} has no class labels "
                              "(use a folder with one subfolder per class, or data.labels_csv with a 'label' column)")
        m.num_classes = data.num_classes
    if hasattr(m, "validate"):
        m.validate()
