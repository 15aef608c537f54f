"""`--version`, `show N`, `diff A B`, `try`'s one verdict line, `status` of a running experiment, and bad input."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from loop_support import FakeExecutor, ScriptedAgent, constant, make_loop, make_workspace, with_constants

from autoresearch.cli import main
from autoresearch.loop.activity import start_session
from autoresearch.loop.executor import Outcome
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.status import TRAINING, parse_progress
from autoresearch.vocabulary import RunEnd, Status
from autoresearch.workspace.workspace import Workspace

SEEDS = {42: 0.0, 43: 0.002, 44: -0.002}  # noise 0.002, margin 0.004


def score(source: str) -> float | Outcome:
    if constant(source, "BATCH") == 64:
        return Outcome(RunEnd.CRASH, None, "out of memory", "step 0\nRuntimeError: out of memory\n", 1.0)
    return 1.0 + (constant(source, "LR") - 0.2) ** 2 + SEEDS.get(constant(source, "SEED"), 0.0)


def edit(description: str, **values):
    return lambda ctx: (description, with_constants(ctx.train_py, **values))


@pytest.fixture(scope="module")
def history_built(tmp_path_factory: pytest.TempPathFactory, tiny_prepared: Path, cache_dir: Path) -> Path:
    """exp 1 baseline, 2 LR 0.2 (kept), 3 LR 0.9 (discarded), 4 BATCH 64 (crash); made once per module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_CACHE", str(cache_dir))
        workspace = make_workspace(tmp_path_factory.mktemp("history") / "ws", tiny_prepared)
        loop = make_loop(workspace, FakeExecutor(score))
        loop.baseline()
        agent = ScriptedAgent(
            [edit("LR 0.05 -> 0.2", LR=0.2), edit("LR 0.2 -> 0.9", LR=0.9), edit("BATCH 64", BATCH=64)]
        )
        for _ in range(3):
            loop.step(agent)
        loop.ledger.close()
    return workspace.root


@pytest.fixture
def history(history_built: Path, tmp_path: Path) -> Workspace:
    """A copy of the module's history, for a test to read or change."""
    root = tmp_path / "ws"
    shutil.copytree(history_built, root, symlinks=True)
    return Workspace(root)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"autoresearch {version('autoresearch')}"


def test_show_gives_status_value_reason_and_the_diff_against_its_parent(history, capsys) -> None:
    code, out, _ = run_cli(capsys, "show", "3", "--workspace", str(history.root))
    assert code == 0
    lines = out.splitlines()
    assert (
        lines[0]
        == f"exp 3 DISCARD val_bpb {score(with_constants(history.read_train_py(), LR=0.9)):.6f} | LR 0.2 -> 0.9"
    )
    assert lines[1].startswith("why: worse: ") and "above the best 1.000000" in lines[1]
    assert any(line.startswith("commit: ") and "refs/autoresearch/discarded/3" in line for line in lines)
    assert "diff against its parent (exp 2):" in out
    assert "--- train.py (exp 2)" in out and "+++ train.py (exp 3)" in out
    assert "-LR = 0.2  # Adam learning rate (0.001-1)" in out and "+LR = 0.9  # Adam learning rate (0.001-1)" in out


def test_show_of_a_crash_says_why_and_quotes_its_log(history, capsys) -> None:
    code, out, _ = run_cli(capsys, "show", "4", "--workspace", str(history.root))
    assert code == 0
    assert out.startswith("exp 4 CRASH no val_bpb | BATCH 64\nwhy: crash: out of memory\n")
    assert "  | RuntimeError: out of memory" in out and "+BATCH = 64" in out


def test_show_of_a_crash_quotes_the_runs_own_output_not_the_summary_block_after_it(history, capsys) -> None:
    traceback = 'Traceback (most recent call last):\n  File "train.py", line 26\n    DEPTH = = 3\n'
    traceback += "SyntaxError: invalid syntax\n"
    summary = "---\nval_bpb:            nan\n" + "".join(f"field_{i}:    0\n" for i in range(12))  # the evaluator's
    ledger = Ledger(history.root)
    ledger.update(4, log_tail=traceback + summary)
    ledger.close()
    code, out, _ = run_cli(capsys, "show", "4", "--workspace", str(history.root))
    assert code == 0
    assert '  |   File "train.py", line 26' in out and "  | SyntaxError: invalid syntax" in out
    assert "val_bpb:" not in out and "field_11" not in out


