"""What the research loop is configured with, and the error it stops with (every loop module speaks these)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from autoresearch.config.apparatus import CONFIG_NAME
from autoresearch.errors import AutoresearchError

APPARATUS_HINT = (
    "results measured with another apparatus are not comparable: make a new workspace (autoresearch init) "
    "for the new harness, data or budget"
)
CONFIG_EDITED_HINT = (  # an edit of the locked config, not a new harness or data
    f"{CONFIG_NAME} differs from its commit (the budget and data are locked at init): `git checkout {CONFIG_NAME}` to "
    "go on, or make a new workspace (autoresearch init) for others"
)

SETUP_HINT = (
    "scores from another kind of device or another clock are not comparable with the baseline's: run where it "
    "ran (--gpus with GPUs of its model; on a CPU as many cores: the same --workers and CPU limit, and for a "
    "baseline measured by several workers `submit` and `wait` beside `autoresearch run --workers N` rather than "
    "`try`, which trains on every core; on a Ray cluster of mixed GPUs, --accelerator), or make a new workspace "
    "(autoresearch init) for this machine"
)

TORCH_HINT = (
    "another torch compiles and runs the model otherwise (its kernels, its compiler: the steps a budget trains), so "
    "its scores are not compared with the baseline's: install the baseline's torch again "
    "(`pip install torch==VERSION`), or make a new workspace (autoresearch init) for this torch"
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
# With several workers, the baseline's seeds train at once on half the workers, on BASELINE_SEEDS_MIN at least (every
# worker where there are fewer), at most BASELINE_SEEDS_MAX, never fewer than BASELINE_RUNS; the others train changes
# made from the baseline, judged once it is, a round sooner than after the seeds. More than 8 would gain little and
# delay the first verdict (each seed may straggle). Simulated (BENCHMARKS.md, "Half the workers on the baseline's
# seeds"): 8 workers reached the one-worker night's best with 1.49 x its GPU-hours on 4 seeds, 1.77 x on 8, which left
# no worker for a change; 4 workers on 3 seeds sooner than on 4, but with 5 false keeps in 120 nights in place of 2.
# Also the most --baseline-runs takes (cli/commands.py): more were never measured to help, and each delays the first
# verdict by a whole run.
BASELINE_SEEDS_MAX = 8
BASELINE_SEEDS_MIN = 4


@dataclass(frozen=True)
class LoopConfig:
    baseline_runs: int = BASELINE_RUNS  # trainings of the unchanged train.py, each with another seed
    timeout: float | None = None  # hard limit per training run; default: 1.5 x budget + 180 s


class LoopError(AutoresearchError):
    pass


def run_timeout(timeout: float | None, budget: float) -> float:
    """The hard limit of each training run: `timeout` (--timeout) where it leaves a run its budget, else LoopError;
    1.5 x the budget + 180 s where none is given."""
    default = f"leave --timeout out (the default is 1.5 x budget + 180 s: {1.5 * budget + 180:g}s)"
    if timeout is not None and not math.isfinite(timeout):  # nan: every run "timed out" at once
        raise LoopError(f"--timeout takes a number of seconds (got {timeout:g})", hint=f"{default} or give one")
    if timeout is not None and timeout <= budget:
        raise LoopError(
            f"a hard timeout of {timeout:g}s per run is not longer than the budget of {budget:g}s: every run would be "
            "killed",
            hint=f"{default} or give more",
        )
    return timeout or 1.5 * budget + 180
