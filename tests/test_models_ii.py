"""Models II: VAE-GAN, GVAE, AVAE and BEGAN*."""

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import built_model, parameters_of
from vaelab.config import load_config, read_preset
from vaelab.errors import ConfigError
from vaelab.models.avae import PIDController, l1, pull_away
from vaelab.run import RunFolder
from vaelab.training import UpdateContext, train

PRESETS = ["vaegan-mnist", "vaegan-larsen-celeba64", "gvae-sagar-mnist", "avae-khan-mnist", "avae-khan-celeba64",
           "avae-khan-cifar10", "began-star-mnist", "began-star-celeba64"]


@pytest.mark.parametrize("preset, extra", [(p, {}) for p in PRESETS] + [
    ("gvae-sagar-celeba128", {"model.stem_channels": 8, "model.latent_dim": 16}),  # the real stem is ~134M weights
    ("avae-khan-celeba128", {"model.filters": 8}),
])
def test_output_shapes_at_each_presets_resolution(preset, extra):
    model = built_model(preset, **extra).eval()
    c = model.config
    # the size the preset's YAML asks for (CelebA 128 px, STL-10 96 px, ...), read apart from the model's config
    wanted = load_config(preset=preset).data.image_size or {"cifar10": 32, "celeba": 64, "mnist5k": 28}[
        load_config(preset=preset).data.name]
    assert c.image_size == wanted
    x = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, c.channels, wanted, wanted)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    if model.has_encoder:
        assert model.encode(x)[0].shape == (2, c.latent_dim)
        assert model.reconstruct(x).shape == x.shape


def test_gvae_latent_sizes_of_table_5_build():
    for latent in (100, 500, 1000, 2000):
        model = built_model("gvae-sagar-mnist", **{"model.latent_dim": latent})
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


def test_pull_away_term_by_hand():
    same = torch.tensor([[1.0, 2.0], [2.0, 4.0], [-3.0, -6.0]])  # one direction: every cosine is +-1
    assert pull_away(same).item() == pytest.approx(1.0)
    orthogonal = torch.eye(3)
    assert pull_away(orthogonal).item() == pytest.approx(0.0)
    mixed = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cos 45 degrees: squared 0.5
    assert pull_away(mixed).item() == pytest.approx(0.5)


def test_l1_by_hand():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[0.0, 2.5], [3.0, 2.0]])
    assert l1(a, b).item() == pytest.approx((1 + 0.5 + 0 + 2) / 4)


def test_avae_losses_compose_as_in_the_paper():
    torch.manual_seed(0)
    model = built_model("avae-khan-mnist", **{"model.filters": 8, "model.latent_dim": 4, "model.adv_weight": 0.7,
                                              "model.latent_regression_weight": 0.3,
                                              "model.fake_margin": "null"})
    model.controller.k = 0.25
    x = torch.rand(3, 1, 28, 28)
    t = model.losses(x)
    c = model.config
    a, b, g, eta, w = c.alpha, c.beta, c.gamma, c.eta, c.kl_weight
    assert t["L_dis"].item() == pytest.approx(t["L_d"].item() - 0.25 * (t["L_g"].item() + a * t["L_v"].item()), rel=1e-5)
    adv = 0.7 * (t["L_g"].item() + a * t["L_v"].item())
    pt = c.pull_away_weight * t["L_pt"].item()
    gen = adv + b * t["L_s"].item() + g * t["L_e"].item() + pt + 0.3 * t["L_z"].item()
    assert t["L_gen"].item() == pytest.approx(gen, rel=1e-5)
    assert t["L_enc"].item() == pytest.approx(w * t["L_n"].item() + b * t["L_s"].item() + g * t["L_e"].item(), rel=1e-5)
    e = eta * t["L_d"].item() - (t["L_g"].item() + a * t["L_v"].item())
    assert t["e"].item() == pytest.approx(e, rel=1e-5)
    assert t["M"].item() == pytest.approx(t["L_d"].item() + abs(e), rel=1e-5)
    # L_n: KL averaged over the latent dims
    mu, logvar = model.encode(x)
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1) / 4
    assert t["L_n"].item() == pytest.approx(kl.mean().item(), rel=1e-5)
    with pytest.raises(ConfigError, match="adv_weight"):
        built_model("avae-khan-mnist", **{"model.adv_weight": -0.5})