def test_show_of_the_baseline_has_no_parent(history, capsys) -> None:
    code, out, _ = run_cli(capsys, "show", "1", "--workspace", str(history.root))
    assert code == 0 and "why: baseline: the mean of 3 seeds" in out and "no parent to compare against" in out


def test_diff_compares_two_experiments_with_their_results(history, capsys) -> None:
    code, out, _ = run_cli(capsys, "diff", "1", "3", "--workspace", str(history.root))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("exp 1 KEEP val_bpb 1.022500 | baseline")
    assert lines[1].startswith("exp 3 DISCARD val_bpb 1.490000 | LR 0.2 -> 0.9")
    assert lines[2] == "val_bpb 1.022500 -> 1.490000 (+0.467500)"
    assert "--- train.py (exp 1)" in out and "-LR = 0.05  # Adam learning rate (0.001-1)" in out
    assert "+LR = 0.9  # Adam learning rate (0.001-1)" in out


def test_diff_and_show_read_git_when_the_ledger_has_no_source(history, capsys) -> None:
    ledger = Ledger(history.root)
    ledger.update(3, source="")  # as a rebuilt ledger without the run's record
    ledger.close()
    code, out, _ = run_cli(capsys, "diff", "2", "3", "--workspace", str(history.root))
    assert code == 0 and "+LR = 0.9  # Adam learning rate (0.001-1)" in out


@pytest.mark.parametrize("args", [["show", "42"], ["diff", "1", "42"], ["diff", "99", "1"]])
def test_an_unknown_experiment_exits_2_without_a_traceback(history, capsys, args) -> None:
    code, out, err = run_cli(capsys, *args, "--workspace", str(history.root))
    assert code == 2 and not out
    assert "no experiment" in err and "experiments 1-4" in err and "Traceback" not in err


def test_show_outside_a_workspace_exits_2(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "show", "1", "--workspace", str(tmp_path))
    assert code == 2 and "not a research workspace" in " ".join(err.split())


def test_show_in_a_workspace_without_experiments_exits_2(workspace, capsys) -> None:
    code, _, err = run_cli(capsys, "diff", "1", "2", "--workspace", str(workspace.root))
    assert code == 2 and "no experiment ledger yet" in " ".join(err.split())


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_try_prints_one_verdict_line_on_stdout_and_its_progress_with_prefixes_on_stderr(
    workspace, capsys, monkeypatch
) -> None:
    import autoresearch.loop.executor as executor

    monkeypatch.setattr(executor, "LocalExecutor", lambda env=None: FakeExecutor(score))
    workspace.write_train_py(with_constants(workspace.read_train_py(), LR=0.2))
    code, out, err = run_cli(capsys, "try", "-m", "LR [0.05] -> 0.2", "--workspace", str(workspace.root))
    assert code == 0, err
    assert out.count("\n") == 1 and out.startswith("exp 2 KEEP val_bpb 1.000000 | best 1.000000 (exp 2)")
    assert "| LR [0.05] -> 0.2 | better:" in out
    assert "[exp 1] training run 1" in err and "[exp 2] training run 1: LR [0.05] -> 0.2" in err
    assert "exp 1 KEEP val_bpb 1.022500" in err  # the baseline it measured first
    assert "exp 2 KEEP" not in err  # the verdict is on stdout only


def test_parse_progress_reads_the_harness_lines() -> None:
    progress = parse_progress(
        "model handed over: graph exported in 0.1s\nclock started after 3 untimed steps; budget 60s\n"
        "step    40 |  33.3% | loss 4.1234 | 40s left\nsome output of train.py\n"
    )
    assert progress == parse_progress("step 40 | 33.3% | loss 4.1234 | 40s left")
    assert (progress.phase, progress.step, progress.loss, progress.seconds_left) == (TRAINING, 40, 4.1234, 40.0)
    assert progress.fraction == pytest.approx(0.333)


