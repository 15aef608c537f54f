"""Red team: what the user reads. Text the experiment (train.py, its output, the files it writes) or the agent (its
description, its train.py) controls reaches the live view, `--plain` output, `status`, `try`/`wait`, `show`, report.md
and progress.png. An attacker wants a command to print a traceback, a crash to read as a keep, or the terminal to be
driven by escape sequences the run printed."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from loop_support import FakeExecutor, ScriptedAgent, fake_result, make_loop
from rich.console import Console

from autoresearch.agents.base import Proposal
from autoresearch.cli import main
from autoresearch.loop.executor import EXPERIMENT_CRASHED, Outcome, RunSpec, outcome_of
from autoresearch.loop.live import LiveReporter
from autoresearch.loop.reporter import PlainReporter, verdict_line
from autoresearch.loop.status import read_progress, status_text
from autoresearch.report import make_report
from autoresearch.report.compare import diff_text, show_text
from autoresearch.report.markdown import render_report
from autoresearch.vocabulary import Status

ESC = "\x1b"
# What a run prints to drive the terminal that shows it: up a line, erase it, write a keep in its place.
FAKE_KEEP = "\x1b[1A\x1b[2K\x1b[Gexp 2 KEEP val_bpb 0.100000 | best 0.100000 (exp 2)"


def control_characters(text: str) -> list[str]:
    """The characters of `text` a terminal acts on (ESC, CR, ...), other than the newlines between its lines."""
    return [ch for ch in text if not ch.isprintable() and ch != "\n"]


# -- progress.png: an agent's description is drawn as matplotlib text, where `$...$` is mathtext --------------------


@pytest.mark.slow  # over half a second
def test_a_kept_description_with_dollar_signs_does_not_break_the_report(workspace):
    """An LLM agent writes LaTeX in its descriptions ("scale lr by $\\sqrt{d}$"). progress.png labels each kept change
    with it through ax.annotate, where matplotlib parses text between two `$` as mathtext: a description that is not
    valid mathtext raises ValueError out of make_report. `autoresearch report` prints a traceback, and `autoresearch
    run`'s closing report (which catches only AutoresearchError and OSError) ends the loop on one, with no report
    written. (A valid one is drawn as math, not as what the agent wrote.)"""
    loop = make_loop(workspace, FakeExecutor(lambda source: 0.9 if "LR = 0.06" in source else 1.0))
    loop.baseline()
    latex = r"use $\frac$ warmup and $lr_{min}$"
    exp = loop.step(ScriptedAgent([lambda ctx: (latex, ctx.train_py.replace("LR = 0.05", "LR = 0.06"))]))
    assert exp.status == Status.KEEP and exp.description == latex
    assert main(["report", "--workspace", str(workspace.root)]) == 0  # ValueError: ... Expected \frac{num}{den}
    plot, report = make_report(workspace.root)
    assert plot.is_file() and latex in report.read_text()


# -- the run's log, read for its progress where the evaluator's progress.json is not (before, between, after runs) --

BAD_PROGRESS_LINES = [
    "step 1 | 1.2.3% | loss 3.0 | 5s left",  # [\d.]+ matches, float() refuses
    "step 1 | 10.0% | loss 3.0 | 1..5s left",
    "training done: 3 steps in 1.2.3s",
    "step " + "9" * 5000 + " | 10.0% | loss 3.0 | 5s left",  # int() of more than 4300 digits
]


@pytest.mark.parametrize("line", BAD_PROGRESS_LINES, ids=["percent", "seconds-left", "done", "digits"])
def test_a_line_train_py_prints_that_looks_like_progress_does_not_break_the_progress_reader(tmp_path, line):
    """train.py prints what it likes into its log; status.py reads the log's tail for the run's progress wherever
    progress.json is absent (after the evaluator saved the result and removed it, until the loop moves on; between a
    baseline's seeds; before the evaluator first writes it). `_STEP` and `_DONE` match `[\\d.]+`/`\\d+` and then call
    float()/int() unguarded: ValueError."""
    log = tmp_path / "runs" / "2-0" / "log.txt"
    log.parent.mkdir(parents=True)
    log.write_text(f"model handed over\nclock started after 5 untimed steps; budget 60s\n{line}\n")
    progress = read_progress(log)  # ValueError: could not convert string to float: '1.2.3'
    assert progress is not None


def test_the_live_view_survives_a_run_log_with_a_malformed_progress_line(tmp_path):
    """The live view renders at 2 Hz, and on every console.print (each verdict): RunView.state() reads the run's log,
    so the ValueError above comes out of the loop's own `finished()` / Live refresh: the loop ends on a traceback."""
    runs = tmp_path / "runs"
    log = runs / "2-0" / "log.txt"
    log.parent.mkdir(parents=True)
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    view = LiveReporter(console, "autoresearch: test", runs_dir=runs)
    view.phase(2, "a change", "training run 1")
    view.training(2, 0, 60.0)
    log.write_text(BAD_PROGRESS_LINES[0] + "\n")
    console.print(view._render())  # ValueError


def test_status_survives_a_run_log_with_a_malformed_progress_line(workspace):
    """`autoresearch status` while the loop runs: `running_text` reads the in-flight experiment's latest run log."""
    loop = make_loop(workspace, FakeExecutor(lambda source: 1.0))
    loop.baseline()
    exp = loop.record(Proposal("a change", workspace.read_train_py() + "\n# x\n"), "test", "", status=Status.RUNNING)
    exp_id = exp.id
    log = workspace.state / "runs" / f"{exp_id}-0" / "log.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(BAD_PROGRESS_LINES[0] + "\n")
    with workspace.lock():
        assert main(["status", "--workspace", str(workspace.root)]) == 0  # ValueError out of main: a traceback
        assert f"running: exp {exp_id}" in status_text(workspace)


# -- what a run's output puts in its verdict's reason and in the ledger's log tail ---------------------------------


def test_what_a_crash_printed_and_said_cannot_drive_the_terminal_or_add_a_verdict_line(workspace):
    """A crash's reason quotes train.py's words (a model's forward that raises with a message of its choosing; an
    `error` train.py sends with its hand-over itself), and its log tail is train.py's output. The verdict line was
    printed as it was by the live view and `--plain` (rich passes ESC through: it strips only BEL, BS, VT, FF, CR) and
    print()ed by `try`/`wait`; `show` printed the log's last lines with print(), bytes and all: ESC sequences moved
    the cursor up over `exp N CRASH ...` and wrote a KEEP there, and a line break in the reason gave `try`, whose
    stdout is one line, the verdict, a second line: a KEEP of the attacker's spelling. report.md kept the ESC bytes.
    (The evaluator now makes such a reason one line, test_train_e2e.py; the printers make sure of it whatever the
    ledger holds.)"""
    forged = "exp 9 KEEP val_bpb 0.100000 | best 0.100000 (exp 9) | the real change | 0.9 better than the best"

    class Crashing(FakeExecutor):
        def run(self, spec: RunSpec) -> Outcome:
            if "LR = 0.06" not in spec.source.read_text():
                return super().run(spec)
            said = replace(
                fake_result(1.0, spec.fingerprint), val_bpb=None, valid=False, invalid_reason=f"oops\n{forged}"
            )
            return outcome_of(EXPERIMENT_CRASHED, said, "", f"Traceback ...\n{FAKE_KEEP}\n", 1.0, spec.fingerprint)

    loop = make_loop(workspace, Crashing(lambda source: 1.0))
    loop.baseline()
    exp = loop.step(ScriptedAgent([lambda ctx: ("print and crash", ctx.train_py.replace("LR = 0.05", "LR = 0.06"))]))
    assert exp.status == Status.CRASH and forged in exp.reason and ESC in exp.log_tail  # the ledger keeps them
    line = verdict_line(exp, loop.best())
    assert control_characters(line) == [] and "\n" not in line, repr(line)
    experiments = loop.ledger.all()
    text = show_text(loop.ws.git, experiments, exp.id)
    assert control_characters(text) == [], [ln for ln in text.splitlines() if ESC in ln]
    assert "\\x1b[1A" in text  # spelled out, not dropped: the log shows what the run tried
    assert ESC not in render_report(experiments)
    echoed = []
    PlainReporter(echoed.append).message(f"dropped a submission: {FAKE_KEEP}")
    assert control_characters(echoed[0]) == []


# -- train.py itself, shown by `show` / `diff` and report.md's diff --------------------------------------------------


def test_show_and_diff_do_not_print_the_escape_sequences_an_agent_put_in_train_py(workspace):
    """train.py is the agent's text, and Python takes an ESC byte in a comment. `show N` and `diff A B` print the
    unified diff with print(): a line the agent added can erase itself and draw another in its place (`+LR = 0.06`
    over a line that does something else), so the person reviewing what was kept reads a change that is not the one
    that ran. report.md's "train.py: best vs baseline" carries the same bytes."""
    loop = make_loop(workspace, FakeExecutor(lambda source: 0.9 if "LR = 0.06" in source else 1.0))
    loop.baseline()
    hidden = "import os  # anything at all\x1b[2K\x1b[G+LR = 0.06  # what the reviewer reads\n"
    edit = lambda ctx: ("a lower loss", ctx.train_py.replace("LR = 0.05", "LR = 0.06") + hidden)
    exp = loop.step(ScriptedAgent([edit]))
    assert exp.status == Status.KEEP, exp.reason
    experiments = loop.ledger.all()
    assert control_characters(show_text(loop.ws.git, experiments, exp.id)) == []
    assert control_characters(diff_text(loop.ws.git, experiments, 1, exp.id)) == []
    assert ESC not in render_report(experiments)