def test_avae_eqs_13_to_15_at_the_papers_defaults_against_an_independent_computation():
    """AVAEConfig's defaults are the paper's (alpha 0.3, beta 0.1, gamma 0.1, eta 0.5, every extra knob off), and at
    them L_dis, L_gen and L_enc equal eqs. (13)-(15) computed here from the networks' own outputs, with the same
    noise: (13) L_d - k (L_g + 0.3 L_v), (14) L_g + 0.3 L_v + 0.1 L_s + 0.1 L_e, (15) L_n + 0.1 L_s + 0.1 L_e."""
    from vaelab.models.avae import AVAE, AVAEConfig

    c = AVAEConfig(image_size=16, channels=1, filters=8, latent_dim=4)
    paper = {"arch": "began", "alpha": 0.3, "beta": 0.1, "gamma": 0.1, "eta": 0.5, "kl_weight": 1.0,
             "adv_weight": 1.0, "pull_away_weight": 0.0, "fake_margin": None, "latent_regression_weight": 0.0,
             "kl_reduction": "mean", "discriminator_lr": None}
    assert {key: getattr(c, key) for key in paper} == paper
    torch.manual_seed(0)
    model = AVAE(c)
    model.controller.k = 0.37
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    t = model.losses(x)
    with torch.no_grad():
        torch.manual_seed(2)  # the same two draws in the model's order: z_v's noise, then z_g
        xs = 2 * x - 1
        h = model.encoder(xs)
        mu, logvar = h[:, :4], h[:, 4:].clamp(c.logvar_min, c.logvar_max)
        z_v = mu + torch.exp(0.5 * logvar) * torch.randn(5, 4)
        z_g = torch.randn(5, 4)
        x_v, x_g = model.decoder(z_v), model.decoder(z_g)
        (z_d, ae_x), (z_vd, ae_v), (_, ae_g) = (model.discriminator(v) for v in (xs, x_v, x_g))
        L_e, L_d = (xs - x_v).abs().mean(), (xs - ae_x).abs().mean()
        L_g, L_v, L_s = (x_g - ae_g).abs().mean(), (x_v - ae_v).abs().mean(), (z_d - z_vd).abs().mean()
        L_n = (0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1) / 4).mean()
    expected = {"L_dis": L_d - 0.37 * (L_g + 0.3 * L_v),
                "L_gen": L_g + 0.3 * L_v + 0.1 * L_s + 0.1 * L_e,
                "L_enc": L_n + 0.1 * L_s + 0.1 * L_e,
                "e": 0.5 * L_d - (L_g + 0.3 * L_v)}
    for key, value in expected.items():
        assert t[key].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-6), key


def test_latent_regression_is_the_encoders_nll_of_each_prior_sample_given_its_decoding():
    """L_z = -log q(z_g | Dec(z_g)) / |z| with the encoder's running BatchNorm statistics, weighted into the decoder's
    L_gen alone; the pass over the samples leaves the encoder's running statistics as the real batch left them."""
    sizes = {"model.filters": 8, "model.latent_dim": 4}
    model = built_model("avae-khan-mnist", **sizes, **{"model.latent_regression_weight": 0.5})
    plain = built_model("avae-khan-mnist", **sizes, **{"model.latent_regression_weight": 0.0})
    plain.load_state_dict(model.state_dict())
    start = copy.deepcopy(model.state_dict())
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    t = model.losses(x)
    torch.manual_seed(1)
    u = plain.losses(x)
    for a, b in zip(model.encoder.modules(), plain.encoder.modules()):
        if isinstance(a, torch.nn.BatchNorm2d):  # only the real batch moved them, in both
            assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
    for key in ("L_e", "L_g", "L_v", "L_enc", "L_dis"):
        assert t[key].item() == pytest.approx(u[key].item(), rel=1e-6), key
    # by hand from the same start and draws: x_g decoded in the training batch, encoded with running statistics
    model.load_state_dict(start)
    torch.manual_seed(1)
    mu, logvar = model.encoder(2 * x - 1).chunk(2, dim=1)
    z_v = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    z_g = torch.randn_like(mu)
    x_g = model.decoder(torch.cat([z_v, z_g]))[6:]
    model.encoder.eval()
    mu_g, logvar_g = model.encoder(x_g).chunk(2, dim=1)
    nll = 0.5 * ((z_g - mu_g) ** 2 / logvar_g.exp() + logvar_g + math.log(2 * math.pi)).sum(1).mean() / 4
    assert t["L_z"].item() == pytest.approx(nll.item(), rel=1e-4)
    assert t["L_gen"].item() == pytest.approx(u["L_gen"].item() + 0.5 * t["L_z"].item(), rel=1e-5)
    assert "L_z" not in u
    with pytest.raises(ConfigError, match="latent_regression_weight"):
        built_model("avae-khan-mnist", **{"model.latent_regression_weight": -1.0})