def test_status_shows_the_running_experiments_step_loss_and_time_left(history, capsys) -> None:
    ledger = Ledger(history.root)
    ledger.insert(Experiment(id=5, kind="experiment", status=Status.RUNNING, description="LR 0.2 -> 0.3", parent="x"))
    ledger.close()
    run = history.state / "runs" / "5-1"
    run.mkdir(parents=True)
    (run / "log.txt").write_text(
        "clock started after 3 untimed steps; budget 1s\nstep   120 |  50.0% | loss 3.2100 | 30s left\n"
    )
    with history.lock():
        code, out, _ = run_cli(capsys, "status", "--workspace", str(history.root))
    assert code == 0
    assert "running: exp 5 for" in out and "LR 0.2 -> 0.3" in out
    line = next(line for line in out.splitlines() if line.startswith("  run 2: training"))
    assert "step 120, loss 3.2100" in line  # from the log: the evaluator has written no progress yet
    left = int(line.split("loss 3.2100, ")[1].split("s of")[0])
    assert 28 <= left <= 30  # counted down from when the log said 30 s
    # What the evaluator writes while the run trains wins over the log: its clock, its count of tokens.
    progress = {
        "phase": "training", "step": 130, "training_seconds": 0.25, "budget_seconds": 1.0,
        "training_clock": "CPU time / 2 cores", "tokens_per_second": 123456.0, "reported_loss": 3.1,
    }  # fmt: skip
    (run / "progress.json").write_text(json.dumps(progress))
    with history.lock():
        code, out, _ = run_cli(capsys, "status", "--workspace", str(history.root))
    line = next(line for line in out.splitlines() if line.startswith("  run 2: training"))
    assert "step 130, loss 3.1000, 1s of 1s left, 123,456 tokens/s" in line
    assert "noise (std of the baseline's 3 seeds): 0.002000; margin 0.004000" in out


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_an_experiment_in_flight_reads_interrupted_in_report_show_and_diff_once_no_loop_runs(history, capsys) -> None:
    """As `status` says: a report written when the loop stopped (or by `report` with no loop running) said the
    experiment the loop was training was "running"; so did its row's status, and `show` and `diff`."""
    source = history.committed_train_py().replace("LR = 0.2", "LR = 0.3")
    ledger = Ledger(history.root)
    ledger.insert(
        Experiment(
            id=5, kind="experiment", status=Status.RUNNING, description="LR 0.2 -> 0.3", parent="x", source=source
        )
    )
    ledger.close()

    def seen() -> tuple[str, str, str, str, str]:
        """The report's overview and row, `show 5`'s first two lines, and `diff 1 5`'s second."""
        assert run_cli(capsys, "report", "--workspace", str(history.root))[0] == 0
        report = (history.root / "report.md").read_text()
        overview = next(line for line in report.splitlines() if "in the ledger:" in line)
        row = next(line for line in report.splitlines() if line.startswith("| 5 |"))
        _, out, _ = run_cli(capsys, "show", "5", "--workspace", str(history.root))
        _, compared, _ = run_cli(capsys, "diff", "1", "5", "--workspace", str(history.root))
        head, why = out.splitlines()[:2]
        return overview, row, head, why, compared.splitlines()[1]

    with history.lock():  # a loop runs
        overview, row, head, why, compared = seen()
    assert overview.endswith(", 1 running.") and row.startswith("| 5 | running |") and row.endswith("| running |")
    assert head.startswith("exp 5 RUNNING") and why == "why: running" and compared.startswith("exp 5 RUNNING")
    overview, row, head, why, compared = seen()
    assert overview.endswith(", 1 interrupted.")  # BROKE, fixed: the report's first line still said "1 running"
    assert row.startswith("| 5 | interrupted |")  # BROKE, fixed: the row's status still said running
    assert "| interrupted: trained again on the next start |" in row
    assert head.startswith("exp 5 INTERRUPTED") and compared.startswith("exp 5 INTERRUPTED")  # BROKE, fixed: too
    assert why == "why: interrupted: trained again on the next start"


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["report.md a folder", "progress.png a folder", "report.md a FIFO"])
def test_report_over_a_folder_or_a_fifo_says_to_move_it_away(history, capsys, damage) -> None:
    """BROKE, fixed: a folder at report.md or progress.png was an IsADirectoryError traceback from `report` (and from
    the loop's report on its way out), and a FIFO at report.md a wait for ever."""
    name, kind = damage.split(" a ")
    path = history.root / name
    path.unlink(missing_ok=True)
    os.mkfifo(path) if kind == "FIFO" else path.mkdir()
    code, out, err = run_cli(capsys, "report", "--workspace", str(history.root))
    assert code == 2 and f"{path} is not a file" in err and "mv " in err and "Traceback" not in err + out
    path.rmdir() if kind == "folder" else path.unlink()
    assert run_cli(capsys, "report", "--workspace", str(history.root))[0] == 0  # moved away: written as before
    assert (history.root / "report.md").is_file() and (history.root / "progress.png").stat().st_size > 0
    assert not list(history.root.glob("*.tmp"))


