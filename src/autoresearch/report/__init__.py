"""`autoresearch report`: progress.png and report.md from a workspace's ledger."""

from __future__ import annotations

import os
from pathlib import Path

from autoresearch.errors import AutoresearchError
from autoresearch.loop.activity import periods
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.ledger import has_history, ledger_path, verified_rows
from autoresearch.report.markdown import render_report, write_report
from autoresearch.report.plot import plot_progress, progress_figure
from autoresearch.workspace.disk import disk_full_is_an_error

__all__ = ["make_report", "plot_progress", "progress_figure", "read_experiments", "render_report", "write_report"]

PLOT_NAME = "progress.png"
REPORT_NAME = "report.md"
REPORT_AGAIN = "the ledger lost nothing: `autoresearch report` writes the report again"


def read_experiments(workspace: Path) -> list[Experiment]:
    """Every experiment in the workspace's ledger; an error that says what to do when it has none yet."""
    workspace = Path(workspace)
    db_path = ledger_path(workspace)
    if not db_path.is_file() and not has_history(workspace):  # opening a Ledger would create an empty one
        raise AutoresearchError(
            f"{workspace} has no experiment ledger yet ({db_path} is missing)",
            hint="run `autoresearch run` in this workspace first",
        )
    return verified_rows(workspace)


def make_report(workspace: Path, stopped: bool = False) -> tuple[Path, Path]:
    """Read the workspace's ledger and write progress.png and report.md into it; return (plot, report). `stopped`:
    no loop runs now (an experiment in flight was interrupted)."""
    workspace = Path(workspace)
    experiments = read_experiments(workspace)
    plot_path, report_path = workspace / PLOT_NAME, workspace / REPORT_NAME
    for path in (plot_path, report_path):  # each is replaced whole: a file, or a link to one, and nothing else
        if os.path.lexists(path) and not path.is_file():
            raise AutoresearchError(
                f"{path} is not a file (a folder, a FIFO, ...): the report cannot be written there",
                hint=f"move it away (`mv {path} {path}.old`), then run `autoresearch report`; the ledger lost nothing",
            )
    with disk_full_is_an_error(f"writing {plot_path.name} and {report_path.name}", REPORT_AGAIN):
        plot_progress(experiments, plot_path)
        write_report(experiments, report_path, stopped, periods(workspace / ".autoresearch", experiments))
    return plot_path, report_path
