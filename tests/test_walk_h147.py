"""A user's walk of the "Many GPUs" features on a 2-core CPU-only machine (helper 147): what broke or misled."""

from __future__ import annotations

import pytest
from loop_support import FakeExecutor, make_loop, with_constants
from test_scheduler import scheduler, score

from autoresearch.loop.engine import LoopError
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.trying import try_working_tree


def test_try_after_a_baseline_of_two_workers_names_submit_not_an_option_try_has_not(workspace, monkeypatch):
    """`run --workers 2` measured the baseline, then `try -m x`: it was refused with "give --workers 2 (to `run` and
    `submit` alike)", and `try --workers 2` is an unknown option (usage, exit 2). `try` trains on every core: the
    way on is `submit --workers 2` and `wait`, as the README says, and the hint must say that."""
    sched, fakes = scheduler(workspace, gpus=None, workers=2)
    for fake in fakes.values():
        fake.fake.setup = "AMD EPYC; CPU time / 1 cores"
    sched.run(None)
    monkeypatch.setenv("AUTORESEARCH_DEVICE", "cpu")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    loop = make_loop(workspace, FakeExecutor(score))
    loop.executor.measures_here = True
    workspace.write_train_py(with_constants(workspace.read_train_py(), LR=0.2))
    with pytest.raises(LoopError) as refused:
        try_working_tree(loop, "LR 0.2")
    assert "--workers 2" in refused.value.hint and "submit" in refused.value.hint and "wait" in refused.value.hint
    assert "give --workers" not in refused.value.hint and "`try`" in str(refused.value)
    assert loop.executor.calls == [] and len(Ledger(workspace.root).all()) == 1


