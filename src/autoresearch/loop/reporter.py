"""How the loop tells a person what it is doing. The CLI shows a live view; tests record the calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from autoresearch.loop.experiment import Experiment
from autoresearch.visible import visible, visible_line

if TYPE_CHECKING:
    from rich.console import Console


class Reporter(Protocol):
    def phase(self, exp_id: int, what: str, text: str) -> None:
        """Experiment `exp_id` (trying `what`) entered a phase: proposing, training run k, ..."""

    def training(self, exp_id: int, run: int, budget: float, worker: str = "") -> None:
        """A training run started (on `worker`, with several); it should take about `budget` seconds plus
        start-up and evaluation."""

    def run_ended(self, exp_id: int, run: int, worker: str) -> None:
        """A run on `worker` ended (with several workers): the worker is free."""

    def finished(self, exp: Experiment, best: Experiment | None) -> None:
        """An experiment got its verdict; `best` is the best after it."""

    def message(self, text: str) -> None: ...


class PlainReporter:
    """One line per event, for logs and terminals without a live view.

    With `hold_verdicts` the verdict lines are kept in `held` instead of echoed (`try` prints its own)."""

    def __init__(self, echo: Callable[[str], None] = print, hold_verdicts: bool = False):
        self.echo = echo
        self.hold_verdicts = hold_verdicts
        self.held: list[tuple[Experiment, Experiment | None]] = []

    def phase(self, exp_id: int, what: str, text: str) -> None:
        self.echo(f"[exp {exp_id}] {text}: {what}" if what else f"[exp {exp_id}] {text}")

    def training(self, exp_id: int, run: int, budget: float, worker: str = "") -> None:
        # Start-up and compiling come first, a minute or more on a CPU, with no line of their own (a user's walk).
        self.echo(f"[exp {exp_id}] training run {run + 1} ({budget:g}s budget, after start-up, which is not counted)")

    def run_ended(self, exp_id: int, run: int, worker: str) -> None:
        pass  # its verdict, or the next run, says the rest

    def finished(self, exp: Experiment, best: Experiment | None) -> None:
        if self.hold_verdicts:
            self.held.append((exp, best))
        else:
            self.echo(verdict_line(exp, best))

    def message(self, text: str) -> None:
        self.echo(visible(text))


def console_echo(console: Console) -> Callable[[str], None]:
    """Print text on a rich console as it is: `[exp 3]` and any bracket in a description are not markup, and a
    line stays one line in a log (not wrapped at the 80 columns rich assumes off a terminal)."""
    return lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True)


def verdict_line(exp: Experiment, best: Experiment | None) -> str:
    bpb = f"val_bpb {exp.val_bpb:.6f}" if exp.val_bpb is not None else "no val_bpb"
    best_text = f" | best {best.val_bpb:.6f} (exp {best.id})" if best and best.val_bpb is not None else ""
    return visible_line(f"exp {exp.id} {exp.status.upper()} {bpb}{best_text} | {exp.description} | {exp.reason}")
