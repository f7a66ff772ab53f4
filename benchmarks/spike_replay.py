"""Which network makes a loss spike: replay a stretch of a run from one of its checkpoints, once as it was and once
with each named optimizer frozen (its learning rate set to 0), and print the energies step by step side by side.

    python benchmarks/spike_replay.py RUN --from-step S [--steps 30] [--freeze discriminator decoder ...]
                                     [--try model.fake_margin=0.15 ...] [--scale-lr discriminator=0.5 ...]
                                     [--show L_g L_d]

RUN must hold checkpoints/step-S.pt (train with `--set train.checkpoint_every_steps=10 --set
train.keep_checkpoints=1000` to have one every 10 steps; `python benchmarks/spikes.py RUN` lists the spikes). Each
replay resumes a copy of that checkpoint with the run's own config, so the unfrozen replay repeats the run exactly
(resume is bit-identical on CPU) and every replay sees the same batches and noise; only the frozen network's
weights stand still. A spike that survives with the discriminator frozen comes from the generator's own steps, and
the other way round. ``--try`` adds a replay with one setting changed (``--set``'s syntax and checks; it takes
effect where it is read at every step, e.g. model.fake_margin; not k0 or a rate: the controller's k and the
optimizers' rates come from the checkpoint), ``--scale-lr`` one with an optimizer's restored rate scaled: what a
fix would have done from that step on.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from vaelab.config import apply_overrides, build_config
from vaelab.errors import ConfigError
from vaelab.run import RunFolder
from vaelab.training.loop import Trainer


def replay(run: Path, from_step: int, steps: int, work: Path, lr_factors: dict[str, float] | None = None,
           setting: str | None = None) -> dict[int, dict]:
    """Resume a copy of ``run`` at ``from_step`` for ``steps`` optimizer steps, each optimizer named in
    ``lr_factors`` at that multiple of its restored rate (0: frozen) and ``setting`` ("section.KEY=VALUE", as
    ``--set``) applied. Returns {step: that step's logged row}."""
    copy = work / str(len(list(work.iterdir())))  # the Trainer writes the config; only the checkpoint is copied
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "checkpoints" / f"step-{from_step:08d}.pt", copy / "checkpoints")
    overrides = [f"train.max_steps={from_step + steps}", "train.tensorboard=false", *([setting] if setting else [])]
    try:
        cfg = build_config(apply_overrides(RunFolder(run).read_config().to_dict(), overrides))
    except ConfigError as exc:
        raise SystemExit(f"--try {setting}: {exc}") from None
    trainer = Trainer(cfg, copy, resume=True, progress=False)
    for name, factor in (lr_factors or {}).items():
        if name not in trainer.optimizers:
            raise SystemExit(f"optimizer {name!r}: this model's optimizers are {', '.join(trainer.optimizers)}")
        for group in trainer.optimizers[name].param_groups:
            group["initial_lr"] = group.get("initial_lr", group["lr"]) * factor  # the lr schedule rescales it
            group["lr"] *= factor
    trainer.fit()
    return {r["step"]: r for r in RunFolder(copy).read_metrics() if r.get("event") == "step"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--from-step", type=int, required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--freeze", nargs="*", default=["discriminator", "decoder"])
    parser.add_argument("--try", dest="settings", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--scale-lr", nargs="*", default=[], metavar="OPTIMIZER=FACTOR")
    parser.add_argument("--show", nargs="+", default=["L_g", "L_d"])
    args = parser.parse_args()
    run = Path(args.run)
    original = {r["step"]: r for r in RunFolder(run).read_metrics() if r.get("event") == "step"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        variants = {"as run": replay(run, args.from_step, args.steps, work)}
        for name in args.freeze:
            variants[f"{name} frozen"] = replay(run, args.from_step, args.steps, work, {name: 0.0})
        for setting in args.settings:
            variants[setting] = replay(run, args.from_step, args.steps, work, setting=setting)
        for item in args.scale_lr:
            name, factor = item.split("=", 1)
            variants[f"{name} lr x{factor}"] = replay(run, args.from_step, args.steps, work, {name: float(factor)})
    columns = [("run's log", original)] + list(variants.items())
    print("| step | " + " | ".join(f"{label}: {k}" for label, _ in columns for k in args.show) + " |")
    print("|---|" + "---|" * (len(columns) * len(args.show)))
    for step in range(args.from_step + 1, args.from_step + args.steps + 1):
        cells = [f"{rows[step][k]:.3f}" if step in rows and k in rows[step] else "-"
                 for _, rows in columns for k in args.show]
        print(f"| {step} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
