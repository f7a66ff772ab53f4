"""What the benchmark harnesses share: running a vaelab verb as a user would, reading a run's evaluation, and the
rows and cells of their tables (each script imports it from its own folder: `python benchmarks/<script>.py`)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path


def vaelab(*args: str, quiet: bool = True, cwd: Path | None = None) -> None:
    """``vaelab ARGS`` in a fresh process (the installed package of this interpreter); an error stops the script."""
    subprocess.run([sys.executable, "-m", "vaelab", *map(str, args)], check=True, cwd=cwd,
                   stdout=subprocess.DEVNULL if quiet else None)


def evaluation(run: Path) -> dict:
    """The run's eval/metrics.json (written by ``vaelab evaluate``)."""
    return json.loads((Path(run) / "eval" / "metrics.json").read_text())


def classifier_space(metrics: dict) -> dict:
    """The sample-side metrics in the domain classifier's feature space of an evaluation."""
    return next(v for k, v in metrics["sample_metrics"]["features"].items() if k.startswith("classifier"))


def emit(row: dict, out: Path | None) -> None:
    """Print a result row as JSON and append it to ``out`` (JSON lines) where given."""
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def mean_sd(values: list[float], fmt: str) -> str:
    """'mean ± sd' of seeds' values (the value alone for one seed), each formatted with ``fmt``."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"
