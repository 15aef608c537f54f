"""What stop 78 noticed and left, and what this stop's helpers noticed and left to me: a `submit` without the
baseline's --workers started a loop in the background only to have it refuse; a resumed loop was told to measure
another number of baseline seeds; the live view of many workers; a loop counted twice; OSErrors as tracebacks;
submit's note for the same options in other words; the live view's head after a verdict; a forged report left by a
loop killed during a turn."""

from __future__ import annotations

import argparse
import time

import pytest
from loop_support import with_constants
from test_scheduler import scheduler
from test_submit import background_loop, inbox_files, rows, submit

from autoresearch.cli import main


@pytest.mark.slow  # a second: the baseline of two workers, then `submit`
def test_submit_without_the_baselines_workers_is_refused_before_it_starts_a_loop(workspace, capsys, monkeypatch):
    """The baseline measured by `--workers 2` on two cores (one each), then `submit -m ...` with no loop running: its
    loop in the background started, was refused ("this loop's runs would count CPU time / 2 cores ...") in its log, and
    the change was put back. The same refusal now comes from `submit` itself, and no loop is started to say it."""
    sched, fakes = scheduler(workspace, gpus=None, workers=2)
    for fake in fakes.values():
        fake.fake.setup = "AMD EPYC; CPU time / 1 cores"
    sched.run(None)
    monkeypatch.setenv("AUTORESEARCH_DEVICE", "cpu")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # torch's default: every CPU of this machine
    background_loop(monkeypatch, lambda argv, **_: pytest.fail("no loop is started for a submission it would refuse"))
    rc, out, err, _ = submit(workspace, capsys, 0.2)
    assert (rc, out) == (2, "") and "the baseline's runs CPU time / 1 cores in a loop of 2 workers" in err, err
    assert "give --workers 2 (to `run` and `submit` alike)" in err
    assert workspace.read_train_py() == with_constants(workspace.committed_train_py(), LR=0.2)
    assert inbox_files(workspace) == [] and len(rows(workspace)) == 1


def test_a_loop_of_other_baseline_seeds_is_resumed_with_them(tmp_path):
    """`run --agent queue --workers 2 --baseline-runs 5` killed with the baseline's seeds in flight: `wait`'s hint
    said `autoresearch run --agent queue --workers 2`, which finishes the baseline with the default 3 seeds, not 5 (it
    judges at once what it has). The seeds given are recorded with the other options, and named; the default's not."""
    from autoresearch.cli.commands import placement
    from autoresearch.loop import activity

    def args(**given: object) -> argparse.Namespace:
        return argparse.Namespace(**{"gpus": None, "workers": 2, "timeout": None, "accelerator": None, "ray": None,
                                     "baseline_runs": 3} | given)  # fmt: skip

    assert placement(args()) == ["--workers", "2"]
    placed = placement(args(baseline_runs=5))
    activity.start_session(tmp_path, ["cpu 0", "cpu 1"], time.time(), placement=placed)
    activity.end_session(tmp_path)
    assert (
        activity.run_command(tmp_path, "--agent queue")
        == "`autoresearch run --agent queue --workers 2 --baseline-runs 5`"
    )
    for seeds in (
        "0",
        "1",
        "9",
        "5;x",
        "99999",
    ):  # `run` takes 2 to 8  # a record written by hand: the workers' labels are named instead
        activity.start_session(tmp_path, ["cpu 0"], time.time(), placement=["--baseline-runs", seeds])
        activity.end_session(tmp_path)
        assert activity.run_command(tmp_path) == "`autoresearch run --workers 1`"


