"""Throughput, MFU and overhead of train.py on one GPU, on the python-source corpus of that machine.

Run on the GPU machine from the repository root (the package need not be installed):

    PYTHONPATH=src python3 bench/h100.py --budget 60 --variants ref,ref-fixed,ref-fixed

It prepares the `h100` preset from the interpreter's own Python sources (nothing is downloaded),
makes one workspace per variant, runs `python train.py` in it and prints a table. Variants:
  ref        the reference's shape: depth 8, width 512, 2**19 tokens/step (train.py's attention)
  ref-fixed  the same model fed one fixed batch that stays on the GPU: the loader's ceiling
  ref-sssl   the reference shape with its windows: SSSL, S = 1024 tokens (FlexAttention)
  default    train.py exactly as `autoresearch init --preset h100` writes it
Tokens per second are counted as timed optimizer steps x tokens per step / training seconds, so
that a fixed batch and the real loader are measured the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from autoresearch.config.paths import cache_root
from autoresearch.config.presets import get_preset
from autoresearch.data.prepare import prepare
from autoresearch.workspace.constants import read_constants, set_constants
from autoresearch.workspace.init import write_workspace_files

REFERENCE_SHAPE = {"DEPTH": 8, "ASPECT_RATIO": 64, "HEAD_DIM": 128, "TOTAL_BATCH_SIZE": 2**19, "DEVICE_BATCH_SIZE": 128}
VARIANTS = {
    "ref": (REFERENCE_SHAPE, False),
    "ref-fixed": (REFERENCE_SHAPE, True),
    "ref-sssl": ({**REFERENCE_SHAPE, "WINDOW_PATTERN": "SSSL", "SHORT_WINDOW": 1024}, False),
    "default": ({}, False),
}


def feed_fixed_batch(source: str) -> str:
    """train.py that draws one batch and trains on it over and over (no loader in the loop)."""
    draw, reuse = "            x, y = next(batches)\n", "            x, y = fixed_batch\n"
    made = "    batches = run.train_batches(DEVICE_BATCH_SIZE)\n"
    assert draw in source and made in source, "train.py changed: update bench/h100.py"
    return source.replace(draw, reuse).replace(made, made + "    fixed_batch = next(batches)\n")


def run_variant(name: str, workdir: Path, data_dir: Path, budget: float, logs: Path) -> dict:
    overrides, fixed = VARIANTS[name.split("#")[0]]
    ws = workdir / name.replace("#", "-")
    shutil.rmtree(ws, ignore_errors=True)
    write_workspace_files(ws, get_preset("h100"), "python-source", data_dir, budget)
    source = set_constants((ws / "train.py").read_text(), overrides)
    (ws / "train.py").write_text(feed_fixed_batch(source) if fixed else source)
    started = time.time()
    log = logs / f"{name.replace('#', '-')}.log"
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, "train.py"], cwd=ws, stdout=f, stderr=subprocess.STDOUT)
    wall = time.time() - started
    if proc.returncode != 0 or not (ws / "result.json").exists():
        print(log.read_text()[-3000:])
        return {"variant": name, "error": f"exit {proc.returncode}"}
    r = json.loads((ws / "result.json").read_text())
    consts = read_constants(source)
    timed_steps = r["num_steps"] - get_preset("h100").untimed_steps
    tps = timed_steps * consts["TOTAL_BATCH_SIZE"].value / r["training_seconds"]
    return {
        "variant": name,
        "tok_s_M": tps / 1e6,
        "mfu": r["mfu_percent"] * tps / max(r["tokens_per_second"], 1),
        "steps": r["num_steps"],
        "train_s": r["training_seconds"],
        "total_s": r["total_seconds"],
        "overhead_s": r["total_seconds"] - r["training_seconds"],
        "untimed_s": r["untimed_seconds"],
        "eval_s": r["eval_seconds"],
        "peak_gb": r["peak_memory_mb"] / 1024,
        "val_bpb": r["val_bpb"],
        "valid": r["valid"],
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=60)
    parser.add_argument("--variants", default="ref,ref-fixed")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-out")))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data_dir = prepare("python-source", get_preset("h100"), cache_root())
    print(f"prepare: {time.time() - started:.1f}s", flush=True)
    rows = []
    for i, name in enumerate(args.variants.split(",")):
        rows.append(run_variant(f"{name}#{i}", Path("/tmp/bench-ws"), data_dir, args.budget, args.out))
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "bench.json").write_text(json.dumps(rows, indent=1))
    keys = ["variant", "tok_s_M", "mfu", "steps", "train_s", "overhead_s", "untimed_s", "eval_s", "peak_gb", "val_bpb"]
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{row[k]:.3f}" if isinstance(row.get(k), float) else str(row.get(k, "-")) for k in keys))


if __name__ == "__main__":
    main()
