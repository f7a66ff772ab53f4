"""Feature extractors for the sample metrics.

- ``classifier:PATH``: a small CNN trained on the dataset's labels (``vaelab train-classifier``); features from its
  penultimate layer, logits from its head. Works offline and on grayscale digits: the domain feature space.
- ``inception``: torchmetrics' FID Inception v3 (2048-d pool features, 1008 logits for IS) from a local weights
  file (``--inception-weights PATH`` or torch's hub cache); downloaded only with ``--download``.
- ``pixels``: the flattened images (for MMD on pixels).
Each extractor maps float images (N, C, H, W) in [0, 1] to features (N, d) and, where it can, logits (N, K).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RunFolderError, VaelabError
from ..paths import cache_dir
from ..run import atomic_write, atomic_write_text

MIN_CLASSIFIER_STEPS = 250  # optimizer steps the domain classifier trains for at least, at up to 32 px
# and at most: its budget is set by what its features need, not by the folder's size (a 42,000-image 64 px folder's
# 10 epochs were 3,300 steps, most of a 28-minute run; issue 40). 1,000 steps at up to 32 px, fewer above it by the
# pixels per image (64 px: 250), about a minute on 2 cores; mnist5k's 270 steps are under it and unchanged
MAX_CLASSIFIER_STEPS = 1000
ACCURACY_IMAGES = 10_000  # test images the classifier's accuracy is measured on at most (spread over the split)


def min_classifier_steps(image_size: int) -> int:
    """The classifier's minimum steps at ``image_size``: MIN_CLASSIFIER_STEPS up to 32 px, fewer above it by the pixels
    per image (the same compute: a 250-step classifier at 96 px took minutes on 2 cores; 64 px: 63 steps)."""
    return math.ceil(MIN_CLASSIFIER_STEPS * min(1.0, (32 / image_size) ** 2))


def max_classifier_steps(image_size: int) -> int:
    """The classifier's step budget at ``image_size``: MAX_CLASSIFIER_STEPS up to 32 px, scaled by the pixels above."""
    return max(min_classifier_steps(image_size), math.ceil(MAX_CLASSIFIER_STEPS * min(1.0, (32 / image_size) ** 2)))


INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class DomainClassifier(nn.Module):
    """x (B, C, S, S) in [0, 1] -> features (B, feature_dim), logits (B, K). Two conv blocks, one hidden layer."""

    def __init__(self, channels: int, image_size: int, num_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.hparams = dict(channels=channels, image_size=image_size, num_classes=num_classes, width=width, feature_dim=feature_dim)
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, 1, 1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, 1, 1), nn.BatchNorm2d(4 * width), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(16 * width, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x):
        h = self.body(x)
        return h, self.head(h)