def test_a_box_its_evaluator_could_not_remove_is_removed_by_the_next_start(tmp_path, monkeypatch):
    """`kill -9` of a `run --workers 2` while a run compiled: each evaluator, seeing the loop gone, removed its box,
    which failed (the run's compiler still writing in it as it died), but removed its owner file all the same. The
    resumed loop's start took the ownerless boxes for new ones (BOX_GRACE_S) and left both in `.autoresearch/` after
    it ended. Kept with its owner file, the box is the ended evaluator's, and the next start removes it."""
    import subprocess
    import sys

    from autoresearch import orphans

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    box = orphans.owned_box(tmp_path, int(ended.stdout))
    (box / ".compile").mkdir()
    real = orphans.remove_tree

    def busy(path):
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(orphans, "remove_tree", busy)
    assert orphans.remove_box(box) is False
    monkeypatch.setattr(orphans, "remove_tree", real)
    assert orphans.remove_left_boxes(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a second or more: a driver thread and `submit` beside it
def test_submit_with_a_timeout_the_running_loop_was_not_started_with_says_it_does_not_apply(workspace, capsys):
    """`submit --workers 2 -m ...` started the loop; a later `submit -m "hangs" --workers 2 --timeout 20` of a train.py
    that sleeps said `exp 5 queued` and nothing more: the loop running kept its own limit (1.5 x budget + 180 s), and
    the run hung for minutes, not 20 s. The options of where and how long runs train go only to a loop `submit`
    starts: said so on stderr, with the command that gives them to a loop."""
    import os

    from test_submit import beside, submit

    sched, _ = scheduler(workspace, gpus=None, workers=2, inbox=True)
    sched.run(None)  # the baseline
    sched.placement = ["--workers", "2"]  # as `run --agent queue --workers 2` (or `submit --workers 2`) gives it
    said = {}

    def scenario():
        workspace.write_train_py(with_constants(workspace.committed_train_py(), LR=0.9))
        args = ["submit", "-m", "LR 0.9", "--workers", "2", "--timeout", "20", "--workspace", str(workspace.root)]
        said["timeout"] = (main(args), *capsys.readouterr())
        said["same"] = submit(workspace, capsys, 0.8)[:3]  # without options: nothing to say

    from autoresearch.cli import main

    beside(sched, scenario)
    rc, out, err = said["timeout"]
    assert (rc, out) == (0, "exp 2 queued\n")
    assert "options (--workers 2), not --timeout 20," in err and f"kill {os.getpid()}" in err
    assert "`autoresearch run --agent queue --workers 2 --timeout 20`" in err
    assert said["same"] == (0, "exp 3 queued\n", "")


def test_wait_does_not_name_a_background_loops_error_when_a_later_loop_stopped(tmp_path):
    """`submit` without --workers started a background loop, refused at its start (driver.log: "error: this loop's
    runs would count CPU time / 2 cores ..."); then `run --agent queue --workers 2` in the foreground took two
    submissions and was stopped by Ctrl-C. `wait` said the loop "stopped with error: this loop's runs would count ...
    once what stopped it is dealt with": the earlier loop's refusal, not what stopped the loop that left them."""
    import os
    import time

    from autoresearch.loop import activity
    from autoresearch.loop.waiting import LOOP_STARTED, last_error

    log = tmp_path / "driver.log"
    log.write_text(f"{LOOP_STARTED}, 2026-12-07 18:13:00: ...\nerror: refused\n  hint: give --workers 2\n")
    assert last_error(log) == "error: refused hint: give --workers 2"  # the latest loop's, still
    os.utime(log, (time.time() - 60, time.time() - 60))
    with activity.session(tmp_path, []):
        pass  # a `try` since: no loop that takes submissions, so the background loop's error still stands
    assert last_error(log) == "error: refused hint: give --workers 2"
    with activity.session(tmp_path, ["cpu 0", "cpu 1"], placement=["--workers", "2"]):
        pass  # the foreground loop, since stopped
    assert last_error(log) is None


def test_what_a_submit_and_a_stopped_queue_loop_say_is_not_broken_across_lines_in_a_pipe(workspace, capsys,
                                                                                          monkeypatch):  # fmt: skip
    """In a pipe (a coding agent's tool, a log) the console is 80 columns wide: a `run --agent queue --workers 2
    --timeout 60` stopped by Ctrl-C said "interrupted: the next `autoresearch submit --workers 2 --timeout 60` (or
    `run\\n--agent queue ...`)", and a `submit` after one killed said where the lost change went with the path cut in
    two ("... so it is in \\n/tmp/.../unsubmitted/17966...py", the path itself folded where longer than a line)."""
    import argparse
    import io
    import json

    from rich.console import Console

    from autoresearch.cli import _interrupted, main

    out = io.StringIO()
    args = argparse.Namespace(
        command="run", agent="queue", gpus=None, workers=2, timeout=60.0, accelerator=None, ray=None, workspace="."
    )
    _interrupted(Console(file=out, width=80), KeyboardInterrupt(), args)
    assert "`run --agent queue --workers 2 --timeout 60`" in out.getvalue() and out.getvalue().count("\n") == 1
    held = workspace.state / "submitting"
    held.mkdir()
    best = workspace.committed_train_py()
    lost = {"edit": with_constants(best, LR=0.3), "source": with_constants(best, LR=0.3), "description": "LR 0.3"}
    (held / "1796667496059685508-10400.json").write_text(json.dumps({**lost, "base": workspace.git.head()}))
    workspace.write_train_py(with_constants(best, SEED=7))  # another change by then (refused: only the seed)
    monkeypatch.setenv("COLUMNS", "80")  # as wide as Rich takes a pipe to be
    capsys.readouterr()
    assert main(["submit", "-m", "seed", "--workspace", str(workspace.root)]) == 2
    err = capsys.readouterr().err
    moved = workspace.state / "unsubmitted" / "1796667496059685508-10400.py"
    assert moved.is_file() and f"so it is in {moved}" in err, err


def test_the_live_view_of_two_workers_shows_both_from_the_start(workspace):
    """`run --workers 2 --agent tune --max-experiments 1` in a terminal: the view had a line for cpu 0 only ("busy
    92%") and none for them all, as if --workers 2 had not taken: a worker was shown once it had a run. Each worker has
    its line from the start (idle until it has a run), and two have the line for them all."""
    from rich.console import Console

    from autoresearch.loop.live import LiveReporter

    scheduler(workspace, gpus=None, workers=2)[0].run(None)  # the baseline, on both
    sched, _ = scheduler(workspace, gpus=None, workers=2)  # a loop started again, with nothing to train
    view = LiveReporter(Console(width=160), "autoresearch: tune")
    sched.loop.reporter = view
    sched.run(None)
    console = Console(record=True, width=160, force_terminal=True)
    console.print(view._render())
    screen = console.export_text()
    assert "cpu 0" in screen and "cpu 1" in screen and "2 workers" in screen
    one = LiveReporter(Console(width=160), "autoresearch: tune")
    one.show_workers(["local"])  # one worker: the view stays as it was
    assert one.workers == {}


def test_agent_cores_refused_on_two_cores_does_not_suggest_the_value_just_refused(tmp_path, monkeypatch):
    """`AUTORESEARCH_AGENT_CORES=1 run --workers 2 --agent command` on 2 cores: "1 of 2 cores for the agents leave
    fewer than one for each of 2 runs", hint "set AUTORESEARCH_AGENT_CORES to a number of whole cores the runs can
    spare (e.g. 1), or 0 for none": the value just refused. The hint says how many may be set aside."""
    from test_cores import smt_machine

    from autoresearch.errors import AutoresearchError
    from autoresearch.evaluator import cores
    from autoresearch.loop.workers import placed

    monkeypatch.setenv(cores.AGENT_CORES_ENV, "1")
    smt_machine(tmp_path, monkeypatch, count=2)
    with pytest.raises(AutoresearchError, match="1 of 2 cores for the agents leave fewer than one") as refused:
        placed(None, 2, agents=True)
    assert "e.g. 1" not in refused.value.hint and "the cores less one per run" in refused.value.hint
