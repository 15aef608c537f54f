"""The live terminal view shows what runs, for how long against the budget, and the best so far."""

from __future__ import annotations

from rich.console import Console

from autoresearch.loop.ledger import Experiment
from autoresearch.loop.live import LiveReporter


def test_the_live_view_shows_the_experiment_its_clock_the_best_and_the_verdicts():
    console = Console(record=True, width=140, force_terminal=True)
    view = LiveReporter(console, "autoresearch: tune")
    best = Experiment(id=2, kind="experiment", status="keep", description="LR up", parent="a", val_bpb=1.2345)
    view.finished(best, best)
    view.phase(3, "tune: LR 0.05 -> 0.1", "training run 1")
    view.training(3, 0, 60)
    console.print(view._render())
    text = console.export_text()
    assert "exp 2 KEEP val_bpb 1.234500" in text  # the verdict line
    assert "exp 3: training run 1" in text and "/ 60s budget" in text and "tune: LR 0.05 -> 0.1" in text
    assert "best val_bpb 1.234500 (exp 2)" in text and "1 keep" in text
