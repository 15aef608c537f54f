"""The research loop's cost per experiment beyond training, on whatever machine runs it.

    PYTHONPATH=$PWD/src python3 bench/loop_overhead.py --preset h100 --budget 30 --experiments 3

Runs the real loop (ledger, git, executor, judge) in a fresh workspace on python-source with a
scripted agent that nudges the learning rates, then splits each experiment's wall time into
training, the harness's own overhead (start-up, compilation, evaluation: untimed + eval seconds)
and the loop's (proposing, git, ledger, process start: wall - total seconds), and the CPU time of
the loop's processes per run. Needs no Optuna and no network, so it runs on the GPU machine as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

from common import fresh_loop, start_up

from autoresearch.agents.base import Context, Proposal
from autoresearch.config.paths import cache_root
from autoresearch.evaluator import compile_cache
from autoresearch.workspace.constants import read_constants, set_constants

RATES = [("MATRIX_LR", 1.25), ("EMBEDDING_LR", 0.8), ("UNEMBEDDING_LR", 1.25), ("MATRIX_LR", 0.8)]
# Each a model of another width (the h100 preset's 8 x 64 = 512 becomes 640, 768, 384, 896): a new graph to compile.
SHAPES = [("ASPECT_RATIO", 1.25), ("ASPECT_RATIO", 1.5), ("ASPECT_RATIO", 0.6), ("ASPECT_RATIO", 1.75)]


class NudgeAgent:
    """Scales one learning rate (or, with `shapes`, the model's width) up or down per proposal: real edits, no
    model or API involved."""

    name, model = "nudge", "scripted"

    def __init__(self, shapes: bool = False) -> None:
        self.moves = SHAPES if shapes else RATES

    def propose(self, context: Context) -> Proposal:
        name, factor = self.moves[len(context.history) % len(self.moves)]
        value = read_constants(context.train_py)[name].value
        new = round(value * factor) if isinstance(value, int) else round(value * factor, 6)
        return Proposal(f"{name} {value} -> {new}", set_constants(context.train_py, {name: new}))


def tree_bytes(path: Path) -> int:
    """The bytes of the regular files under `path` (0 where it is missing)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def tree_entries(path: Path) -> tuple[int, int]:
    """(regular files, folders) under `path`: what the compile cache's cap on a run's files counts."""
    files = folders = 0
    for directory, subdirs, names in os.walk(path):
        folders += len(subdirs)
        files += sum(not os.path.islink(os.path.join(directory, n)) for n in names)
    return files, folders


def disk_use(work: Path) -> dict[str, int]:
    """What the night has left so far: the compile caches (the evaluators' own, the shared one; bytes, then files
    and folders of each compiler's folder) and the state."""
    root = cache_root()
    counts = {}
    for name, top in (("evaluator", root / compile_cache.EVALUATOR), ("shared", compile_cache.shared_root())):
        for sub in sorted(p.name for p in top.iterdir() if p.is_dir()) if top.is_dir() else []:
            counts[f"{name}_{sub}_files"], counts[f"{name}_{sub}_folders"] = tree_entries(top / sub)
    return {
        "evaluator_compile": tree_bytes(root / compile_cache.EVALUATOR),
        "shared_compile": tree_bytes(compile_cache.shared_root()),
        "state": tree_bytes(work / ".autoresearch"),
        "git": tree_bytes(work / ".git"),
        **counts,
    }


def timed_runs(loop) -> list[dict]:
    """Each run's call into the executor, the result's writing (its file's time) and the call's return, as
    wall-clock times; filled in as the loop runs."""
    calls: list[dict] = []
    run = loop.executor.run

    def timed(spec):
        called = time.time()
        outcome = run(spec)
        result = spec.run_dir / "result.json"
        written = result.stat().st_mtime if result.exists() else time.time()
        total = outcome.result.total_seconds if outcome.result else 0.0
        calls.append({"run": spec.run_dir.name, "called": called, "written": written, "returned": time.time(),
                      "total": total})  # fmt: skip
        return outcome

    loop.executor.run = timed
    return calls


def calls_of(calls: list[dict], exp_id: int) -> list[dict]:
    return [c for c in calls if c["run"].split("-")[0] == str(exp_id)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="h100")
    parser.add_argument("--budget", type=float, default=30)
    parser.add_argument("--experiments", type=int, default=3)
    parser.add_argument("--baseline-runs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/loop-overhead"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/results")))
    parser.add_argument("--shapes", action="store_true", help="change the width, not the rates: a new graph each")
    args = parser.parse_args()
    if args.baseline_runs < 2:
        parser.error("--baseline-runs must be at least 2: the loop judges a change against the baseline's noise")
    loop = fresh_loop(args.work, args.preset, args.budget, args.baseline_runs)
    calls = timed_runs(loop)
    marks = []
    loop.baseline()
    print("disk", json.dumps({"id": 1, **disk_use(args.work)}))
    for _ in range(args.experiments):
        started = time.time()
        exp = loop.step(NudgeAgent(args.shapes))
        marks.append((exp, started, time.time() - started))
        # as it goes, for a call cut short: its start and wall time, and each run's call into the executor
        print(
            "timings",
            json.dumps({"id": exp.id, "started": started, "wall_s": marks[-1][2], "runs": calls_of(calls, exp.id)}),
        )
        print("disk", json.dumps({"id": exp.id, "description": exp.description, **disk_use(args.work)}))
    rows = []
    for exp, started, wall in marks:
        result = json.loads(exp.result)
        runs = len(exp.run_values)
        mine = calls_of(calls, exp.id)
        rows.append(
            {
                "id": exp.id,
                "status": exp.status,
                "runs": runs,
                "wall_s": wall,
                "training_s": result.get("training_seconds", 0.0) * runs,  # on the training clock
                "training_clock": result.get("training_clock", "wall clock"),
                # wall time beyond training: start-up to the clock, and the evaluation
                "harness_overhead_s": (result.get("untimed_seconds", 0.0) + result.get("eval_seconds", 0.0)) * runs,
                "untimed_s": result.get("untimed_seconds"),  # go -> clock: train.py's start, export, compile, warm-up
                "eval_s": result.get("eval_seconds"),  # loading the handed-over graph, evaluation, probe
                "loop_overhead_s": wall - result.get("total_seconds", 0.0) * runs,
                # the loop's own, split: before the first run is started, between the result's writing and the
                # evaluator's end (its exit), and after the last run (checks, ledger, git)
                "before_run_s": mine[0]["called"] - started if mine else None,
                "evaluator_exit_s": [round(c["returned"] - c["written"], 3) for c in mine],
                # inside the run but outside its result's total: the job's hand-over, and between the clock's
                # stop and the evaluation (the experiment's end, the compile cache's harvest)
                "run_beyond_total_s": [round(c["written"] - c["called"] - c["total"], 3) for c in mine],
                "after_run_s": started + wall - mine[-1]["returned"] if mine else None,
            }
        )
    loop.executor.close()  # the fork server and a prewarmed run end and are reaped: their CPU time counts
    runs = sum(len(e.run_values) for e in loop.ledger.all())
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu_total = sum(u.ru_utime + u.ru_stime for u in usage)
    measured = [r for r in rows if r["runs"]]  # none with --experiments 0: the baseline's runs alone

    def mean_per_run(key: str, less: float = 0.0) -> float | None:
        return statistics.fmean(r[key] / r["runs"] - less for r in measured) if measured else None

    summary = {
        "preset": args.preset,
        "budget_s": args.budget,
        "device": json.loads(loop.ledger.all()[0].result)["device"],
        "experiments": rows,
        "mean_harness_overhead_s": mean_per_run("harness_overhead_s"),
        "mean_loop_overhead_s": mean_per_run("loop_overhead_s"),
        "mean_wall_beyond_budget_s": mean_per_run("wall_s", args.budget),
        "runs_in_all": runs,
        # CPU time of this process and of every process reaped under it, per run: the loop, the evaluators, the
        # fork server, process start-ups. An experiment killed at its end is not always reaped under it.
        "cpu_per_run_s": cpu_total / runs,
        # Every run, the baseline's seeds too (the first of them compiles with an empty cache): from its result.
        "runs": [
            {
                "run": path.parent.name,
                **{k: result.get(k) for k in ("untimed_seconds", "eval_seconds", "total_seconds")},
                **start_up(path.parent / "log.txt"),
            }
            for path in sorted(
                loop.ws.state.glob("runs/*/result.json"), key=lambda p: [int(x) for x in p.parent.name.split("-")]
            )
            for result in [json.loads(path.read_text())]
        ],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"loop_overhead_{args.preset}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
