"""Parallel research on every GPU of one machine (issue 11), or its dry run on the CPU.

    PYTHONPATH=$PWD/src python3 bench/parallel_gpus.py --preset h100 --budget 60 --experiments 16 --gpus all
    PYTHONPATH=$PWD/src python3 bench/parallel_gpus.py --preset h100 --budget 60 --experiments 8     # one GPU
    PYTHONPATH=$PWD/src python3 bench/parallel_gpus.py --preset tiny --budget 10 --experiments 4 --workers 2
    PYTHONPATH=$PWD/src python3 bench/parallel_gpus.py --preset h100 --budget 60 --experiments 16 --ray auto
    PYTHONPATH=$PWD/src python3 bench/parallel_gpus.py --preset tiny --budget 10 --experiments 4 --ray local \
        --fake-gpus 2

Runs the real loop with its scheduler (loop/scheduler.py: one worker per device, each in its own worktree)
in a fresh workspace on python-source, until N experiments after the baseline are judged, then reads the
ledger and every run's result: runs per hour, the busy fraction overall and per worker (loop/activity.py's,
the one `status`, the live view and `report` show: the share of the wall time each worker had a run, from
handing it over to its score), the idle worker-seconds per run (what the workers waited for the driver, the
agent), and the seconds the harness counted per device each run reports (a GPU's name and UUID: proof that
no two workers shared one). `--ray` runs them as Ray tasks.
Without --gpus or --workers it runs the one-worker loop, for the comparison. `--agent nudge` needs no
Optuna (the GPU machine has none unless it is carried there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from common import fresh_loop
from loop_overhead import NudgeAgent

from autoresearch.agents.factory import make_agent
from autoresearch.loop.activity import busy_by_worker, overall, spans_of
from autoresearch.loop.parallel import run_workers
from autoresearch.loop.ray_cluster import connect, ray_devices
from autoresearch.loop.ray_executor import RayExecutor, Shipment
from autoresearch.loop.workers import devices
from autoresearch.vocabulary import Kind


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="h100")
    parser.add_argument("--budget", type=float, default=60)
    parser.add_argument("--experiments", type=int, default=8, help="judged experiments after the baseline")
    parser.add_argument("--baseline-runs", type=int, default=2)
    parser.add_argument("--gpus", help="all, or ids like 0,1")
    parser.add_argument("--workers", type=int, help="CPU-only dry run: N workers")
    parser.add_argument(
        "--ray", help="runs as Ray tasks: a cluster's ADDRESS (`auto` after `ray start --head`) or local"
    )
    parser.add_argument("--fake-gpus", type=int, help="with --ray local on a CPU: Ray's GPU count (a dry run)")
    parser.add_argument("--agent", choices=["tune", "nudge"], default="tune")
    parser.add_argument("--minutes", type=float, help="propose for this long, then let the runs in flight end")
    parser.add_argument("--kill-after", type=float, metavar="S", help="SIGKILL a running evaluator's group at S s")
    parser.add_argument("--name", default="", help="added to the result file's name")
    parser.add_argument("--work", type=Path, default=Path("/tmp/parallel-gpus"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/results")))
    args = parser.parse_args()

    loop = fresh_loop(args.work, args.preset, args.budget, args.baseline_runs)
    loop.executor.close()  # every worker has an executor of its own
    found, executor_for = devices(args.gpus, args.workers), None
    if args.ray:
        if args.ray == "local":
            import ray

            ray.init(num_gpus=args.fake_gpus, include_dashboard=False, log_to_driver=False)
        found = ray_devices(connect(None if args.ray == "local" else args.ray))
        shipment = Shipment()
        executor_for = lambda _device: RayExecutor(shipment=shipment)
    agent = NudgeAgent() if args.agent == "nudge" else make_agent("tune")
    started = time.time()
    killed: list[dict] = []
    if args.kill_after:
        threading.Thread(target=_kill_a_run, args=(args.kill_after, killed), daemon=True).start()
    hours = args.minutes / 60 if args.minutes else None
    run_workers(loop, agent, found, max_experiments=args.experiments, hours=hours, executor_for=executor_for)
    wall = time.time() - started

    experiments = [e for e in loop.ledger.all() if e.kind != Kind.PROPOSAL]
    runs = []
    for exp in experiments:
        for path in sorted(loop.ws.state.glob(f"runs/{exp.id}-*/result.json")):
            result = json.loads(path.read_text())
            runs.append({"run": path.parent.name, **_picked(result)})
    harness: dict[str, float] = defaultdict(float)  # by the device each run reports: a GPU's name and UUID
    for run in runs:
        harness[run["device"]] += run["total_seconds"] or 0.0
    spans = [s for e in experiments for s in spans_of(e)]
    busy = busy_by_worker(spans, started, started + wall, workers=[d.label for d in found])
    # Until the last run started: without the end, where the workers wait for the last runs in flight.
    last_start = max((s.start for s in spans), default=started + wall)
    steady = busy_by_worker(spans, started, last_start, workers=[d.label for d in found])
    starts = Counter((s.exp_id, s.run) for s in spans)
    judged = [e for e in experiments if e.kind == Kind.EXPERIMENT and e.finished_at]
    summary = {
        "preset": args.preset,
        "budget_s": args.budget,
        "workers": [d.label for d in found],
        "wall_s": round(wall, 1),
        "experiments_judged": len(judged),
        "runs": len(runs),
        "runs_per_hour": round(3600 * len(runs) / wall, 1),
        "busy_fraction": round(overall(busy), 3),
        "busy_fraction_by_worker": {worker: round(fraction, 3) for worker, fraction in busy.items()},
        "busy_fraction_until_last_start": round(overall(steady), 3),
        "runs_per_hour_until_last_start": round(
            3600 * sum(1 for s in spans if s.end is not None and s.end <= last_start) / max(1.0, last_start - started),
            1,
        ),
        "killed": killed,
        # (experiment, run) trained more than once: lost to a kill, then tried once more
        "retried": [{"exp": e, "run": r, "starts": n} for (e, r), n in sorted(starts.items()) if n > 1],
        "verdicts": {e.id: [str(e.status), e.description[:60]] for e in experiments},
        # The harness's own seconds per device each run reports (on a CPU every worker reports the same CPU).
        "harness_fraction_by_device": {device: round(s / wall, 3) for device, s in sorted(harness.items())},
        # Worker-seconds without a run: proposing, git, the driver.
        "idle_worker_s_per_run": round(wall * len(found) * (1 - overall(busy)) / max(1, len(runs)), 1),
        "mean_tokens_per_second": round(statistics.fmean(r["tokens_per_second"] for r in runs), 1) if runs else 0,
        "run_list": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"parallel_{args.preset}_{len(found)}w{'_ray' if args.ray else ''}{args.name}.json"
    (args.out / name).write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "run_list"}, indent=1))


def _kill_a_run(after: float, killed: list[dict]) -> None:
    """After `after` s, SIGKILL the process group of the oldest evaluator: one with a run (a prewarmed one,
    waiting for its job, is younger than the run it was made beside). As a dead worker would end."""
    import psutil

    time.sleep(after)
    while True:
        evaluators = []
        for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if "autoresearch.evaluator." in cmd and _leads_session(proc.info["pid"]):
                evaluators.append(proc.info)
        if evaluators:
            victim = min(evaluators, key=lambda p: p["create_time"])
            with contextlib.suppress(ProcessLookupError):
                os.killpg(victim["pid"], signal.SIGKILL)
                killed.append({"pid": victim["pid"], "at": time.time(), "age_s": time.time() - victim["create_time"]})
                print(f"KILLED the evaluator {victim['pid']} and its group", flush=True)
                return
        time.sleep(1)


def _leads_session(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def _picked(result: dict) -> dict:
    keys = ("device", "total_seconds", "untimed_seconds", "eval_seconds", "tokens_per_second", "val_bpb")
    return {key: result.get(key) for key in keys}


if __name__ == "__main__":
    main()
