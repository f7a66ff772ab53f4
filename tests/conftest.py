import os
import warnings

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


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
        "train.tensorboard": "false",
    }
    sets.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in sets.items()]
