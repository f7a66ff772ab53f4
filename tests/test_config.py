import pytest
import yaml

from vaelab.config import apply_overrides, build_config, load_config, preset_names, read_preset
from vaelab.errors import ConfigError


def test_every_preset_builds():
    names = preset_names()
    assert {"vae-mnist", "vae-wss18-mnist"} <= set(names)
    for name in names:
        cfg = load_config(preset=name)
        assert cfg.name == name
        assert cfg.description, f"preset {name} has no description"


def test_default_is_vae_mnist():
    cfg = load_config()
    assert cfg.name == "vae-mnist" and cfg.data.name == "mnist5k" and cfg.model.latent_dim == 16
    assert cfg.model.likelihood == "bernoulli"


def test_override_types_are_parsed_and_checked():
    cfg = load_config(overrides=["model.latent_dim=32", "model.lr=1e-4", "train.precision=bf16", "model.widths=[4, 8]"])
    assert cfg.model.latent_dim == 32 and cfg.model.lr == pytest.approx(1e-4)
    assert cfg.train.precision == "bf16" and cfg.model.widths == [4, 8]


def test_unknown_key_lists_valid_keys_and_types():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["model.latnet_dim=3"])
    message = str(err.value)
    assert "latnet_dim" in message and "latent_dim: int" in message and "likelihood: 'bernoulli' | 'gaussian'" in message


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epochs=three", "train.epochs: expected int"),
        ("train.batch_size=0", "train.batch_size must be at least 1"),
        ("train.precision=fp8", "not one of 'auto' | 'fp32' | 'bf16' | 'fp16'"),
        ("model.likelihood=poisson", "model.likelihood"),
        ("model.latent_dim=-1", "latent_dim must be at least 1"),
        ("data.channels=2", "data.channels must be 1"),
        ("model.widths=3", "expected a list of int"),
        ("train.epochs=true", "expected int"),
        ("latent_dim=4", "must be data.KEY, model.KEY, train.KEY"),
        ("model.latent_dim", "expected section.key=value"),
    ],
)
def test_bad_values_give_clear_errors(override, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(overrides=[override])
    assert fragment in str(err.value)


def test_unknown_preset_and_model_name():
    with pytest.raises(ConfigError, match="no preset named 'nope'.*vae-mnist"):
        load_config(preset="nope")
    with pytest.raises(ConfigError, match="unknown model.name 'flow'"):
        build_config({"model": {"name": "flow"}})


def test_config_file_round_trip(tmp_path):
    cfg = load_config(preset="vae-wss18-mnist", overrides=["train.epochs=2"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(config_file=str(path))
    assert again.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="give either --preset or --config"):
        load_config(preset="vae-mnist", config_file=str(path))


def test_overrides_do_not_mutate_preset():
    raw = read_preset("vae-mnist")
    apply_overrides(raw, ["model.latent_dim=99"])
    assert raw["model"]["latent_dim"] == 16


def test_a_run_folder_written_before_a_key_was_renamed_still_loads(tmp_path):
    cfg = load_config(preset="vae-mnist")
    raw = cfg.to_dict()
    raw["train"].pop("cpu_bf16_convs")
    raw["train"]["patch_gemm_weight_grads"] = False  # session 3's name of the switch
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_config(config_file=str(path)).train.cpu_bf16_convs is False


def test_a_run_folder_written_before_a_dead_key_was_removed_still_loads(tmp_path):
    """model.augment_probability was removed (nothing set it but its default 1.0): an older config.yaml holding 1.0
    loads, another value is an unknown key (it would have changed what the run did)."""
    raw = load_config(preset="vaegan-mnist").to_dict()
    assert "augment_probability" not in raw["model"]
    raw["model"]["augment_probability"] = 1.0
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_config(config_file=str(path)).model.name == "vaegan"
    raw["model"]["augment_probability"] = 0.5
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="unknown key.*augment_probability"):
        load_config(config_file=str(path))
