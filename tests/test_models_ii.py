"""Models II: VAE-GAN, GVAE, AVAE and BEGAN*."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from test_models_i import _params, built
from vaelab.config import load_config
from vaelab.models.avae import PIDController, l1
from vaelab.run import RunFolder
from vaelab.train import _Updater, train

PRESETS = ["vaegan-mnist", "vaegan-larsen-celeba64", "gvae-sagar-mnist", "avae-khan-mnist", "avae-khan-celeba64",
           "avae-khan-cifar10", "began-star-mnist", "began-star-celeba64"]


@pytest.mark.parametrize("preset, extra", [(p, {}) for p in PRESETS] + [
    ("gvae-sagar-celeba128", {"model.stem_channels": 8, "model.latent_dim": 16}),  # the real stem is ~134M weights
    ("avae-khan-celeba128", {"model.filters": 8}),
])
def test_output_shapes_at_each_presets_resolution(preset, extra):
    model = built(preset, **extra).eval()
    c = model.config
    x = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, c.channels, c.image_size, c.image_size)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    if model.has_encoder:
        assert model.encode(x)[0].shape == (2, c.latent_dim)
        assert model.reconstruct(x).shape == x.shape


def test_gvae_latent_sizes_of_table_5_build():
    for latent in (100, 500, 1000, 2000):
        model = built("gvae-sagar-mnist", **{"model.latent_dim": latent})
        assert model.generator.fc.in_features == latent and model.to_moments.out_features == 2 * latent


def test_pid_controller_on_a_given_error_sequence():
    pid = PIDController([0.1, 0.01, 0.001], k=0.2)
    # t=1: e=1, e1=0, e2=0: k = 0.2 + 0.1 + 0.01*(1) + 0.001*(1) = 0.311
    assert pid.update(1.0) == pytest.approx(0.311)
    # t=2: e=2, e1=1, e2=0: k = 0.311 + 0.2 + 0.01*(1) + 0.001*(2 + 0 - 2) = 0.521
    assert pid.update(2.0) == pytest.approx(0.521)
    # t=3: e=-1, e1=2, e2=1: k = 0.521 - 0.1 + 0.01*(-3) + 0.001*(-1 + 1 - 4) = 0.387
    assert pid.update(-1.0) == pytest.approx(0.387)
    assert pid.update(-100.0) == 0.0 and pid.update(1000.0) == 1.0  # clipped to [0, 1]
    state = pid.state()
    other = PIDController([0.1, 0.01, 0.001])
    other.load(state)
    assert other.update(0.5) == pid.update(0.5)


def test_l1_by_hand():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[0.0, 2.5], [3.0, 2.0]])
    assert l1(a, b).item() == pytest.approx((1 + 0.5 + 0 + 2) / 4)


def test_avae_losses_compose_as_in_the_paper():
    torch.manual_seed(0)
    model = built("avae-khan-mnist", **{"model.filters": 8, "model.latent_dim": 4})
    model.controller.k = 0.25
    x = torch.rand(3, 1, 28, 28)
    t = model.losses(x)
    a, b, g, eta = 0.3, 0.1, 0.1, 0.5
    assert t["L_dis"].item() == pytest.approx(t["L_d"].item() - 0.25 * (t["L_g"].item() + a * t["L_v"].item()), rel=1e-5)
    assert t["L_gen"].item() == pytest.approx(t["L_g"].item() + a * t["L_v"].item() + b * t["L_s"].item() + g * t["L_e"].item(), rel=1e-5)
    assert t["L_enc"].item() == pytest.approx(t["L_n"].item() + b * t["L_s"].item() + g * t["L_e"].item(), rel=1e-5)
    e = eta * t["L_d"].item() - (t["L_g"].item() + a * t["L_v"].item())
    assert t["e"].item() == pytest.approx(e, rel=1e-5)
    assert t["M"].item() == pytest.approx(t["L_d"].item() + abs(e), rel=1e-5)
    # L_d by hand: mean |x - AE(x)|; L_n: KL averaged over the latent dims
    _, ae = model.discriminator(x)
    assert t["L_d"].item() == pytest.approx((x - ae).abs().mean().item(), rel=1e-5)
    mu, logvar = model.encode(x)
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1) / 4
    assert t["L_n"].item() == pytest.approx(kl.mean().item(), rel=1e-5)


def test_vaegan_feature_loss_by_hand():
    model = built("vaegan-mnist")
    x = torch.rand(2, 1, 28, 28)
    f, logit = model.discriminator(x)
    assert f.shape[0] == 2 and logit.shape == (2,)
    f2, _ = model.discriminator(x.flip(0))
    by_hand = 0.5 * sum(((f[i] - f2[i]) ** 2).sum() for i in range(2)) / 2
    assert (0.5 * (f - f2).pow(2).sum(1).mean()).item() == pytest.approx(by_hand.item(), rel=1e-5)


class _Recorder:
    """An UpdateContext that records which optimizers a step asked for, then applies them."""

    def __init__(self, model):
        self.inner = _Updater(model.configure_optimizers(), {}, 1, None, "cpu")
        self.step = 0
        self.names = []

    def update(self, loss, optimizer, terms=None):
        self.update_many({optimizer: loss}, terms)

    def update_many(self, losses, terms=None):
        self.names.append(list(losses))
        self.inner.step = self.step
        self.inner.update_many(losses, terms)


def test_avae_updates_touch_only_their_own_groups():
    torch.manual_seed(0)
    model = built("avae-khan-mnist", **{"model.filters": 8, "model.latent_dim": 4})
    ctx = _Updater(model.configure_optimizers(), {}, 1, None, "cpu")
    x = torch.rand(4, 1, 28, 28)
    groups = {"encoder": model.encoder, "decoder": model.decoder, "discriminator": model.discriminator}
    for name, loss_key in (("discriminator", "L_dis"), ("encoder", "L_enc"), ("decoder", "L_gen")):
        before = {g: _params(m) for g, m in groups.items()}
        ctx.update(model.losses(x)[loss_key], name)
        for g, m in groups.items():
            same = all(torch.equal(a, b) for a, b in zip(before[g], _params(m)))
            assert same == (g != name), (name, g)
    rec = _Recorder(model)
    model.training_step({"x": x, "y": None}, rec)
    assert rec.names == [["encoder", "decoder", "discriminator"]]  # Algorithm 1's order


def test_vaegan_and_gvae_updates_touch_only_their_own_groups():
    torch.manual_seed(0)
    model = built("gvae-sagar-mnist")
    rec = _Recorder(model)
    x = torch.rand(4, 1, 28, 28)
    vae_before, critic_before = _params(model.generator), _params(model.critic)
    model.training_step({"x": x, "y": None}, rec)  # step 0: a critic step only
    assert rec.names == [["critic"]]
    assert all(torch.equal(a, b) for a, b in zip(vae_before, _params(model.generator)))
    assert not all(torch.equal(a, b) for a, b in zip(critic_before, _params(model.critic)))
    rec.step = 4  # the 5th step also updates encoder + generator
    model.training_step({"x": x, "y": None}, rec)
    assert rec.names[-2:] == [["critic"], ["vae"]]

    model = built("vaegan-mnist", **{"model.balance_margin": "null"})
    rec = _Recorder(model)
    enc_before, dec_before, dis_before = _params(model.encoder), _params(model.decoder), _params(model.discriminator)
    model.training_step({"x": x, "y": None}, rec)
    assert rec.names == [["encoder", "decoder", "discriminator"]]
    for before, module in ((enc_before, model.encoder), (dec_before, model.decoder), (dis_before, model.discriminator)):
        assert not all(torch.equal(a, b) for a, b in zip(before, _params(module)))


def _small(preset, **extra):
    sets = {"train.batch_size": 32, "train.log_every": 1, "train.num_sample_images": 16, "train.tensorboard": "false",
            "train.eval_images": 64, "train.epochs": 1, **extra}
    return load_config(preset=preset, overrides=[f"{k}={v}" for k, v in sets.items()])


def test_avae_resume_restores_the_controller(tmp_path):
    tiny = {"model.filters": 8, "model.latent_dim": 4, "model.k0": 0.5}  # from 0, early steps keep k clipped at 0
    train(_small("avae-khan-mnist", **tiny, **{"train.max_steps": 10}), tmp_path / "straight", progress=False)
    train(_small("avae-khan-mnist", **tiny, **{"train.max_steps": 5}), tmp_path / "split", progress=False)
    controller = RunFolder(tmp_path / "split").load_checkpoint()["extra"]["controller"]
    assert controller["k"] != 0.5 and controller["e1"] != 0 and controller["e2"] != 0
    train(_small("avae-khan-mnist", **tiny, **{"train.max_steps": 10}), tmp_path / "split", resume=True, progress=False)
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "split" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ks = [RunFolder(p).load_checkpoint()["extra"]["controller"]["k"] for p in (tmp_path / "straight", tmp_path / "split")]
    assert ks[0] == ks[1]


@pytest.mark.parametrize("preset", ["vaegan-mnist", "gvae-sagar-mnist", "avae-khan-mnist", "began-star-mnist"])
def test_short_mnist5k_run_has_finite_losses(preset, tmp_path):
    summary = train(_small(preset, **{"train.max_steps": 6}), tmp_path / "r", progress=False)
    rows = [json.loads(r) for r in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if r["event"] == "step"]) == 6
    for row in rows:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
    if preset.startswith(("avae", "began")):
        assert all("k" in r and "M" in r for r in rows if r["event"] == "step")
    assert (tmp_path / "r" / "samples" / "step-00000006-samples.png").is_file()
