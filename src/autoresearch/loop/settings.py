"""What the research loop is configured with, and the error it stops with (every loop module speaks these)."""

from __future__ import annotations

from dataclasses import dataclass

from autoresearch.errors import AutoresearchError

APPARATUS_HINT = (
    "results measured with another apparatus are not comparable: make a new workspace (autoresearch init) "
    "for the new harness, data or budget"
)

SETUP_HINT = (
    "scores from another kind of device or another clock are not comparable with the baseline's: run where it "
    "ran (--gpus with GPUs of its model; on a CPU as many cores: the same --workers and CPU limit, and for a "
    "baseline measured by several workers `submit` and `wait` beside `autoresearch run --workers N` rather than "
    "`try`, which trains on every core; on a Ray cluster of mixed GPUs, --accelerator), or make a new workspace "
    "(autoresearch init) for this machine"
)

CONFINEMENT_HINT = (
    "a run outside the sandbox can read the validation data and what an agent left anywhere, so its score is not "
    "compared with the confined baseline's: run with AUTORESEARCH_SANDBOX unset, and where bubblewrap itself "
    "failed, see the run's log"
)


# The baseline's seeds (SEED, SEED+1, ...), whose spread is the first measure of the noise. 8 judge more surely (the std
# of 3 is under half the true noise 22 % of the time, of 8 3 %), but a loop of one worker then gets to a given val_bpb
# later: simulated, it reached the final best of a 3-seed night later in 110 nights of 120 (BENCHMARKS.md, "Tried,
# not adopted: eight baseline seeds").
BASELINE_RUNS = 3
# With several workers, the baseline's seeds on workers that would otherwise wait for it: one per worker, at most this
# many. More than 8 would gain little and delay the first verdict (each seed may straggle).
BASELINE_SEEDS_MAX = 8


@dataclass(frozen=True)
class LoopConfig:
    baseline_runs: int = BASELINE_RUNS  # trainings of the unchanged train.py, each with another seed
    timeout: float | None = None  # hard limit per training run; default: 1.5 x budget + 180 s


class LoopError(AutoresearchError):
    pass