@pytest.mark.parametrize("tsv_too", [False, True])
def test_with_the_ledger_deleted_status_report_and_show_name_rebuild_ledger(workspace, capsys, tsv_too) -> None:
    """Not "run `autoresearch run` first", nor "no experiments yet": a run would count from 1 again."""
    loop = make_loop(workspace, FakeExecutor(score))
    loop.baseline()
    loop.ledger.close()
    for path in workspace.state.glob("ledger.sqlite*"):
        path.unlink()
    if tsv_too:  # the runs' folders are left
        (workspace.root / "results.tsv").unlink()
    for command in (["status"], ["report"], ["show", "1"]):
        code, _, err = run_cli(capsys, *command, "--workspace", str(workspace.root))
        assert code == 2 and "autoresearch rebuild-ledger" in err, (command, err)
    assert not list(workspace.state.glob("ledger.sqlite*"))


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_a_run_refused_beside_a_background_loop_names_its_process(history: Workspace, capsys) -> None:
    """A loop `submit` started has no terminal: "stop it (Ctrl-C)" told no way to stop it."""
    import os

    with history.lock():
        start_session(history.state, ["local"], time.time())
        code, _, err = run_cli(capsys, "run", "--plain", "--workspace", str(history.root))
    assert code == 2 and f"it is process {os.getpid()} (`kill {os.getpid()}` stops it" in " ".join(err.split())


def test_rebuild_ledger_refuses_a_ledger_that_reads_fine_unless_forced(history, capsys) -> None:
    """It moved a sound ledger aside as ".broken" and kept only what results.tsv and git hold: crash reasons,
    agents, tokens and timings were gone without a word."""
    before = [(e.id, e.reason) for e in Ledger(history.root).all()]
    code, _, err = run_cli(capsys, "rebuild-ledger", "--workspace", str(history.root))
    assert code == 2 and "the ledger reads fine" in err and "--force" in err
    assert [(e.id, e.reason) for e in Ledger(history.root).all()] == before
    assert not list(history.state.glob("ledger.sqlite.replaced-*"))
    code, out, err = run_cli(capsys, "rebuild-ledger", "--force", "--workspace", str(history.root))
    assert code == 0 and "rebuilt the ledger" in err + out
    assert [e.id for e in Ledger(history.root).all()] == [e for e, _ in before]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_ledger_that_a_full_disk_keeps_from_opening_is_no_corrupt_one_and_rebuild_ledger_leaves_it(
    history, capsys, monkeypatch
) -> None:
    """BROKE, fixed (red team): on a full disk, opening the ledger in WAL mode failed as "disk I/O error", and every
    command called the healthy ledger unreadable and said to run rebuild-ledger, which moved it aside and left an
    empty one: its crash reasons, agents, tokens and costs could only be put back by hand."""
    import sqlite3

    from autoresearch.workspace.disk import DiskFullError

    def no_room(self) -> None:
        raise sqlite3.OperationalError("disk I/O error")  # its -shm and -wal cannot be made

    full = os.statvfs_result((4096, 4096, 2048, 0, 0, 0, 0, 0, 0, 255))  # f_bavail 0
    monkeypatch.setattr(Ledger, "_open", no_room)
    monkeypatch.setattr(os, "statvfs", lambda path: full)
    before = _files(history.state)
    with pytest.raises(DiskFullError):
        Ledger(history.root)
    for args in (["status"], ["show", "2"], ["rebuild-ledger"], ["rebuild-ledger", "--force"]):
        code, _, err = run_cli(capsys, *args, "--workspace", str(history.root))
        assert code == 2 and "the disk is full" in err and "cannot be read" not in err, args
        assert args[0] == "rebuild-ledger" or "rebuild-ledger" not in err, args  # that one says to run it again
    assert _files(history.state) == before  # nothing moved aside, nothing emptied
    monkeypatch.undo()
    assert len(Ledger(history.root).all()) == 4


