"""How useful is the loop? The tune agent against a deliberately detuned train.py, on this machine.

    python bench/tune_recovery.py [--experiments 20] [--budget SECONDS] [--out DIR]

Two workspaces on the tiny preset (python-source): one with the default train.py, whose baseline
(trained with 3 seeds) gives the target val_bpb, and one with MATRIX_LR divided by --detune (8), on
which the tune agent runs N experiments. Prints the share of the gap it recovered, experiments per hour and
where each experiment's time went, and writes the numbers to OUT/tune_recovery.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from autoresearch.agents.tune import TuneAgent
from autoresearch.config.paths import cache_root
from autoresearch.config.presets import get_preset
from autoresearch.data.prepare import prepare
from autoresearch.loop.engine import LoopConfig, ResearchLoop
from autoresearch.loop.executor import LocalExecutor
from autoresearch.loop.reporter import PlainReporter
from autoresearch.workspace.constants import read_constants, set_constants
from autoresearch.workspace.init import create_workspace
from autoresearch.workspace.workspace import Workspace


def workspace(path: Path, data_dir: Path, budget: float | None, detune: float | None) -> Workspace:
    create_workspace(path, get_preset("tiny"), "python-source", data_dir, budget, tag="bench")
    ws = Workspace(path)
    if detune:
        source = ws.read_train_py()
        lr = read_constants(source)["MATRIX_LR"].value
        ws.write_train_py(set_constants(source, {"MATRIX_LR": round(lr / detune, 6)}))
        ws.git.commit(f"detune: MATRIX_LR / {detune:g}", "train.py")
    return ws


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=20)
    parser.add_argument("--detune", type=float, default=8.0, help="MATRIX_LR is divided by this")
    parser.add_argument("--budget", type=float, help="training seconds (default: the tiny preset's 60)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tune-recovery"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=False)
    data_dir = prepare("python-source", get_preset("tiny"), cache_root())
    reporter = PlainReporter(lambda text: print(text, flush=True))

    default = ResearchLoop(
        workspace(args.work / "default", data_dir, args.budget, None), LocalExecutor(), reporter, LoopConfig()
    )
    target = default.baseline().val_bpb

    started = time.time()
    loop = ResearchLoop(
        workspace(args.work / "detuned", data_dir, args.budget, 8.0), LocalExecutor(), reporter, LoopConfig()
    )
    loop.run(TuneAgent(), max_experiments=args.experiments)
    wall = time.time() - started

    rows = loop.ledger.all()
    detuned, best = rows[0].val_bpb, loop.best()
    experiments = [r for r in rows if r.kind == "experiment"]
    trained = [r for r in rows if r.training_seconds]
    runs = sum(len(r.run_values) for r in rows)
    train_s = sum(json.loads(r.result).get("training_seconds", 0) * len(r.run_values) for r in trained)
    summary = {
        "budget_s": loop.ws.apparatus.budget_seconds,
        "detune": args.detune,
        "default_runs": default.best().run_values,
        "detuned_runs": rows[0].run_values,
        "default_bpb": target,
        "detuned_bpb": detuned,
        "best_bpb": best.val_bpb,
        "recovered_fraction": (detuned - best.val_bpb) / (detuned - target),
        "kept": [(r.id, r.description, r.val_bpb) for r in rows if r.status == "keep"],
        "experiments": len(experiments),
        "training_runs": runs,
        "wall_s": wall,
        "experiments_per_hour": len(experiments) / ((experiments[-1].finished_at - experiments[0].started_at) / 3600),
        "training_share": train_s / wall,
        "overhead_per_run_s": (wall - train_s) / runs,
        "harness_overhead_per_run_s": statistics.fmean(r.total_seconds - r.training_seconds for r in trained),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"tune_recovery_div{args.detune:g}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