def test_submit_starts_its_loop_with_the_seeds_given_once(workspace, capsys, monkeypatch):
    """`submit --baseline-runs 5` gives its loop in the background the option once, now that the options it records
    name it too (not the default's)."""
    started = []

    class Stopped:  # a loop that stops at once: the submission is withdrawn
        def __init__(self, argv, **_):
            started.append(argv)

        def poll(self):
            return 2

    background_loop(monkeypatch, Stopped)
    workspace.write_train_py(with_constants(workspace.committed_train_py(), LR=0.2))
    assert main(["submit", "-m", "LR 0.2", "--baseline-runs", "5", "--workspace", str(workspace.root)]) != 0
    assert len(started) == 1 and started[0].count("--baseline-runs") == 1
    assert started[0][started[0].index("--baseline-runs") + 1] == "5"
    assert workspace.read_train_py() == with_constants(workspace.committed_train_py(), LR=0.2)


def test_the_live_view_of_64_workers_fits_the_screen_with_its_totals_and_verdicts(tmp_path):
    """`run --workers 64` (or a Ray cluster's 64 GPUs): a line per worker filled the screen; Rich cut what did not fit,
    the line for them all and the last verdicts with it, and listed `cpu 10` before `cpu 2`. Now the workers training
    come first, the rest in one line, and the totals and verdicts stay in view; in the order of their numbers."""
    from rich.console import Console

    from autoresearch.loop.experiment import Experiment
    from autoresearch.loop.live import LiveReporter

    console = Console(width=160, height=30, force_terminal=True, record=True)
    view = LiveReporter(console, "autoresearch: tune", runs_dir=tmp_path, clock=lambda: 1000.0)
    view.show_workers([f"cpu {n}" for n in range(64)])
    for n in (3, 10, 2):
        view.phase(n, f"change {n}", "training")
        view.training(n, 0, 60, f"cpu {n}")
    view.finished(
        Experiment(id=1, kind="baseline", status="keep", description="baseline", parent="", val_bpb=2.0), None
    )
    console.export_text()  # the verdict's own line, printed above the view
    console.print(view._render())
    lines = console.export_text().splitlines()
    assert len(lines) == 29, lines  # the screen's, less the line the cursor is on
    named = [line.split("  ")[0] for line in lines if line.startswith("cpu ")]
    assert {"cpu 2", "cpu 3", "cpu 10"} <= set(named) and named == sorted(named, key=lambda w: int(w.split()[1]))
    assert any(line.startswith(f"{64 - len(named)} more ") and "0 training" in line for line in lines), lines
    assert any(line.startswith("64 workers") for line in lines) and "baseline" in lines[-1]
    few = LiveReporter(Console(width=160, height=30), "autoresearch: tune", clock=lambda: 1000.0)
    few.show_workers(["cpu 10", "cpu 9", "cpu 1"])
    console = Console(width=160, record=True, force_terminal=True)
    console.print(few._render())
    shown = [line.split("  ")[0] for line in console.export_text().splitlines() if line.startswith("cpu ")]
    assert shown == ["cpu 1", "cpu 9", "cpu 10"] and "more" not in console.export_text()


def test_status_lists_workers_in_the_order_of_their_numbers():
    """`status` and `report` listed `cpu 1, cpu 10, cpu 11, cpu 2` (as text)."""
    from autoresearch.loop.activity import rated
    from autoresearch.loop.experiment import Experiment

    done = [
        Experiment(
            id=n,
            kind="experiment",
            status="discard",
            description=str(n),
            parent="a",
            val_bpb=2.0,
            worker=f"cpu {n}",
            started_at=100.0 + n,
            finished_at=200.0 + n,
        )
        for n in (10, 2, 1, 11)
    ]
    assert rated(done).workers == ["cpu 1", "cpu 2", "cpu 10", "cpu 11"]


