"""How long report.md takes to render for a long night's ledger, made up in memory (no loop, no git).

    PYTHONPATH=src python3 bench/report_time.py --experiments 2000

Every seventh experiment is trained three times (a marginal win's re-runs, a kept change measured again), every
fiftieth kept; each row's runs end 10 s apart, on one worker. What dominates is the noise each verdict is
explained with (report/summary.py: noises_before).
"""

from __future__ import annotations

import argparse
import json
import random
import time

from autoresearch.loop.experiment import Experiment
from autoresearch.report.markdown import render_report
from autoresearch.vocabulary import Kind, Status


def ledger(count: int, seed: int = 0) -> list[Experiment]:
    draw = random.Random(seed)
    rows, start = [], 1e9
    for i in range(1, count + 1):
        runs = [1.0 + draw.random() * 0.01 for _ in range(3 if i == 1 or i % 7 == 0 else 1)]
        at = start + 10 * i
        spans = [{"worker": "gpu 0", "run": k, "start": at + k, "end": at + k + 5} for k in range(len(runs))]
        rows.append(
            Experiment(
                i, Kind.BASELINE if i == 1 else Kind.EXPERIMENT,
                Status.KEEP if i == 1 or i % 50 == 0 else Status.DISCARD, f"change {i}", "abc",
                commit=f"{i:040x}", started_at=at, finished_at=at + 9.5, val_bpb=sum(runs) / len(runs),
                runs=json.dumps(runs), seeds=json.dumps(list(range(len(runs)))), spans=json.dumps(spans),
            )
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", type=int, default=2000)
    args = parser.parse_args()
    rows = ledger(args.experiments)
    started = time.perf_counter()
    render_report(rows)
    print(f"report.md for {args.experiments} experiments: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
