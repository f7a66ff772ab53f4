"""Safe checkpoints and run folders: nothing unpickles code, damaged files give clear errors."""

import os
import shutil

import pytest
import torch
import yaml

from conftest import tiny_overrides
from vaelab import load
from vaelab.config import load_config
from vaelab.errors import RunFolderError
from vaelab.run import RunFolder, read_checkpoint
from vaelab.training import train


class Payload:
    """Pickles into a call of os.system: loading it with plain pickle would run the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    cfg = load_config(overrides=tiny_overrides(**{"train.epochs": 2, "train.confirm_best": False}))
    train(cfg, root / "run", progress=False)
    return root / "run"


def test_checkpoint_with_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "step-00000001.pt"
    torch.save({"model": Payload(marker), "step": 1}, path)
    with pytest.raises(RunFolderError, match="refused to load"):
        read_checkpoint(path)
    assert not marker.exists()


def test_truncated_newest_checkpoint_falls_back_to_the_previous(trained, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    newest = RunFolder(run).checkpoints()[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.warns(UserWarning, match="damaged"):
        state = RunFolder(run).load_checkpoint()
    assert state["step"] == RunFolder(trained).load_checkpoint()["step"] // 2
    with pytest.raises(RunFolderError, match="damaged"):
        read_checkpoint(newest)


def test_tampered_weights_and_foreign_run_folders(trained, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    assert (run / "model-best.safetensors").is_file()  # the default load takes the best epoch's weights
    for name, which in (("model.safetensors", "last"), ("model-best.safetensors", "best")):
        weights = run / name
        data = bytearray(weights.read_bytes())
        data[:8] = (10**12).to_bytes(8, "little")  # header length beyond the file
        weights.write_bytes(bytes(data))
        with pytest.raises(RunFolderError, match=f"{name} is damaged or not a safetensors file"):
            load(run, weights=which)

    other = tmp_path / "other"
    shutil.copytree(trained, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["model"]["latent_dim"] = 7
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(RunFolderError, match="do not fit its config.yaml"):
        load(other)

    cfg["vaelab_format"] = 99
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(RunFolderError, match="newer vaelab"):
        load(other)
    with pytest.raises(RunFolderError, match="not a vaelab run folder"):
        load(tmp_path)


def test_resume_refuses_a_checkpoint_of_another_model(trained, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    gan = load_config(preset="dcgan-mnist", overrides=tiny_overrides(vae=False))
    with pytest.raises(RunFolderError, match="of model 'vae', not 'dcgan'"):
        train(gan, run, resume=True, progress=False)


def test_no_temporary_files_are_left_behind(trained):
    leftovers = [p for p in trained.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