def test_a_loop_killed_between_its_history_line_and_the_end_of_its_session_is_counted_once(tmp_path, monkeypatch):
    """A loop killed after it appended its line to sessions.jsonl, before it removed loop.json: the leftover session
    was read as a second loop of the same start (and the next start added it to the history again, with no end), and
    `status`'s hours and per-worker rates counted that loop's time twice."""
    import json

    from autoresearch.loop import activity

    dead = {"pid": 2**22 + 12345, "started": 1000.0, "workers": ["cpu 0", "cpu 1"]}  # above pid_max: never running
    (tmp_path / activity.HISTORY_NAME).write_text(json.dumps({**dead, "ended": 1600.0}) + "\n")
    (tmp_path / activity.SESSION_NAME).write_text(json.dumps(dead))
    expected = [activity.Period(1000.0, 1600.0, ("cpu 0", "cpu 1"))]
    assert activity.periods(tmp_path, []) == expected
    activity.start_session(tmp_path, ["cpu 0", "cpu 1"], 2000.0)  # the next loop: the leftover goes to the history
    activity.end_session(tmp_path)
    found = activity.periods(tmp_path, [])
    assert found[0] == expected[0] and [p.start for p in found] == [1000.0, 2000.0]
    assert activity.running(found, 1000.0, 1600.0, ["cpu 0", "cpu 1"]).seconds == 600.0


