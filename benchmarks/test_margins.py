"""The spread behind the suite's statistical bounds: reruns what a statistical test measures over several seeds
and prints, per quantity, the mean and standard deviation beside the test's bound, flagging any bound closer to
the mean than 3 standard deviations (issue 41: a margin set from one machine's run fails on another CPU).

    python benchmarks/test_margins.py --seeds 10          # the network samplers' recovery (tests/test_samplers.py)

Takes about 5 minutes on 2 cores for 10 seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--kinds", nargs="+", default=["flow", "two-stage"])
    args = parser.parse_args()
    from test_samplers import RECOVERY_BOUNDS, network_recovery

    print("| sampler | quantity | mean | sd | bound | sd from the mean to the bound |")
    print("|---|---|---|---|---|---|")
    for kind in args.kinds:
        runs = []
        for seed in range(args.seeds):
            runs.append(network_recovery(kind, seed))
            print(f"# {kind} seed {seed}: {runs[-1]}", file=sys.stderr, flush=True)
        for name, (bound, side, _) in RECOVERY_BOUNDS[kind].items():
            values = [r[name] for r in runs]
            mean, sd = statistics.mean(values), statistics.stdev(values)
            gap = (mean - bound if side == "min" else bound - mean) / sd if sd > 0 else float("inf")
            flag = "" if gap >= 3 else " (under 3 sd)"
            print(f"| {kind} | {name} ({side}) | {mean:.3f} | {sd:.3f} | {bound} | {gap:.1f}{flag} |", flush=True)


if __name__ == "__main__":
    main()