def test_a_ledger_that_fails_to_open_with_space_free_is_still_called_unreadable(history, monkeypatch) -> None:
    import sqlite3

    from autoresearch.loop.ledger import LedgerError

    def broken(self) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Ledger, "_open", broken)
    with pytest.raises(LedgerError, match=r"(?s)cannot be read .* rebuild-ledger"):
        Ledger(history.root)


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_rebuild_ledger_on_a_disk_that_fills_midway_leaves_everything_as_it_was(
    history, capsys, monkeypatch, damage
) -> None:
    """BROKE, fixed (red team): rebuild-ledger wrote its rows one by one into the ledger's place, so a disk that
    filled midway left a ledger of the first rows that read as healthy (`status`: "experiments: 2 keep"); the next
    `run` cut results.tsv down to it and said to reset the branch off kept experiments."""
    import sqlite3

    for path in history.state.glob("ledger.sqlite*"):
        path.unlink()
    if damage == "corrupt":
        (history.state / "ledger.sqlite").write_bytes(b"not a database" * 100)
    before, tsv = _files(history.state), (history.root / "results.tsv").read_bytes()
    real_insert, inserted = Ledger.insert, []

    def fills_up(self, exp: Experiment) -> None:
        if len(inserted) == 2:
            raise sqlite3.OperationalError("database or disk is full")
        real_insert(self, exp)
        inserted.append(exp.id)

    monkeypatch.setattr(Ledger, "insert", fills_up)
    code, _, err = run_cli(capsys, "rebuild-ledger", "--workspace", str(history.root))
    assert code == 2 and "the disk is full" in err and inserted == [1, 2]
    assert _files(history.state) == before and (history.root / "results.tsv").read_bytes() == tsv
    monkeypatch.undo()
    code, out, err = run_cli(capsys, "status", "--workspace", str(history.root))
    assert code == 2 and "rebuild-ledger" in err  # still lost or corrupt: never a healthy ledger of 2 experiments
    code, out, err = run_cli(capsys, "rebuild-ledger", "--workspace", str(history.root))
    assert code == 0 and "rebuilt the ledger: 4 experiments" in " ".join((out + err).split())
    assert [e.id for e in Ledger(history.root).all()] == [1, 2, 3, 4]
    assert not list(history.state.glob("*rebuilding*"))


@pytest.mark.slow  # over half a second
def test_a_ledger_with_fewer_experiments_than_results_tsv_is_refused_and_results_tsv_kept(history, capsys) -> None:
    """BROKE, fixed (red team): a ledger left partial by an older rebuild-ledger read as healthy; `run` rewrote
    results.tsv from 7 lines to 2, then said to `git reset --hard` off the kept experiments, and rebuild-ledger
    refused it ("the ledger reads fine")."""
    rows = Ledger(history.root).all()
    for path in history.state.glob("ledger.sqlite*"):
        path.unlink()
    partial = Ledger(history.root, check_history=False)
    for exp in rows[:2]:
        partial.insert(exp)
    partial.close()
    tsv = (history.root / "results.tsv").read_bytes()
    for command in (["status"], ["run", "--plain"]):
        code, _, err = run_cli(capsys, *command, "--workspace", str(history.root))
        assert code == 2 and "holds 2 experiments, but results.tsv lists 4" in err and "rebuild-ledger" in err
    assert (history.root / "results.tsv").read_bytes() == tsv
    code, _, _ = run_cli(capsys, "rebuild-ledger", "--workspace", str(history.root))
    assert code == 0 and [e.id for e in Ledger(history.root).all()] == [1, 2, 3, 4]


def test_status_while_the_baseline_trains_says_none_finished_yet(workspace, capsys) -> None:
    ledger = Ledger(workspace.root)
    ledger.insert(Experiment(id=1, kind="baseline", status=Status.RUNNING, description="baseline", parent=None))
    ledger.close()
    with workspace.lock():
        code, out, _ = run_cli(capsys, "status", "--workspace", str(workspace.root))
    assert code == 0
    assert "experiments: none finished yet" in out.splitlines()
    assert "running: exp 1 for" in out


def test_status_with_no_loop_tells_an_interrupted_run_from_a_submission_that_never_started(workspace, capsys) -> None:
    """BROKE, fixed (a README walk-through): a submission still queued when its loop was killed read "interrupted:
    exp 10 ... will be re-run", though it never ran."""
    ledger = Ledger(workspace.root)
    ledger.insert(Experiment(id=1, kind="experiment", status=Status.RUNNING, description="LR 0.3", parent="x"))
    ledger.insert(Experiment(id=2, kind="experiment", status=Status.QUEUED, description="LR 0.4", parent="x"))
    ledger.close()
    code, out, _ = run_cli(capsys, "status", "--workspace", str(workspace.root))
    assert code == 0
    assert "interrupted: exp 1 (LR 0.3) will be re-run on the next start" in out.splitlines()
    assert "queued: exp 2 (LR 0.4) will be trained on the next start" in out.splitlines()