@pytest.mark.parametrize("preset", ["avae-khan-mnist", "began-star-mnist"])
def test_fake_margin_caps_the_discriminators_fake_term(preset):
    """EBGAN's hinge: below the margin L_dis is the paper's; past it the fakes give the discriminator no gradient."""
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    extra = {"model.filters": 8, "model.latent_dim": 4}
    # eval: BatchNorm's running stats, the same outputs every call; the paper's unbounded term (the preset has a margin)
    paper = built_model(preset, **extra, **{"model.fake_margin": "null"}).eval()
    torch.manual_seed(1)
    paper.controller.k = 0.5
    t_paper = paper.losses(x)
    assert t_paper["L_dis"].item() < t_paper["L_d"].item()  # the fakes lower L_dis
    for margin in (100.0, 1e-6):
        model = built_model(preset, **extra, **{"model.fake_margin": margin}).eval()
        model.load_state_dict(paper.state_dict())
        model.controller.k = 0.5
        torch.manual_seed(1)  # the same z
        t = model.losses(x)
        assert t["L_d"].item() == pytest.approx(t_paper["L_d"].item(), rel=1e-6)
        if margin == 100.0:  # below the margin: the paper's L_dis
            assert t["L_dis"].item() == pytest.approx(t_paper["L_dis"].item(), rel=1e-6)
            continue
        # 0.5 min(L_fake, 1e-6): L_dis is L_d up to a constant, and its gradient is L_d's alone
        assert t["L_dis"].item() == pytest.approx(t["L_d"].item() - 0.5e-6, rel=1e-5)
        params = list(model.discriminator.parameters())
        grads = torch.autograd.grad(t["L_dis"], params, retain_graph=True)
        by_real = torch.autograd.grad(t["L_d"], params)
        assert all(torch.allclose(a, b) for a, b in zip(grads, by_real))


def test_vaegan_feature_loss_is_eq_8_on_the_chosen_discriminator_layer():
    torch.manual_seed(0)
    model = built_model("vaegan-mnist", **{"model.feature_layer": 1, "model.augment": ""})  # Dis_l of x itself
    x = torch.rand(3, 1, 28, 28)
    torch.manual_seed(1)
    t = model.losses(x)
    torch.manual_seed(1)  # the same reparameterisation noise, drawn first
    mu, logvar = model.encode(x)
    x_tilde = torch.sigmoid(model.decoder(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)))
    layers = list(model.discriminator.lower.children())
    assert sum(isinstance(m, torch.nn.LeakyReLU) for m in layers) == 2  # conv stages 0 and 1: layer l = 1
    feats = lambda img: model.discriminator.lower(img).flatten(1)
    by_hand = sum(0.5 * ((feats(x)[i] - feats(x_tilde)[i]) ** 2).sum() for i in range(3)) / 3
    assert t["llike"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1).mean()
    assert t["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert t["encoder_loss"].item() == pytest.approx((kl + by_hand).item(), rel=1e-5)
    g = model.config.gamma
    assert t["decoder_loss"].item() == pytest.approx(g * by_hand.item() + t["g_gan"].item(), rel=1e-5)


def test_avae_terms_come_from_the_right_tensors():
    """L_e, L_g, L_v, L_s and L_d of eqs. (2), (7), (9) recomputed from the networks by hand."""
    torch.manual_seed(0)
    model = built_model("avae-khan-mnist", **{"model.filters": 8, "model.latent_dim": 4}).eval()  # BatchNorm: running stats
    x = torch.rand(3, 1, 28, 28)
    torch.manual_seed(1)
    t = model.losses(x)
    torch.manual_seed(1)
    xs = 2 * x - 1  # the [-1, 1] range the networks work in
    mu, logvar = model.encoder(xs).chunk(2, dim=1)
    x_v = model.decoder(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu))  # z_v ~ q(z|x)
    x_g = model.decoder(torch.randn_like(mu))  # z_g ~ N(0, I)
    D = model.discriminator
    mean_abs = lambda a, b: (a - b).abs().mean().item()
    assert t["L_e"].item() == pytest.approx(mean_abs(xs, x_v), rel=1e-5)
    assert t["L_d"].item() == pytest.approx(mean_abs(xs, D.decoder(D.encoder(xs))), rel=1e-5)
    assert t["L_g"].item() == pytest.approx(mean_abs(x_g, D.decoder(D.encoder(x_g))), rel=1e-5)
    assert t["L_v"].item() == pytest.approx(mean_abs(x_v, D.decoder(D.encoder(x_v))), rel=1e-5)
    assert t["L_s"].item() == pytest.approx(mean_abs(D.encoder(xs), D.encoder(x_v)), rel=1e-5)
    codes = D.encoder(x_g)
    cos = torch.nn.functional.cosine_similarity(codes[:, None], codes[None], dim=2)
    pt = sum(cos[i, j] ** 2 for i in range(3) for j in range(3) if i != j) / 6
    assert t["L_pt"].item() == pytest.approx(pt.item(), rel=1e-4)
    # swapping the fakes (L_g on x_v) or the code of the wrong image would differ
    assert abs(t["L_g"].item() - t["L_v"].item()) > 1e-6


