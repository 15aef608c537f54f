"""The data model of a night: one experiment as the ledger records it, and the best among them."""

from __future__ import annotations

import json
from dataclasses import dataclass

from autoresearch.vocabulary import Kind, Status


@dataclass
class Experiment:
    id: int  # the experiment number, from 1
    kind: Kind
    status: Status
    description: str
    parent: str  # the best commit it was made from
    commit: str | None = None
    agent: str = ""
    model: str = ""
    started_at: float = 0.0
    finished_at: float | None = None
    val_bpb: float | None = None  # the judged value: the mean over runs when a win was re-run
    runs: str = "[]"  # JSON list of val_bpb of each run of this experiment
    reason: str = ""  # why it was kept, discarded or crashed
    memory_gb: float | None = None
    training_seconds: float | None = None
    total_seconds: float | None = None
    lines_added: int = 0
    lines_removed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    log_tail: str = ""
    result: str = "{}"  # JSON of the harness's result file
    source: str = ""  # train.py as run
    diff: str = ""  # against the parent
    attempts: int = 0  # runs of it started that the loop did not see end (it was killed meanwhile)
    seeds: str = "[]"  # JSON list: the run index (SEED + index) of each value in `runs`, in the same order
    worker: str = ""  # the device its latest run trained on ("gpu 1"); empty for the one-worker loop
    merged_from: int = 0  # a win found on an old base, merged onto the best: the experiment it re-validates
    spans: str = "[]"  # JSON list of its runs on workers: {worker, run, start, end} (loop/activity.py)

    @property
    def run_indices(self) -> list[int]:
        """The seed offsets of `runs`; a ledger from before this column had them in order from 0."""
        seeds = json.loads(self.seeds)
        return seeds if len(seeds) == len(self.run_values) else list(range(len(self.run_values)))

    @property
    def run_values(self) -> list[float]:
        return json.loads(self.runs)

    @property
    def recorded(self) -> dict:
        """`result` read: the fields of evaluator/result.py its last run wrote ({} where none, or unreadable)."""
        try:
            fields = json.loads(self.result or "{}")
        except ValueError:
            return {}
        return fields if isinstance(fields, dict) else {}


def best_of(rows: list[Experiment]) -> Experiment | None:
    """The best: the newest kept experiment (each keep is better than the best before it, or simpler and within
    the margin of it and of `lowest_kept`)."""
    return next((e for e in reversed(rows) if e.status == Status.KEEP), None)


def lowest_kept(rows: list[Experiment]) -> float | None:
    """The lowest val_bpb ever kept. A change kept as simpler at equal val_bpb may be worse than the best within
    the margin; measured against this as well, such changes cannot add up to a train.py worse by more than that."""
    return min((e.val_bpb for e in rows if e.status == Status.KEEP and e.val_bpb is not None), default=None)