def test_status_after_a_resume_counts_the_running_experiment_from_the_loops_start(workspace, capsys) -> None:
    """An experiment a killed loop left in flight is trained anew by the next start: its time is counted from that
    start, not from the first attempt's (the night between included)."""
    ledger = Ledger(workspace.root)
    exp = Experiment(id=1, kind="baseline", status=Status.RUNNING, description="baseline", parent=None)
    ledger.insert(exp)
    ledger.update(1, started_at=time.time() - 36_000)  # ten hours ago, before the kill
    ledger.close()
    with workspace.lock():
        start_session(workspace.state, ["cpu"], time.time() - 20, submissions=False)
        code, out, _ = run_cli(capsys, "status", "--workspace", str(workspace.root))
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("running: exp 1 for"))
    assert 19 <= int(line.split(" for ")[1].split("s:")[0]) <= 25, line


def test_status_with_several_workers_gives_each_its_run_against_the_budget_or_idle_and_its_busy_fraction(
    history, capsys
) -> None:
    now = time.time()
    spans = json.dumps([{"worker": "gpu 0", "run": 0, "start": now - 30, "end": None}])
    ledger = Ledger(history.root)
    exp = Experiment(5, "experiment", Status.RUNNING, "LR 0.2 -> 0.3", "x", worker="gpu 0", spans=spans)
    ledger.insert(exp)
    ledger.close()
    run = history.state / "runs" / "5-0"
    run.mkdir(parents=True)
    (run / "log.txt").write_text(
        "clock started after 3 untimed steps; budget 60s\nstep  40 | 50.0% | loss 3.21 | 30s left\n"
    )
    start_session(history.state, ["gpu 0", "gpu 1"], now - 60)  # what the running loop writes
    with history.lock():
        code, out, _ = run_cli(capsys, "status", "--workspace", str(history.root))
    lines = out.splitlines()
    assert code == 0 and "workers: 2, busy 25% of the 1:00 since the loop started" in lines  # (30 + 0) / 120 s
    at = lines.index("  gpu 0 (busy 50%): exp 5 run 1 for 0:30: LR 0.2 -> 0.3")
    assert lines[at + 1].startswith("    run 1: training, step 40, loss 3.2100, ") and "s of 1s left" in lines[at + 1]
    assert "  gpu 1 (busy 0%): idle" in lines and "running: exp 5" not in out


@pytest.mark.slow  # over half a second
def test_status_and_the_report_count_experiments_per_hour_over_the_same_time(workspace, capsys) -> None:
    """BROKE, fixed (a user's walk with Ray and 2 workers): after a SIGKILLed session `status` said 80.2 experiments
    per hour, the report written just after 74.8: `status` ended its window at the last row's verdict, the report at
    the last verdict, and with several workers the last row is not always the last judged (exp 3 here)."""
    t0 = time.time() - 3600
    ledger = Ledger(workspace.root)
    for exp_id, (start, end, worker) in enumerate([(0, 600, "gpu 0"), (600, 1800, "gpu 0"), (600, 1200, "gpu 1")], 1):
        spans = json.dumps([{"worker": worker, "run": 0, "start": t0 + start, "end": t0 + end}])
        ledger.insert(Experiment(exp_id, "experiment", Status.DISCARD, f"exp {exp_id}", "x", worker=worker,
                                 started_at=t0 + start, finished_at=t0 + end, val_bpb=1.0, spans=spans))  # fmt: skip
    ledger.close()
    killed = {"started": t0, "ended": None, "workers": ["gpu 0", "gpu 1"]}  # its last verdict ends it
    (workspace.state / "sessions.jsonl").write_text(json.dumps(killed) + "\n")
    code, out, _ = run_cli(capsys, "status", "--workspace", str(workspace.root))
    assert code == 0 and "rate: 6.0 experiments per hour (gpu 0: 4.0, gpu 1: 2.0)" in out.splitlines()  # 3 in 30 min
    assert run_cli(capsys, "report", "--workspace", str(workspace.root))[0] == 0
    assert "**6.0 experiments per hour**" in (workspace.root / "report.md").read_text()