def test_gvae_critic_loss_uses_both_fakes_and_the_penalty_on_interpolates():
    torch.manual_seed(0)
    model = built_model("gvae-sagar-mnist")
    x, x_tilde, x_p = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    torch.manual_seed(3)
    t = model.critic_loss(x, x_tilde, x_p)
    D = model.critic
    torch.manual_seed(3)
    eps = torch.rand(4, 1, 1, 1)
    x_hat = (eps * x + (1 - eps) * x_p).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat).sum(), x_hat)
    penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    assert 0.01 < penalty.item()  # a non-linear critic: the penalty is not trivially 0 or constant
    wasserstein = D(x).mean() - 0.5 * (D(x_tilde).mean() + D(x_p).mean())
    assert t["gradient_penalty"].item() == pytest.approx(penalty.item(), rel=1e-4)
    assert t["wasserstein"].item() == pytest.approx(wasserstein.item(), rel=1e-5)
    assert t["critic_loss"].item() == pytest.approx(-wasserstein.item() + 10 * penalty.item(), rel=1e-4)


def test_gvae_vae_step_leaves_the_critic_unchanged():
    torch.manual_seed(0)
    model = built_model("gvae-sagar-mnist")
    rec = _Recorder(model, snapshot=model.critic)
    rec.step = model.config.n_critic - 1  # the step that also updates encoder + generator
    model.training_step({"x": torch.rand(4, 1, 28, 28), "y": None}, rec)
    assert rec.names == [["critic"], ["vae"]]
    before, after_critic, after_vae = rec.snapshots
    assert not all(torch.equal(a, b) for a, b in zip(before, after_critic))
    assert all(torch.equal(a, b) for a, b in zip(after_critic, after_vae))


class _Recorder:
    """An UpdateContext that records which optimizers a step asked for, then applies them."""

    def __init__(self, model, snapshot=None):
        self.inner = UpdateContext(model.configure_optimizers(), {}, 1, None, "cpu")
        self.step = 0
        self.names = []
        self.watched = snapshot  # a module whose parameters are copied before the first and after each update
        self.snapshots = [] if snapshot is None else [parameters_of(snapshot)]

    def update(self, loss, optimizer, terms=None):
        self.update_many({optimizer: loss}, terms)

    def update_many(self, losses, terms=None):
        self.names.append(list(losses))
        self.inner.step = self.step
        self.inner.update_many(losses, terms)
        if self.watched is not None:
            self.snapshots.append(parameters_of(self.watched))

    def mean_over_processes(self, values):
        return self.inner.mean_over_processes(values)


