"""A latent sampler is bound to the weights whose codes it was fitted on (issue 41, item 2): loading it with other
weights is refused with the command that fits one for them; the last weights get a sampler of their own; a setting
edited in the sampler's JSON is refused like a changed tensor file."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_overrides
from vaelab import load
from vaelab.config import load_config
from vaelab.errors import RunFolderError
from vaelab.evaluate import _sampler_record
from vaelab.samplers import fit_sampler
from vaelab.samplers.base import file_sha256
from vaelab.training import train


def _other_weights(path):
    """Overwrite a weights file with different weights of the same shapes (as a longer run would leave)."""
    state = load_file(path)
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, path)


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("binding") / "vae"
    train(load_config(overrides=tiny_overrides(**{"train.epochs": 1, "train.confirm_best": "false"})), run,
          progress=False)
    fit_sampler(run, components=[10], spreads=[1.0], progress=False)
    return run


def test_a_sampler_is_refused_with_other_weights_and_the_last_weights_get_their_own(fitted_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fitted_run, run)
    kept = load(run, sampler="gmm")  # the run's own default is the prior (a fit is tested here, not by training)
    assert kept.sampler_kind == "gmm"
    record = _sampler_record(kept)
    assert record["weights_sha256"] == file_sha256(run / kept.weights_file)
    _other_weights(run / "model.safetensors")  # the last weights now differ from the ones the sampler was fitted on
    if kept.weights_file == "model.safetensors":  # no best weights kept: the default load reads them too
        with pytest.raises(RunFolderError, match="fitted on the codes of other weights"):
            load(run, sampler="gmm")
    with pytest.raises(RunFolderError, match="fitted on the codes of other weights.*--weights last"):
        load(run, weights="last", sampler="gmm")
    fit_sampler(run, weights="last", components=[10], spreads=[1.0], progress=False)
    assert (run / "sampler-gmm-last.json").is_file()
    last = load(run, weights="last", sampler="gmm")
    assert last.sampler_kind == "gmm" and last.sample(5).shape[0] == 5
    own = json.loads((run / "sampler-gmm-last.json").read_text())
    assert own["weights_sha256"] == file_sha256(run / "model.safetensors")


def test_a_setting_edited_in_the_json_or_replaced_kept_weights_are_refused(fitted_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fitted_run, run)
    meta_path = run / "sampler-gmm.json"
    meta = json.loads(meta_path.read_text())
    edited = {**meta, "settings": {**meta["settings"], "spread": 3.0}}  # wider draws, same tensors
    meta_path.write_text(json.dumps(edited))
    with pytest.raises(RunFolderError, match="was changed after it was fitted"):
        load(run, sampler="gmm")
    meta_path.write_text(json.dumps(meta))
    assert load(run, sampler="gmm").sample(3, generator=torch.Generator().manual_seed(0)).shape[0] == 3
    kept = load(run).weights_file
    _other_weights(run / kept)  # a resumed run that replaced its kept weights and failed to refit
    with pytest.raises(RunFolderError, match="fitted on the codes of other weights.*vaelab fit-sampler"):
        load(run, sampler="gmm")
    assert load(run, sampler="prior").sampler_kind == "prior"  # the way out the message names
