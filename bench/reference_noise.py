"""How the one-worker reference's noise estimate moves issue 10's 16-worker ratio, from bench/simulate.py's results.

    PYTHONPATH=$PWD/src python3 bench/reference_noise.py bench/results/2026-12-02-simulate-60-draws-nudge-apart-*.json

One worker measures the noise on the baseline's 3 seeds, 16 workers on 8 (half the workers, at most
settings.BASELINE_SEEDS_MAX). The seeds' values are a function of the landscape draw (simulate.Landscape.measured),
so each draw's first estimates can be computed without running the loop. Per draw: those stds over the true noise,
and the time the 16 workers took to the one-worker run's best over the 2/N goal; then the draws grouped by the
reference's estimate.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import simulate

from autoresearch.loop.recovery import seeded


def first_stds(draw: int, landscape: simulate.Landscape) -> tuple[float, float]:
    """The std of the baseline's first 3 and first 8 seeds in landscape draw `draw`, over the true noise."""
    noise = [random.Random(f"{draw}:{seeded(simulate.TRAIN_PY, i)}").gauss(0.0, landscape.seed_noise) for i in range(8)]
    return statistics.stdev(noise[:3]) / landscape.seed_noise, statistics.stdev(noise) / landscape.seed_noise


def main(paths: list[str]) -> None:
    landscape, rows = simulate.Landscape(), []
    for path in paths:
        for draw, (one, many) in json.loads(Path(path).read_text())["results"].items():
            reached = many["hours_to_target"]
            ratio = math.inf if reached is None else reached / (one["hours_to_target"] * 2 / many["workers"])
            rows.append((*first_stds(int(draw), landscape), ratio))
    print("3 seeds  8 seeds  time / 2/N goal")
    for three, eight, ratio in sorted(rows):
        print(f"{three:7.2f}  {eight:7.2f}  {ratio:6.2f}")
    for name, group in (
        ("reference's 3-seed std < 0.5 x the noise", [r for t, _, r in rows if t < 0.5]),
        ("0.5-1 x", [r for t, _, r in rows if 0.5 <= t < 1]),
        (">= 1 x", [r for t, _, r in rows if t >= 1]),
    ):
        met, lost = sum(r <= 1 for r in group), sum(math.isinf(r) for r in group)
        print(f"{name}: {len(group)} draws, median {statistics.median(group):.2f}, met {met}, not reached {lost}")


if __name__ == "__main__":
    main(sys.argv[1:])