def train_classifier(x, y: torch.Tensor, num_classes: int, epochs: int = 10, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, x_test=None, y_test=None, progress: bool = False,
                     device: str | torch.device = "cpu", max_steps: int | None = None) -> tuple[DomainClassifier, dict]:
    """Train a DomainClassifier on images x with labels y (N,); returns it in eval mode, on ``device``.

    ``x``: float (N, C, S, S) in [0, 1], or a split (``data.ImageSet``, uint8, read a batch at a time: a folder's
    training split is never held as floats). ``epochs`` over x, at least ``min_classifier_steps`` and at most
    ``max_steps`` (default ``max_classifier_steps``) optimizer steps, whatever N. Light augmentation (random shifts
    of up to 2 px) keeps it from overfitting small sets such as mnist5k.
    """
    from ..data import ImageSet
    from ..progress import Phase

    take = (lambda idx: x.take(idx).float() / 255.0) if isinstance(x, ImageSet) else (lambda idx: x[idx])
    n = len(x)
    channels, size = take(torch.zeros(1, dtype=torch.long)).shape[1::2]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DomainClassifier(channels, size, num_classes).to(device)
    # above 32 px, in bf16 autocast and channels-last where the device runs bf16 natively: a 64 px step of 128 images
    # took 0.49 s in fp32 and 0.19 s so on the Xeon (AMX), most of a large folder's first run (RESULTS.md, "Scale").
    # Up to 32 px (mnist5k: 15 s) it stays fp32, so the feature space of the published mnist5k numbers is unchanged
    fast = size > 32 and _native_bf16(torch.device(device))
    layout = torch.channels_last if fast else torch.contiguous_format
    model = model.to(memory_format=layout)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # a small folder's epoch is a step or two (350 images: 2 of 128; under 128 images there was none): the steps grow
    # to min_classifier_steps at least (mnist5k's 3,500 images: 10 epochs, 270 steps, unchanged)
    batch_size = max(1, min(batch_size, n))
    per_epoch = n // batch_size
    steps = max(epochs * per_epoch, min_classifier_steps(size))
    steps = min(steps, max(max_steps or max_classifier_steps(size), min_classifier_steps(size)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    done = 0
    with Phase(f"training the domain classifier ({n:,} images, {size} px, {device})", steps, "steps",
               bar=progress) as phase:
        while done < steps:
            order = torch.randperm(n, generator=gen)
            for i in range(min(per_epoch, steps - done)):
                idx = order[i * batch_size : (i + 1) * batch_size]
                xb = take(idx).to(device)
                dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
                xb = torch.roll(xb, shifts=(dx, dy), dims=(2, 3)).contiguous(memory_format=layout)
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=fast):
                    loss = F.cross_entropy(model(xb)[1].float(), y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                done += 1
                phase.advance()
    model = model.eval().to(memory_format=torch.contiguous_format)
    info = {"train_images": n, "epochs": round(steps / max(per_epoch, 1), 2), "steps": steps,
            "precision": "bf16 autocast" if fast else "fp32"}
    if x_test is not None:
        info["test_accuracy"] = accuracy(model, x_test, y_test)
        info["test_images"] = min(len(x_test), ACCURACY_IMAGES)
    return model, info


def _native_bf16(device: torch.device) -> bool:
    from ..accel import cpu_has_fast_bf16

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast_bf16()


@torch.no_grad()
def accuracy(model: DomainClassifier, x, y: torch.Tensor, limit: int = ACCURACY_IMAGES) -> float:
    """The share of up to ``limit`` images (spread over x: a float tensor or a split) classified as their label."""
    from ..data import ImageSet, spaced_indices

    model.eval()
    device = next(model.parameters()).device
    idx = spaced_indices(len(x), limit)
    hits = 0
    for part in idx.split(500):
        xb = x.take(part).float() / 255.0 if isinstance(x, ImageSet) else x[part]
        hits += int((model(xb.to(device))[1].argmax(1).cpu() == y[part]).sum())
    return hits / len(idx)


def save_classifier(model: DomainClassifier, folder: Path, info: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / "classifier.safetensors", lambda tmp: save_file(state, tmp))
    atomic_write_text(folder / "classifier.json", json.dumps({**model.hparams, **info}, indent=2) + "\n")


def load_classifier(folder: str | Path) -> DomainClassifier:
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / "classifier.json").is_file() is False:
        raise RunFolderError(f"no classifier at {folder} (expected classifier.json and classifier.safetensors); "
                             f"train one with `vaelab train-classifier --out {folder}`")
    meta = json.loads((folder / "classifier.json").read_text())
    model = DomainClassifier(meta["channels"], meta["image_size"], meta["num_classes"], meta["width"], meta["feature_dim"])
    model.load_state_dict(load_file(folder / "classifier.safetensors"))
    model.meta = meta
    return model.eval()


def classifier_folder_for(data_cfg) -> Path:
    """The cached domain classifier of a dataset: <cache>/classifiers/<data>[-<size>px][-<channels>ch]-train[-val<f>]
    (trained on the dataset's train split, which holds no validation image when data.validation_fraction f > 0;
    the cache is ``features.cache_dir()``)."""
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", data_cfg.name).strip("_")
    size = f"-{data_cfg.image_size}px" if data_cfg.image_size else ""
    channels = f"-{data_cfg.channels}ch" if data_cfg.channels else ""
    held_out = f"-val{data_cfg.validation_fraction:g}" if data_cfg.validation_fraction > 0 else ""
    return cache_dir() / "classifiers" / f"{key}{size}{channels}-train{held_out}"


def train_and_save_classifier(data, out: Path, epochs: int = 10, seed: int = 0, progress: bool = True,
                              device: str | torch.device = "cpu") -> dict:
    """Train the domain classifier on a dataset's train split, test it on the test split, save it to ``out``."""
    if data.train.labels is None or data.num_classes < 2:
        raise VaelabError(f"{data.description} has no class labels, so no domain classifier can be trained; "
                          "use --features inception (with local weights) or pixels")
    if progress:
        print(f"training a domain classifier on {len(data.train):,} images ({epochs} epochs, "
              f"{min_classifier_steps(data.image_size)}-{max_classifier_steps(data.image_size)} steps) -> {out}",
              flush=True)
    model, info = train_classifier(data.train, data.train.labels, data.num_classes, epochs=epochs, seed=seed,
                                   x_test=data.test, y_test=data.test.labels, progress=progress, device=device)
    info["data"] = data.description
    save_classifier(model.cpu(), out, info)
    return info


def cached_classifier(data, data_cfg, progress: bool = False, device: str | torch.device = "cpu") -> Path:
    """The folder of the dataset's domain classifier in the cache, trained there first if it is missing."""
    folder = classifier_folder_for(data_cfg)
    meta = folder / "classifier.json"
    if meta.is_file():  # one cached for another state of a folder (or shape), or with too few steps (older recipe)
        info = json.loads(meta.read_text())
        steps = info.get("steps", info.get("epochs", 0) * (info.get("train_images", 0) // 128))
        shape = (info.get("channels"), info.get("image_size"), info.get("train_images"))
        if shape != (data.channels, data.image_size, len(data.train)) or steps < min_classifier_steps(data.image_size):
            meta.unlink()
    if not meta.is_file():
        train_and_save_classifier(data, folder, progress=progress, device=device)
    return folder


class Extractor:
    """A named feature extractor: ``features(x)`` (N, d) and ``logits(x)`` (N, K) or None, batched."""

    name: str = ""
    has_logits: bool = False

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features, logits or None) in one pass where the network gives both."""
        return self.features(x), self.logits(x)


class ClassifierExtractor(Extractor):
    has_logits = True

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        self.model = load_classifier(folder).to(device)
        self.device = torch.device(device)
        self.name = f"classifier:{folder}"
        self.settings = {"extractor": self.name, "feature_dim": self.model.meta["feature_dim"],
                         "classifier_test_accuracy": self.model.meta.get("test_accuracy")}

    def embed(self, x):
        """Features (N, d) and logits (N, K) on the CPU, computed on the extractor's device."""
        with torch.no_grad():
            parts = [[t.float().cpu() for t in self.model(x[i : i + 500].to(self.device))] for i in range(0, len(x), 500)]
        return torch.cat([f for f, _ in parts]), torch.cat([l for _, l in parts])

    def features(self, x):
        return self.embed(x)[0]

    def logits(self, x):
        return self.embed(x)[1]


class PixelExtractor(Extractor):
    name = "pixels"

    def __init__(self):
        self.settings = {"extractor": "pixels"}

    def features(self, x):
        return x.flatten(1).float()


def inception_weights_path(explicit: str | None) -> Path | None:
    """The local Inception weights: the given file, or torch's hub cache."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise VaelabError(f"--inception-weights {path}: no such file")
        return path
    hub = _hub_checkpoints() / INCEPTION_FILE
    return hub if hub.is_file() else None


INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


def _hub_checkpoints() -> Path:
    return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"


def download_inception_weights() -> Path:
    """Fetch torch-fidelity's FID Inception weights into torch's hub cache (``--download`` only): the bytes are
    written to the file and checked against the hash prefix in its name, and nothing is unpickled here."""
    target = _hub_checkpoints() / INCEPTION_FILE
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(INCEPTION_URL, str(target), hash_prefix=INCEPTION_FILE.rsplit("-", 1)[1][:8])
    return target


def read_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """A weights file read with ``torch.load(weights_only=True)``: plain tensors in plain containers, or a
    VaelabError. A pickle that holds code (or any object other than tensors) is refused before it can run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (UnpicklingError, RuntimeError, EOFError, ...: the file is not weights)
        raise VaelabError(f"{path} is not a plain weights file, so vaelab refuses to load it (it holds pickled code, "
                          f"objects other than tensors, or is damaged: {type(exc).__name__}: {str(exc).splitlines()[0]})."
                          f" Delete it and put the published {INCEPTION_FILE} there, or fetch it with --download")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VaelabError(f"{path} is not a state dict of tensors; put the published {INCEPTION_FILE} there")
    return state


class InceptionExtractor(Extractor):
    has_logits = True

    def __init__(self, weights: str | None = None, download: bool = False, device: str | torch.device = "cpu"):
        path = inception_weights_path(weights)
        if path is None and not download:
            raise VaelabError(
                f"Inception weights not found. Put {INCEPTION_FILE} (torch-fidelity's FID Inception v3) in "
                f"{_hub_checkpoints()}/, or pass --inception-weights PATH, or --download to fetch it; offline, use "
                f"--features classifier:PATH (train one with `vaelab train-classifier`)"
            )
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ModuleNotFoundError as exc:
            raise VaelabError(f"Inception features need torch-fidelity: pip install torch-fidelity ({exc})") from None
        if path is None:
            path = download_inception_weights()
        state = read_tensor_file(path)
        # torch-fidelity reads its weights with torch.load(weights_only=False) (and downloads through a loader that
        # unpickles too), so it gets a private copy of the tensors checked above, never the file itself
        import tempfile

        with tempfile.TemporaryDirectory() as private:
            checked = Path(private) / "inception-checked.pt"
            torch.save(state, checked)
            try:
                self.net = NoTrainInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                              feature_extractor_weights_path=str(checked), antialias=False)
            except RuntimeError as exc:  # load_state_dict: missing or unexpected keys, wrong shapes
                raise VaelabError(f"{path} holds tensors, but not the FID Inception v3's ({str(exc).splitlines()[0]});"
                                  f" put the published {INCEPTION_FILE} there") from None
        self.device = torch.device(device)
        self.net = self.net.to(self.device)
        self.name = "inception"
        self.settings = {"extractor": "inception-v3-compat (torch-fidelity weights)", "antialias": False,
                         "weights": str(path)}

    def embed(self, x):
        out_f, out_l = [], []
        with torch.no_grad():
            for i in range(0, len(x), 100):
                xb = x[i : i + 100]
                if xb.shape[1] == 1:
                    xb = xb.expand(-1, 3, -1, -1)
                f, logits = self.net((xb * 255).round().clamp(0, 255).to(self.device, torch.uint8))
                out_f.append(f.reshape(len(xb), -1).float().cpu())
                out_l.append(logits.reshape(len(xb), -1).float().cpu())
        return torch.cat(out_f), torch.cat(out_l)

    def features(self, x):
        return self.embed(x)[0]

    def logits(self, x):
        return self.embed(x)[1]


def make_extractor(spec: str, inception_weights: str | None = None, download: bool = False,
                   device: str | torch.device = "cpu") -> Extractor:
    if spec.startswith("classifier:"):
        return ClassifierExtractor(spec[len("classifier:") :], device)
    if spec == "inception":
        return InceptionExtractor(inception_weights, download, device)
    if spec == "pixels":
        return PixelExtractor()
    raise VaelabError(f"unknown --features {spec!r}; use classifier:PATH, inception or pixels")
