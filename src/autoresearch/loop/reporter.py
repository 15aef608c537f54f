"""How the loop tells a person what it is doing. The CLI shows a live view; tests record the calls."""

from __future__ import annotations

from typing import Protocol

from autoresearch.loop.ledger import Experiment


class Reporter(Protocol):
    def phase(self, exp_id: int, what: str, text: str) -> None:
        """Experiment `exp_id` (trying `what`) entered a phase: proposing, training run k, ..."""

    def training(self, exp_id: int, run: int, budget: float) -> None:
        """A training run started; it should take about `budget` seconds plus start-up and evaluation."""

    def finished(self, exp: Experiment, best: Experiment | None) -> None:
        """An experiment got its verdict; `best` is the best after it."""

    def message(self, text: str) -> None: ...


class PlainReporter:
    """One line per event, for logs and terminals without a live view."""

    def __init__(self, echo=print):
        self.echo = echo

    def phase(self, exp_id: int, what: str, text: str) -> None:
        self.echo(f"[exp {exp_id}] {text}: {what}")

    def training(self, exp_id: int, run: int, budget: float) -> None:
        self.echo(f"[exp {exp_id}] training run {run + 1} ({budget:g}s budget)")

    def finished(self, exp: Experiment, best: Experiment | None) -> None:
        self.echo(verdict_line(exp, best))

    def message(self, text: str) -> None:
        self.echo(text)


def verdict_line(exp: Experiment, best: Experiment | None) -> str:
    bpb = f"val_bpb {exp.val_bpb:.6f}" if exp.val_bpb is not None else "no val_bpb"
    best_text = f" | best {best.val_bpb:.6f} (exp {best.id})" if best and best.val_bpb is not None else ""
    return f"exp {exp.id} {exp.status.upper()} {bpb}{best_text} | {exp.description} | {exp.reason}"