def test_output_piped_into_a_reader_that_has_gone_ends_quietly(history, subprocess_env) -> None:
    """`autoresearch show 3 | head -1`: the reader may close the pipe before the command prints."""
    argv = [sys.executable, "-m", "autoresearch", "show", "3", "--workspace", str(history.root)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env)
    proc.stdout.close()  # gone before the command has imported anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--timeout", "-5"], "a hard timeout of -5s per run is not longer than the budget of 1s"),
        (["--timeout", "0"], "a hard timeout of 0s per run"),
        (["--timeout", "1"], "a hard timeout of 1s per run"),
        (["--timeout", "nan"], "--timeout takes a number of seconds (got nan)"),  # every run was a crash at once
        (["--timeout", "inf"], "--timeout takes a number of seconds (got inf)"),
        (["--max-experiments", "-1"], "--max-experiments cannot be negative (got -1)"),
        (["--hours", "-0.5"], "--hours cannot be negative (got -0.5)"),
        (["--hours", "nan"], "--hours takes a number (got nan)"),
        (["--accelerator", "H100"], "--accelerator goes with --ray"),
        (["--ray", "--workers", "2"], "give --ray or --gpus/--workers, not both"),  # was said after the lock, with
        (["--ray", "--gpus", "0"], "give --ray or --gpus/--workers, not both"),  # a report written first
        (["--model", "gpt-5"], "--model goes with an LLM agent, not --agent tune"),
        (["--command", "claude -p"], "--command goes with --agent command, not --agent tune"),
    ],
)
@pytest.mark.slow  # over half a second: the fast subset stays under a minute
def test_run_refuses_a_timeout_within_the_budget_and_limits_that_stop_at_once(history, capsys, args, said) -> None:
    before = Ledger(history.root).all()
    code, out, err = run_cli(capsys, "run", "--agent", "tune", "--plain", *args, "--workspace", str(history.root))
    assert code == 2 and said in " ".join(err.split()) and "Traceback" not in err
    assert "report:" not in out + err
    assert len(Ledger(history.root).all()) == len(before)  # nothing ran, nothing was recorded
    # Nor is anything left running: the fork server a refused loop had started (importing torch) is gone.
    assert not [p for p in psutil.Process().children(recursive=True) if "zygote" in " ".join(p.cmdline())]


@pytest.mark.parametrize("command", [["run", "--plain"], ["try", "-m", "a change"]])
def test_a_compile_cache_limit_that_is_not_a_size_is_refused_before_any_run(history, capsys, monkeypatch, command):
    monkeypatch.setenv("AUTORESEARCH_COMPILE_CACHE_GB", "-1")
    before = Ledger(history.root).all()
    code, _, err = run_cli(capsys, *command, "--workspace", str(history.root))
    assert code == 2 and "AUTORESEARCH_COMPILE_CACHE_GB takes a size in GB (got '-1')" in " ".join(err.split())
    assert "Traceback" not in err
    assert len(Ledger(history.root).all()) == len(before)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--accelerator", "H100"], "--accelerator goes with --ray"),
        (["--ray", "--workers", "2"], "not both"),
        (["--timeout", "nan"], "--timeout takes a number of seconds (got nan)"),
        (["--timeout", "1"], "a hard timeout of 1s per run is not longer than the budget of 1s"),
    ],
)
def test_submit_refuses_placements_a_loop_would_refuse_before_queueing(history, capsys, args, said) -> None:
    """They were the background loop's to refuse, in its log, after the change had been queued (a timeout: BROKE,
    fixed, red team helper 145)."""
    before = Ledger(history.root).all()
    (history.root / "train.py").write_text(changed := history.read_train_py() + "# a change to submit\n")
    code, _, err = run_cli(capsys, "submit", "-m", "x", *args, "--workspace", str(history.root))
    assert code == 2 and said in " ".join(err.split()) and "Traceback" not in err
    assert len(Ledger(history.root).all()) == len(before) and not (history.state / "inbox").exists()
    assert (history.root / "train.py").read_text() == changed and not (history.state / "driver.log").exists()


@pytest.mark.parametrize("command", ["run", "submit"])
def test_gpu_ids_where_the_machine_shows_no_gpu_are_refused(history, capsys, monkeypatch, command) -> None:
    """BROKE, fixed: `--gpus 0` on a CPU-only machine trained on the CPU under the name "gpu 0" (`--gpus all` was
    refused): a workspace measured with --workers stopped after the run, with two setups to compare."""
    import autoresearch.loop.workers as workers

    monkeypatch.setattr(workers, "visible_gpus", lambda env=None: [])
    before = Ledger(history.root).all()
    (history.root / "train.py").write_text(history.read_train_py() + "# a change to submit\n")
    options = ["-m", "x"] if command == "submit" else ["--plain"]
    code, _, err = run_cli(capsys, command, *options, "--gpus", "0", "--workspace", str(history.root))
    assert code == 2 and "no GPU found for --gpus 0: this machine shows none" in err and "--workers N" in err
    assert len(Ledger(history.root).all()) == len(before) and not (history.state / "inbox").exists()
    # A number past the GPUs it shows: the first run trained on a setup unlike the baseline's and the loop stopped.
    monkeypatch.setattr(workers, "visible_gpus", lambda env=None: ["0", "1"])
    code, _, err = run_cli(capsys, command, *options, "--gpus", "1,5", "--workspace", str(history.root))
    assert code == 2 and "--gpus 1,5: no GPU 5 here; this machine shows 0, 1" in " ".join(err.split())
    assert len(Ledger(history.root).all()) == len(before) and not (history.state / "inbox").exists()