def test_an_error_of_the_system_is_a_message_not_a_traceback(workspace, capsys, monkeypatch):
    """An OSError other than a refused write (out of memory starting the background loop, an I/O error reading the
    ledger) went out of `main` as a traceback."""
    import errno

    from autoresearch.loop import status

    def failing(_ws):
        raise OSError(errno.EIO, "Input/output error", str(workspace.state / "ledger.db"))

    monkeypatch.setattr(status, "status_text", failing)
    assert main(["status", "--workspace", str(workspace.root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Input/output error: {workspace.state / 'ledger.db'}") and "Traceback" not in err
    assert "the system refused it (EIO); nothing the loop recorded is lost" in err


def test_submits_note_is_not_said_for_the_options_the_loop_already_has_in_other_words(monkeypatch):
    """`submit --gpus 0,1` to a loop of `--gpus all` on GPUs 0 and 1 (or of `--gpus 1,0`), and `--timeout 1000000` to
    one recorded as `1e+06` by an older version: the note said the loop kept options other than those given, and
    told to stop it and start it again with the same."""
    from autoresearch.cli.commands import not_taken
    from autoresearch.loop.activity import Session

    def loop(*placement: str, workers=("gpu 0", "gpu 1")) -> Session:
        return Session(pid=1234, started=0.0, workers=list(workers), placement=placement)

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the machine's GPUs, which `--gpus all` given now names
    assert not_taken(["--gpus", "0,1"], loop("--gpus", "all")) is None
    assert not_taken(["--gpus", "all"], loop("--gpus", "1,0")) is None
    assert not_taken(["--timeout", "1000000"], loop("--gpus", "all", "--timeout", "1e+06")) is None
    other = not_taken(["--gpus", "0", "--timeout", "600"], loop("--gpus", "all", "--timeout", "1e+06"))
    assert other is not None and "not --gpus 0 --timeout 600," in other
    assert "not --gpus 0,2," in not_taken(["--gpus", "0,2"], loop("--gpus", "all"))


def test_the_live_views_head_does_not_show_a_judged_experiment_in_progress():
    """Helper 149's walk: at the end of `run --max-experiments 1` the frame left on the screen said `exp 4: training
    run 1  trained 0:05 / 5s budget; evaluating` above exp 4's own verdict, and during a pause after failed asks
    `exp 13: asking openai for a change` above exp 13's crash."""
    from rich.console import Console

    from autoresearch.loop.experiment import Experiment
    from autoresearch.loop.live import LiveReporter

    view = LiveReporter(Console(width=160, record=True), "autoresearch: tune", clock=lambda: 1000.0)
    view.phase(4, "LR up", "training run 1")
    view.training(4, 0, 5.0)
    view.finished(Experiment(id=4, kind="experiment", status="discard", description="LR up", parent="a"), None)
    console = Console(width=160, record=True)
    console.print(view._render())
    assert "exp 4:" not in console.export_text()  # the loop ended, or pauses before its next ask
    view.phase(5, "", "asking tune for a change")
    console.print(view._render())
    assert "exp 5: asking tune for a change" in console.export_text()


@pytest.mark.slow  # seconds: a loop killed during an agent's turn, then started again
def test_a_report_a_turn_wrote_before_the_loop_was_killed_is_written_again_at_the_next_start(workspace, tmp_path):
    """Helper 150's note: a report.md an agent's turn forged is written again when the turn ends, but a loop killed
    during that turn left it, and the next start too (only a loop's exit writes the report): a best never measured,
    read in the morning. The start that puts back what the killed turn left writes the report again."""
    import shlex

    from loop_support import FakeExecutor, ScriptedAgent, killed_loop, make_loop, set_lr
    from test_scheduler import score

    forged = "# Research report\n\nbest val_bpb 0.000001 (exp 7)\n"
    make_loop(workspace, FakeExecutor(score)).baseline()
    script = tmp_path / "agent.sh"
    script.write_text(f"printf %s {shlex.quote(forged)} > report.md\nsleep 60\n")
    killed_loop(
        workspace,
        f"""
        import threading, time
        from autoresearch.agents.command_agent import CommandAgent
        def watch():  # the loop is killed while the turn still runs
            while not (ws.root / "report.md").exists():
                time.sleep(0.05)
            time.sleep(0.3)
            kill()
        threading.Thread(target=watch, daemon=True).start()
        make_loop(ws, FakeExecutor(lambda source: 1.0)).run(CommandAgent({f"sh {script}"!r}), max_experiments=1)
        """,
    )
    assert (workspace.root / "report.md").read_text() == forged
    events: list[str] = []
    make_loop(workspace, FakeExecutor(score), events=events).run(ScriptedAgent([set_lr(0.3)]), max_experiments=1)
    assert (workspace.root / "report.md").read_text() != forged
    assert any("report.md" in e and "written again from the ledger" in e for e in events), events


def test_ctrl_c_of_a_prepare_with_force_says_to_resume_without_it():
    """Helper 152's walk: Ctrl-C during `prepare --force` said "run the same command again to resume", which, with
    --force, starts over."""
    import io

    from rich.console import Console

    from autoresearch.cli import _interrupted

    for command, force, said in (("prepare", True, "without --force"), ("init", False, "the same command")):
        out = io.StringIO()
        _interrupted(Console(file=out), KeyboardInterrupt(), argparse.Namespace(command=command, force=force))
        assert said in out.getvalue(), out.getvalue()


@pytest.mark.parametrize("terminal", [True, False], ids=["a terminal", "a log file"])
def test_a_hang_up_silences_only_a_terminal(tmp_path, terminal):
    """SIGHUP: what the loop prints on its way out goes nowhere where it printed to the terminal that hung up (a write
    there fails, and would stop it half way), and on to the file where its output went (`run > night.log 2>&1 &`,
    whose shell hung up: the log keeps why the loop stopped)."""
    import os
    import pty
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "from autoresearch.cli import HungUp, _terminated\n"
        "try:\n    _terminated(signal.SIGHUP, None)\n"
        "except HungUp:\n    print('interrupted', flush=True)\n"
        "    open(sys.argv[1], 'w').write(f'{os.isatty(1)} {os.isatty(2)}')\n"
    )
    said, log = tmp_path / "said", tmp_path / "night.log"
    if terminal:
        parent, child = pty.openpty()
        out = child
    else:
        out = log.open("w")
    subprocess.run([sys.executable, "-c", code, str(said)], stdout=out, stderr=out, timeout=60, check=True)
    if terminal:
        os.close(child)
        assert said.read_text() == "False False"  # both the terminal's no more
        os.close(parent)
    else:
        out.close()
        assert log.read_text() == "interrupted\n"
