"""Where an experiment's time outside training goes on one GPU (issue 2's overhead target).

    PYTHONPATH=src python3 bench/startup.py --budget 10 --warm 2 [--profile] [--phases]

Prepares the `h100` preset on python-source, writes the default workspace, then runs train.py once
with an empty compile cache and `--warm` times with the cache it left. `--profile` adds one warm run
under cProfile (stats in $OUT/startup.prof, top entries printed). `--phases` adds a warm run of a
train.py that prints when each phase of its start-up ends. Prints each run's milestones and overhead.
Runs started as the loop starts them (forked from its fork server) are measured by bench/loop_overhead.py,
whose runs' logs say where their start went.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from autoresearch.config.paths import cache_root
from autoresearch.config.presets import get_preset
from autoresearch.data.prepare import prepare
from autoresearch.workspace.init import write_workspace_files

# Lines of train.py after which a phase-marked run prints the seconds since launch; the marks in the
# training loop print during the first step only, after synchronizing the GPU.
PHASE_MARKS = {
    "from autoresearch import harness\n": "imports",
    "    run = harness.start()  # the locked apparatus: data, device, clock, metric\n": "harness.start",
    "        model.init_weights()\n": "model built",
    "    batches = run.train_batches(DEVICE_BATCH_SIZE)\n": "train data on device",
    "                loss = model(x, y)\n": "first forward",
    "            (loss / accum_steps).backward()\n": "first backward",
    "        optimizer.zero_grad()\n": "first optimizer step",
}


def with_phase_marks(source: str) -> str:
    """train.py that prints when each phase before its first step ends; nothing else changes."""
    source = source.replace("import gc\n", "import gc\nimport time as _t\n\nimport psutil as _ps\n", 1)
    for line, name in PHASE_MARKS.items():
        assert line in source, f"train.py changed: update PHASE_MARKS ({line.strip()})"
        indent = line[: len(line) - len(line.lstrip())]
        sync = "torch.cuda.synchronize(), " if len(indent) >= 8 else ""
        guard = "if run.step == 0: " if len(indent) >= 8 else ""
        stamp = "{_t.time() - _ps.Process().create_time():.2f}"
        source = source.replace(line, f"{line}{indent}{guard}{sync}print(f'phase {name} {stamp}s', flush=True)\n", 1)
    end = "    run.finish(model, flops_per_token=model.flops_per_token())\n"
    return source.replace(end, end + "    print(torch._dynamo.utils.compile_times())\n")


MILESTONES = re.compile(r"clock started after \d+ untimed steps \((.*) after launch\)")
EVALUATION = re.compile(r"evaluation: [\d,]+ tokens in ([\d.]+)s, causality probe ([\d.]+)s")


def summarize(kind: str, ws: Path, log: str, wall: float) -> dict:
    row: dict = {"run": kind, "wall_s": round(wall, 1)}
    if m := MILESTONES.search(log):
        for part in m.group(1).split(", "):
            name, value = part.rsplit(" ", 1)
            row[name.replace(" ", "_")] = float(value.rstrip("s"))
    if m := EVALUATION.search(log):
        row["eval_s"], row["probe_s"] = float(m.group(1)), float(m.group(2))
    result = ws / "result.json"
    if result.exists():
        r = json.loads(result.read_text())
        row.update(total_s=r["total_seconds"], train_s=r["training_seconds"], valid=r["valid"])
        row["overhead_s"] = round(r["total_seconds"] - r["training_seconds"], 1)
    else:
        row["error"] = log[-2000:]
    return row


def run_plain(kind: str, ws: Path, out: Path, prefix: list[str], script: str = "train.py") -> dict:
    (ws / "result.json").unlink(missing_ok=True)
    started = time.time()
    proc = subprocess.run([*prefix, script], cwd=ws, capture_output=True, text=True)
    wall = time.time() - started
    log = proc.stdout + proc.stderr
    (out / f"{kind}.log").write_text(log)
    return summarize(kind, ws, log, wall)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=10)
    parser.add_argument("--warm", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--phases", action="store_true", help="one more warm run that prints its phases")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-out")))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/bench-inductor-cache")
    shutil.rmtree(os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
    data_dir = prepare("python-source", get_preset("h100"), cache_root())
    ws = Path("/tmp/bench-startup-ws")
    shutil.rmtree(ws, ignore_errors=True)
    write_workspace_files(ws, get_preset("h100"), "python-source", data_dir, args.budget)
    python = [sys.executable]
    rows = [run_plain("cold", ws, args.out, python)]
    rows += [run_plain(f"warm{i}", ws, args.out, python) for i in range(args.warm)]
    if args.profile:
        prof = args.out / "startup.prof"
        rows.append(run_plain("profiled", ws, args.out, [*python, "-m", "cProfile", "-o", str(prof)]))
    if args.phases:
        (ws / "train_phases.py").write_text(with_phase_marks((ws / "train.py").read_text()))
        rows.append(run_plain("phases", ws, args.out, python, "train_phases.py"))
        print((args.out / "phases.log").read_text(), flush=True)
    for row in rows:
        print(json.dumps(row), flush=True)
    (args.out / "startup.json").write_text(json.dumps(rows, indent=1))
    if args.profile:
        stats = pstats.Stats(str(args.out / "startup.prof"))
        stats.sort_stats("cumulative").print_stats(60)


if __name__ == "__main__":
    main()