def test_avae_updates_touch_only_their_own_groups():
    torch.manual_seed(0)
    model = built_model("avae-khan-mnist", **{"model.filters": 8, "model.latent_dim": 4})
    ctx = UpdateContext(model.configure_optimizers(), {}, 1, None, "cpu")
    x = torch.rand(4, 1, 28, 28)
    groups = {"encoder": model.encoder, "decoder": model.decoder, "discriminator": model.discriminator}
    for name, loss_key in (("discriminator", "L_dis"), ("encoder", "L_enc"), ("decoder", "L_gen")):
        before = {g: parameters_of(m) for g, m in groups.items()}
        ctx.update(model.losses(x)[loss_key], name)
        for g, m in groups.items():
            same = all(torch.equal(a, b) for a, b in zip(before[g], parameters_of(m)))
            assert same == (g != name), (name, g)
    rec = _Recorder(model)
    model.training_step({"x": x, "y": None}, rec)
    assert rec.names == [["encoder", "decoder", "discriminator"]]  # Algorithm 1's order


@pytest.mark.parametrize("preset", ["avae-khan-mnist", "began-star-mnist"])
def test_discriminator_lr_sets_the_discriminators_rate_alone(preset):
    rates = lambda model: {name: opt.param_groups[0]["lr"] for name, opt in model.configure_optimizers().items()}
    same = rates(built_model(preset, **{"model.lr": 1e-3, "model.discriminator_lr": "null"}))
    assert same == {name: pytest.approx(1e-3) for name in same}  # None: the paper's one rate for every network
    two = rates(built_model(preset, **{"model.lr": 1e-3, "model.discriminator_lr": 2e-4}))
    assert two == {name: pytest.approx(2e-4 if name == "discriminator" else 1e-3) for name in two}
    assert set(two) == set(same) and "discriminator" in two
    with pytest.raises(ConfigError, match="discriminator_lr"):
        built_model(preset, **{"model.discriminator_lr": -1e-4})


def test_vaegan_and_gvae_updates_touch_only_their_own_groups():
    torch.manual_seed(0)
    model = built_model("gvae-sagar-mnist", **{"model.n_critic": 5})  # the paper's schedule
    rec = _Recorder(model)
    x = torch.rand(4, 1, 28, 28)
    vae_before, critic_before = parameters_of(model.generator), parameters_of(model.critic)
    model.training_step({"x": x, "y": None}, rec)  # step 0: a critic step only
    assert rec.names == [["critic"]]
    assert all(torch.equal(a, b) for a, b in zip(vae_before, parameters_of(model.generator)))
    assert not all(torch.equal(a, b) for a, b in zip(critic_before, parameters_of(model.critic)))
    rec.step = 4  # the 5th step also updates encoder + generator
    model.training_step({"x": x, "y": None}, rec)
    assert rec.names[-2:] == [["critic"], ["vae"]]

    model = built_model("vaegan-mnist", **{"model.balance_margin": "null"})
    rec = _Recorder(model)
    enc_before, dec_before, dis_before = parameters_of(model.encoder), parameters_of(model.decoder), parameters_of(model.discriminator)
    model.training_step({"x": x, "y": None}, rec)
    assert rec.names == [["encoder", "decoder", "discriminator"]]
    for before, module in ((enc_before, model.encoder), (dec_before, model.decoder), (dis_before, model.discriminator)):
        assert not all(torch.equal(a, b) for a, b in zip(before, parameters_of(module)))


def _small(preset, **extra):
    sets = {"train.batch_size": 32, "train.log_every": 1, "train.num_sample_images": 16, "train.trackers": "[]",
            "train.eval_images": 64, "train.epochs": 1, **extra}
    return load_config(preset=preset, overrides=[f"{k}={v}" for k, v in sets.items()])


def test_avae_resume_restores_the_controller(tmp_path):
    # the paper's controller (the mnist5k preset holds k constant), from k0 0.5: from 0 early steps keep k clipped at 0
    tiny = {"model.filters": 8, "model.latent_dim": 4, "model.k0": 0.5, "model.lambdas": "[1.0e-3,1.0e-5,1.0e-5]"}
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
    assert summary["stopped_by"] == "max_steps" and summary["steps"] == 6
    rows = [json.loads(r) for r in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if r["event"] == "step"]) == 6
    for row in rows:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
    if preset.startswith(("avae", "began")):
        assert all("k" in r and "M" in r for r in rows if r["event"] == "step")
    assert (tmp_path / "r" / "samples" / "step-00000006-samples.png").is_file()


