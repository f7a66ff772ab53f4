import os
import warnings

import pytest
import torch

from vaelab.config import fill_data_shape, load_config
from vaelab.data import load_data
from vaelab.models import build_model
from vaelab.models.base import GaussianLatentModel

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # the tracker tests talk to their own local server only
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Domain classifiers go to a cache of the test session's own (trained once, shared by the tests)."""
    os.environ["VAELAB_CACHE"] = str(tmp_path_factory.mktemp("vaelab-cache"))
    yield


@pytest.fixture(autouse=True)
def _single_thread_friendly(monkeypatch):
    warnings.simplefilter("default")
    yield


def tiny_overrides(vae: bool = True, **extra) -> list[str]:
    """Overrides for a small, fast run on mnist5k (``vae``: also shrink the VAE's widths and latent)."""
    sets = {
        **({"model.widths": "[8, 16]", "model.latent_dim": "4"} if vae else {}),
        "train.batch_size": "100",
        "train.log_every": "5",
        "train.num_sample_images": "16",
        "train.trackers": "[]",
        # the latent sampler's fit (its candidates compared on validation) is tested where it is the subject
        # (test_samplers.py, the user-folder matrix); elsewhere runs sample from the prior and end sooner
        "train.sampler": "prior",
    }
    sets.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in sets.items()]


def built_model(preset, **sets):
    """The model of ``preset`` (``model.key=value`` overrides in ``sets``) at its dataset's image shape."""
    cfg = load_config(preset=preset, overrides=[f"{k}={v}" for k, v in sets.items()])
    if cfg.model.image_size is None:
        source = cfg.data.name.split("+")[0]  # stl10+unlabeled is STL-10's shape
        shape = {"stl10": (96, 3, 10), "cifar10": (32, 3, 10), "celeba": (64, 3, 0)}.get(source)
        if shape:  # the preset's own data.image_size (CelebA at 128 px) over the dataset's native size
            cfg.model.image_size, cfg.model.channels = cfg.data.image_size or shape[0], shape[1]
            if hasattr(cfg.model, "num_classes"):
                cfg.model.num_classes = shape[2]
        else:
            fill_data_shape(cfg, load_data(cfg.data))
    return build_model(cfg.model)


def parameters_of(module):
    """Copies of a module's parameters, to compare before and after an update."""
    return [p.detach().clone() for p in module.parameters()]


class PixelCodes(GaussianLatentModel):
    """A toy unconditional model whose codes are its 4x4 images' pixels (encode(x) = x, decode(z) = z): a draw at a
    training code is that training image, as a decoder that has learned its training images decodes one."""

    def __init__(self):
        torch.nn.Module.__init__(self)
        self.config = type("C", (), {"latent_dim": 16, "channels": 1, "image_size": 4, "logvar_min": -30,
                                     "logvar_max": 20})()
        self.dummy = torch.nn.Linear(1, 1)

    def encode(self, x, y=None):
        return x.flatten(1), torch.full_like(x.flatten(1), -10.0)

    def decode(self, z, y=None):
        return z.clamp(0, 1).view(-1, 1, 4, 4)
