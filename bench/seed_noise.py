"""The seed-to-seed noise of a preset's shipped train.py, measured as the loop measures it.

    python bench/seed_noise.py [--preset tiny] [--seeds 5] [--budget SECONDS] [--set NAME=VALUE ...] [--fixed-seed N]
        [--out DIR]

A fresh workspace on python-source; the loop's baseline trains the unchanged train.py once per seed.
Prints each run's val_bpb, steps and seconds, and the noise (their standard deviation) and margin the
loop would judge with; writes them to OUT/seed_noise_<preset>.json. `--set DEPTH=3` changes a train.py
constant of the baseline (a Python literal), to measure a candidate starting point for the preset.
`--fixed-seed N` makes train.py seed torch with N whatever its SEED: a copy, as a train.py that ignores SEED
is, to measure how closely its runs repeat one another (loop/judge.py's COPY_SPREAD).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
from pathlib import Path

from common import fresh_loop

from autoresearch.evaluator.result import Result
from autoresearch.loop.judge import margin_of, noise_of


def constant(text: str) -> tuple[str, object]:
    """NAME=VALUE, the value a Python literal: `TOTAL_BATCH_SIZE=2**11` is not one, `TOTAL_BATCH_SIZE=2048` is."""
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f"{value!r} is not a Python literal") from None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=float, help="default: the preset's")
    parser.add_argument("--set", type=constant, action="append", default=[], metavar="NAME=VALUE",
                        help="a train.py constant of the baseline, other than the preset's default")  # fmt: skip
    parser.add_argument("--fixed-seed", type=int, help="train.py seeds torch with this, not SEED")
    parser.add_argument("--work", type=Path, default=Path("/tmp/seed-noise"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/results")))
    args = parser.parse_args()
    overrides = dict(args.set)
    loop = fresh_loop(args.work, args.preset, args.budget, args.seeds, overrides)
    ws = loop.ws
    if args.fixed_seed is not None:
        source = ws.train_py.read_text()
        assert "torch.manual_seed(SEED)" in source, "train.py does not seed torch with SEED as the template does"
        ws.train_py.write_text(source.replace("torch.manual_seed(SEED)", f"torch.manual_seed({args.fixed_seed})"))
        subprocess.run(["git", "-C", str(ws.root), "commit", "-qam", "a fixed seed"], check=True)
    baseline = loop.baseline()
    runs = []
    for result_file in sorted((ws.state / "runs").glob(f"{baseline.id}-*/result.json")):
        r = Result.load(result_file)
        runs.append(
            {"val_bpb": r.val_bpb, "steps": r.num_steps, "training_s": r.training_seconds, "clock": r.training_clock,
             "untimed_s": r.untimed_seconds, "eval_s": r.eval_seconds, "total_s": r.total_seconds}
        )  # fmt: skip
    values = [r["val_bpb"] for r in runs if r["val_bpb"] is not None]
    noise = noise_of(values)
    summary = {
        "fixed_seed": args.fixed_seed,
        "preset": args.preset,
        "budget_s": ws.apparatus.budget_seconds,
        "overrides": overrides,
        "device": Result.load(next((ws.state / "runs").glob("*/result.json"))).device,
        "runs": runs,
        "mean_val_bpb": statistics.fmean(values),
        "noise": noise,
        "margin": margin_of(noise),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"seed_noise_{args.preset}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
