"""The loop's words, defined once: what an experiment is, where it stands, how one training run ended.

The ledger, the judge, the executor, the scheduler, the reports and the agents' context all speak these.
Each word is a `str` (the ledger stores it as text and reads it back as the same member; `"keep" ==
Status.KEEP`), so ledgers written before this module existed read unchanged.

An experiment's `Status` moves QUEUED -> RUNNING -> KEEP | DISCARD | CRASH; the last three are final. The
judge answers KEEP, DISCARD or RERUN (a marginal win: train it once more before deciding); RERUN is never
written to the ledger. An executor reports each training run's `RunEnd`; every end but OK and LOST makes
the experiment a CRASH, a LOST run (the worker or its process group was killed from outside: the run's
own doing is not known) is tried once more.
"""

from __future__ import annotations

from enum import Enum


class _Word(str, Enum):
    def __str__(self) -> str:  # "keep", not "Status.KEEP", in f-strings and messages on every Python
        return self.value


class Status(_Word):
    """Where an experiment stands (the ledger's `status` column), or the judge's verdict on it."""

    QUEUED = "queued"  # recorded (by `submit`, or waiting for a free worker); no run of it has started
    RUNNING = "running"  # being trained and judged, or in flight when the loop was killed
    KEEP = "keep"  # it became the best (the branch points at it)
    DISCARD = "discard"  # measured, not better by the margin; kept under refs/autoresearch/discarded/
    CRASH = "crash"  # no usable measurement: it failed, was invalid, or was rejected before it ran
    RERUN = "rerun"  # the judge only: a marginal win, to be trained again with another seed

    @property
    def final(self) -> bool:
        return self in (Status.KEEP, Status.DISCARD, Status.CRASH)


IN_FLIGHT = (Status.QUEUED, Status.RUNNING)  # what a killed loop must finish on its next start


class Kind(_Word):
    """What an experiment is (the ledger's `kind` column)."""

    BASELINE = "baseline"  # the unchanged train.py, trained with several seeds to measure the noise
    EXPERIMENT = "experiment"  # a proposed train.py, trained and judged against the best
    PROPOSAL = "proposal"  # a proposal that never ran (rejected, or the agent failed): its cost and reason


class RunEnd(_Word):
    """How one training run ended (an executor's `Outcome.status`)."""

    OK = "ok"  # scored, valid
    CRASH = "crash"  # the experiment failed, or the evaluator could not run it
    TIMEOUT = "timeout"  # killed at the hard timeout
    INVALID = "invalid"  # scored, but the result is invalid (late, a causality violation, ...)
    CHANGED = "apparatus-changed"  # the evaluator, data or budget differ from the loop's: stop
    LOST = "lost"  # killed from outside (a person, the OOM killer, a lost node): tried once more