@pytest.mark.parametrize("shown", [["0", "1"], []])
@pytest.mark.parametrize("gpus", ["", " , "])
def test_gpus_given_as_nothing_are_refused_as_what_they_are(history, capsys, monkeypatch, shown, gpus) -> None:
    """BROKE, fixed: `--gpus ""` was refused as "no GPU found for --gpus all" on a machine with GPUs, and as "no GPU
    found for --gpus :" on one without: neither says what was wrong."""
    import autoresearch.loop.workers as workers

    monkeypatch.setattr(workers, "visible_gpus", lambda env=None: shown)
    code, _, err = run_cli(capsys, "run", "--plain", "--gpus", gpus, "--workspace", str(history.root))
    assert code == 2 and f"--gpus takes `all` or GPU numbers like 0,1,3, not {gpus!r}" in " ".join(err.split())


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_a_second_run_while_a_loop_runs_is_refused_and_writes_no_report(history: Workspace, capsys) -> None:
    """BROKE, fixed: the refused `run` wrote report.md and progress.png on its way out and printed `report: ...`
    above its error, as if it had run: under the running loop's feet, and misleading."""
    with history.lock():  # a loop works in the workspace
        assert main(["run", "--plain", "--workspace", str(history.root)]) == 2
    said = capsys.readouterr()
    assert "another autoresearch process is working" in said.err and "report:" not in said.err + said.out
    assert not (history.root / "report.md").exists() and not (history.root / "progress.png").exists()


@pytest.mark.slow  # a process that imports the package, then half a second of loops starting
def test_a_loop_starting_while_status_or_wait_probes_the_lock_is_not_refused(history: Workspace) -> None:
    """BROKE, fixed: `status`, `wait` and `report` ask whether a loop runs by taking the workspace's lock for an
    instant; a loop starting in that instant was refused as if another loop worked there."""
    probe = "import pathlib, sys\nfrom autoresearch.workspace.workspace import Workspace\n"
    probe += "ws = Workspace(pathlib.Path(sys.argv[1]))\n"
    probe += "print('probing', flush=True)\nwhile True: ws.is_locked()"
    prober = subprocess.Popen([sys.executable, "-c", probe, str(history.root)], stdout=subprocess.PIPE)  # `status`s
    try:
        assert prober.stdout.readline() == b"probing\n"
        until = time.monotonic() + 0.3  # thousands of loops starting (before, ~5 % of them were refused)
        while time.monotonic() < until:
            with history.lock():
                pass
    finally:
        prober.kill()
        prober.wait()
    with history.lock():  # and a loop that does hold it is still seen
        assert Workspace(history.root).is_locked()


def test_two_probes_of_the_lock_at_once_do_not_take_each_other_for_a_loop(history: Workspace) -> None:
    """`report` says "interrupted" and `wait` gives up on a loop by what the probe finds: two such commands
    at once (two terminals' `status`) must both find no loop where none runs."""
    fd = os.open(history.root, os.O_RDONLY)  # what another probe holds for its instant
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert not history.is_locked()
    finally:
        os.close(fd)


def test_status_of_a_loop_that_waits_for_submissions_says_so_not_that_an_agent_prepares_one(
    history: Workspace, capsys
) -> None:
    """The loop `submit` starts has no agent: status said "the agent is preparing the next experiment"."""
    start_session(history.state, ["local"], time.time(), asking=False)
    with history.lock():
        code, out, _ = run_cli(capsys, "status", "--workspace", str(history.root))
    assert code == 0 and "running: waiting for a submission (`autoresearch submit`)" in out and "agent" not in out
    start_session(history.state, ["local"], time.time())
    with history.lock():
        code, out, _ = run_cli(capsys, "status", "--workspace", str(history.root))
    assert code == 0 and "running: the agent is preparing the next experiment" in out
