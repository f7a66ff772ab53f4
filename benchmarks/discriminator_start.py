"""How long a BEGAN-style discriminator (AVAE's and BEGAN*'s auto-encoder) needs to leave the all-black plateau on its
own: the auto-encoder of a preset trained with L1 on the real training images alone (no generator), at several Adam
rates, printing its L1 on the [-1, 1] scale. Always predicting black costs ~0.27 on mnist5k (2 x the mean pixel),
so a curve still near 0.27 has not started to learn digits.

    python benchmarks/discriminator_start.py [--preset avae-khan-mnist] [--rates 5e-4 1e-3 2e-3] [--steps 600]

While the discriminator sits on that plateau it reconstructs a black image as well as any digit, so the generator's
cheapest move is a black image (AVAE: every prior sample black and alike until it leaves; benchmarks/RESULTS.md,
"AVAE", session 14).
"""

from __future__ import annotations

import argparse
import time

import torch

from vaelab.config import fill_data_shape, load_config
from vaelab.data import first_images, load_data
from vaelab.models import build_model
from vaelab.models.avae import l1, to_signed


def plateau_curve(preset: str, rate: float, steps: int, every: int, seed: int = 0) -> list[tuple[int, float]]:
    """[(step, L1 of that step's batch)] every ``every`` steps of the preset's discriminator trained alone."""
    cfg = load_config(preset=preset)
    data = load_data(cfg.data)
    fill_data_shape(cfg, data)
    torch.manual_seed(seed)
    discriminator = build_model(cfg.model).discriminator
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=rate, betas=tuple(cfg.model.betas))
    images = to_signed(first_images(data.train, len(data.train)))
    batches = torch.Generator().manual_seed(seed)
    curve = []
    for step in range(steps):
        x = images[torch.randint(0, len(images), (cfg.train.batch_size,), generator=batches)]
        loss = l1(x, discriminator(x)[1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps - 1:
            curve.append((step, loss.item()))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="avae-khan-mnist")
    parser.add_argument("--rates", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=50)
    args = parser.parse_args()
    for rate in args.rates:
        start = time.perf_counter()
        curve = plateau_curve(args.preset, rate, args.steps, args.every)
        cells = " ".join(f"{step}:{loss:.3f}" for step, loss in curve)
        print(f"lr {rate:g} ({time.perf_counter() - start:.0f} s): {cells}", flush=True)


if __name__ == "__main__":
    main()