PAPER_SETTINGS = {  # the published settings the paper presets must keep (model.*, train.batch_size)
    "vaegan-larsen-celeba64": {"latent_dim": 128, "gamma": 1e-6, "optimizer": "rmsprop", "lr": 3e-4,
                               "widths": [64, 128, 256], "discriminator_widths": [32, 128, 256, 256], "batch_size": 64,
                               "lr_schedule": "gamma", "lr_final_factor": 5e-4, "lr_gamma": 0.75},
    "gvae-sagar-celeba128": {"latent_dim": 512, "gp_weight": 10.0, "n_critic": 5, "lr": 1e-4, "betas": [0.5, 0.9],
                             "dropout": 0.3, "stem_channels": 256, "generator_widths": [256, 128, 64], "adv_weight": 1.0},
    **{name: {"arch": "began", "alpha": 0.3, "beta": 0.1, "gamma": 0.1, "eta": 0.5, "lambdas": [1e-3, 1e-5, 1e-5],
              "kl_weight": 1.0, "adv_weight": 1.0, "kl_reduction": "mean", "lr": 5e-5,
              "discriminator_lr": None, "filters": 64, "latent_dim": 64, "batch_size": 16}
       for name in ("avae-khan-celeba64", "avae-khan-celeba128", "avae-khan-cifar10")},
    "began-star-celeba64": {"arch": "began", "eta": 0.5, "lambdas": [1e-3, 1e-5, 1e-5], "lr": 5e-5,
                            "discriminator_lr": None, "filters": 64, "latent_dim": 64, "batch_size": 16},
}


# the networks at a test's size; none of these keys is a paper setting checked above
SMALL_NETWORKS = {"gvae-sagar-celeba128": {"model.stem_channels": 8, "model.latent_dim": 16},
                  **{name: {"model.filters": 8} for name in ("avae-khan-celeba64", "avae-khan-celeba128",
                                                              "avae-khan-cifar10", "began-star-celeba64")}}


@pytest.mark.parametrize("preset", sorted(PAPER_SETTINGS))
def test_paper_presets_write_the_papers_settings_and_the_model_uses_them(preset):
    """Each published value is written in the preset's YAML itself (a key left out would take the dataclass
    default, which a later change of that default would silently move), the built config carries it, and the
    optimizers the model builds run at the paper's rates and betas."""
    raw = read_preset(preset)
    cfg = load_config(preset=preset)
    settings = PAPER_SETTINGS[preset]
    for key, value in settings.items():
        section = "train" if key == "batch_size" or key.startswith("lr_") else "model"
        expected = value if isinstance(value, (str, type(None))) else pytest.approx(value)
        assert key in (raw.get(section) or {}), f"{preset}: {section}.{key} is not written in its YAML"
        assert raw[section][key] == expected and getattr(getattr(cfg, section), key) == expected, (preset, key)
    model = built_model(preset, **SMALL_NETWORKS.get(preset, {}))
    for name, optimizer in model.configure_optimizers().items():
        group = optimizer.param_groups[0]
        own = settings.get("discriminator_lr") if name in ("discriminator", "critic") else None
        assert group["lr"] == pytest.approx(own or settings["lr"]), (preset, name)
        if "betas" in settings:
            assert list(group["betas"]) == pytest.approx(settings["betas"]), (preset, name)
        if settings.get("optimizer") == "rmsprop":
            assert isinstance(optimizer, torch.optim.RMSprop), (preset, name)


def test_gvae_critic_only_steps_build_no_graph_for_the_vae():
    """On the n_critic - 1 steps that update the critic alone, the encoder and generator run without autograd
    (their graph would be thrown away); the VAE step runs them with it."""
    model = built_model("gvae-sagar-mnist", **{"model.n_critic": 3})
    calls = []
    model.generator.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    rec = _Recorder(model)
    x = torch.rand(4, 1, 28, 28)
    for step in range(3):
        rec.step = step
        calls.clear()
        model.training_step({"x": x, "y": None}, rec)
        assert calls and all(c == (step == 2) for c in calls), (step, calls)
    assert rec.names == [["critic"], ["critic"], ["critic"], ["vae"]]
