"""How much of a run's sample FID is its class imbalance, and (for AVAE / BEGAN*) whether the auto-encoder
discriminator's energy favours some digits.

    python benchmarks/class_balance.py RUN [RUN ...] [--weights best|last] [--pool 4000]

For each run of an unconditional model: ``pool`` prior samples are classified by the domain classifier; FID, precision and recall against the
1,000 test images (the space and sizes `vaelab evaluate --num-samples 1000` uses) of the first 1,000 samples, and of
1,000 samples drawn 100 per predicted class from the pool. The difference is what a generator with the data's class
proportions but the same digits would gain. For a run with an auto-encoder discriminator, also the mean L1 energy
(the discriminator's reconstruction error on the [-1, 1] scale) and ink (mean pixel) of the test digits per class:
BEGAN's energy is lower for digits with less ink, and a generator that lowers its energy draws those more often.
For a model with an encoder, also where the prior samples' classes come from: for 2,000 z ~ N(0, I), the class of
the training image whose posterior q(z|x) is densest at z (the prior mass the encoder gives each class), against
the class the domain classifier sees in Dec(z) for the same z; and the share of z in the aggregate posterior's
holes (density below that of 95% of the posterior samples).
"""

from __future__ import annotations

import argparse

import torch

from vaelab.data import first_images, load_data
from vaelab.metrics import features as feats
from vaelab.metrics import samples as sm
from vaelab.models.avae import AutoencoderDiscriminator, to_signed
from vaelab.models.base import GaussianLatentModel
from vaelab.run import load


def per_class_energy(model, x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
    """[(mean discriminator L1 energy, mean pixel)] per class of test images x (N, C, H, W) in [0, 1], labels y (N,)."""
    with torch.no_grad():
        signed = to_signed(x)
        energy = (signed - model.discriminator(signed)[1]).abs().flatten(1).mean(1)
    return [(float(energy[y == c].mean()), float(x[y == c].mean())) for c in range(int(y.max()) + 1)]


def posterior_owners(model, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For prior samples z (M, D): the label of the training image (x (N, C, H, W), y (N,)) whose posterior is densest
    at each z (M,), and whether each z lies in a hole of the aggregate posterior (M,) bool."""
    with torch.no_grad():
        mu, logvar = model.encode(x)
    var = logvar.exp()

    def log_q(points: torch.Tensor) -> torch.Tensor:  # (M, N): log q(point | x_n) up to a shared constant
        return torch.stack([(-0.5 * ((p - mu) ** 2 / var + logvar)).sum(1) for p in points])

    at_prior = log_q(z)
    picks = torch.randint(0, len(x), (len(z),))
    at_posterior = log_q(mu[picks] + var[picks].sqrt() * torch.randn_like(z)).logsumexp(1)
    hole = at_prior.logsumexp(1) < torch.quantile(at_posterior, 0.05)
    return y[at_prior.argmax(1)], hole


def balance_report(run: str, weights: str, pool: int, seed: int = 0) -> None:
    model = load(run, weights=weights)
    cfg = model.run_config
    data = load_data(cfg.data)
    extractor = feats.ClassifierExtractor(feats.cached_classifier(data, cfg.data))
    x_test = first_images(data.test, len(data.test))
    f_real, _ = extractor.embed(x_test)
    torch.manual_seed(seed)
    with torch.no_grad():
        fake = torch.cat([model.sample(500) for _ in range(-(-pool // 500))])[:pool]
    f_fake, logits = extractor.embed(fake)
    predicted = logits.argmax(1)
    classes = logits.shape[1]
    print(f"{run} ({weights} weights): predicted classes of {pool} samples {torch.bincount(predicted, minlength=classes).tolist()}")
    balanced = torch.cat([torch.nonzero(predicted == c).flatten()[:100] for c in range(classes)])
    for name, idx in (("first 1,000", torch.arange(min(1000, pool))), ("100 per class", balanced)):
        pr = sm.precision_recall(f_real, f_fake[idx], k=3)
        print(f"  {name:>13} ({len(idx)}): FID {sm.fid(f_real, f_fake[idx]):.1f}  precision {pr['precision']:.2f}  "
              f"recall {pr['recall']:.2f}")
    if isinstance(getattr(model, "discriminator", None), AutoencoderDiscriminator):
        rows = per_class_energy(model, x_test, data.test.labels)
        print("  class  energy  ink")
        for c, (energy, ink) in enumerate(rows):
            print(f"  {c:>5}  {energy:.3f}   {ink:.3f}")
    if isinstance(model, GaussianLatentModel):
        torch.manual_seed(seed)
        z = torch.randn(2000, model.config.latent_dim)
        owner, hole = posterior_owners(model, first_images(data.train, len(data.train)), data.train.labels, z)
        with torch.no_grad():
            decoded = extractor.embed(model.decode(z))[1].argmax(1)
        print(f"  2,000 z ~ N(0, I): densest posterior's class {torch.bincount(owner, minlength=classes).tolist()}")
        print(f"                     class of Dec(z)          {torch.bincount(decoded, minlength=classes).tolist()}")
        print(f"  the two agree for {float((owner == decoded).double().mean()):.2f} of z; {float(hole.double().mean()):.2f} "
              f"of z in the aggregate posterior's holes (agreement there {float((owner == decoded)[hole].double().mean()):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--weights", default="best", choices=["best", "last"])
    parser.add_argument("--pool", type=int, default=4000)
    args = parser.parse_args()
    for run in args.runs:
        balance_report(run, args.weights, args.pool)


if __name__ == "__main__":
    main()
