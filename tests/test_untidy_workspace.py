"""A user's untidy handling of a workspace folder: moved or deleted while the loop runs, checked out again with
`git worktree add` (helper 128's findings, fixed by helper 130)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from loop_support import FakeExecutor, ScriptedAgent, constant, fake_result, make_loop, set_lr, with_constants
from test_scheduler import betas, score, wait_until

from autoresearch.errors import AutoresearchError
from autoresearch.loop.clock import RealClock
from autoresearch.loop.executor import Outcome, RunSpec, outcome_of
from autoresearch.loop.inbox import Inbox
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.scheduler import Scheduler
from autoresearch.loop.settings import LoopError
from autoresearch.loop.workers import devices, make_workers
from autoresearch.vocabulary import RunEnd, Status
from autoresearch.workspace.workspace import Workspace, WorkspaceMoved

MADE_BY_THE_LOOP = (".git", "train.py", "results.tsv", "autoresearch.json", ".autoresearch/ledger.sqlite")


def _away_during_the_run(workspace, away) -> FakeExecutor:
    """A loop's executor whose first run after the baseline sees the workspace taken `away` (a `mv`, an `rm -rf`)."""
    executor = FakeExecutor(lambda source: 3.0 + constant(source, "LR"))
    make_loop(workspace, executor).baseline()

    taken: list[bool] = []

    def score(source: str) -> float:
        if not taken:  # once: what the loop makes again there is for the test to find
            taken.append(True)
            away()
        return 3.0 + constant(source, "LR")

    executor.score = score
    return executor


@pytest.mark.parametrize("pwd", ["through the link", "elsewhere", "unset"])
def test_the_path_you_named_the_workspace_by_keeps_its_links_and_the_shells_logical_pwd(
    workspace, tmp_path, monkeypatch, pwd
) -> None:
    """`Workspace.named`, whose links an agent's namespace pins (agents/namespace.py, `on_the_way`): the path as given,
    absolute; the default `.` from the shell's $PWD, which keeps a link `cd`'d through, where it names the working
    directory (else from the real one: a $PWD left stale by a program that changed directory without it)."""
    (tmp_path / "current").symlink_to(tmp_path)
    named = tmp_path / "current" / "ws"
    assert Workspace(named).named == named and Workspace(named).root == workspace.root
    monkeypatch.chdir(named)
    if pwd == "unset":
        monkeypatch.delenv("PWD", raising=False)
    else:
        monkeypatch.setenv("PWD", str(named if pwd == "through the link" else tmp_path))
    assert Workspace(Path(".")).named == (named if pwd == "through the link" else workspace.root)
    assert Workspace(Path(".")).root == workspace.root


def test_a_workspace_moved_while_its_loop_runs_is_not_rebuilt_at_the_old_path(workspace, tmp_path) -> None:
    """`mv ws ws2` while `autoresearch run` trains in ws. The loop's check after the run found "the workspace changed
    (.git/COMMIT_EDITMSG, .git/HEAD, .git/config, ...)", "put back" the lot, which made a new ws at the old path (a
    .git of 60 loose objects, a ledger, results.tsv), and trained the rest of the night there, while ws2 said
    "interrupted: exp 17 ... will be re-run on the next start" and, resumed, trained other experiments under the same
    ids (helper 128). Now the loop stops, saying the workspace was moved; nothing is made at the old path, and the
    experiment in flight is resumed by the next start in the new place."""
    moved = tmp_path / "moved"
    executor = _away_during_the_run(workspace, lambda: os.rename(workspace.root, moved))
    loop = make_loop(workspace, executor)
    with pytest.raises(AutoresearchError, match="moved or deleted while the loop ran") as caught:
        loop.step(ScriptedAgent([set_lr(0.9)]))
        loop.step(ScriptedAgent([set_lr(0.8)]))
    assert "autoresearch run" in caught.value.hint and str(workspace.root) in str(caught.value)
    # (the fake executor writes its result file under the old path's runs folder: only what the loop made counts)
    remade = [name for name in MADE_BY_THE_LOOP if os.path.lexists(workspace.root / name)]
    assert not remade, f"made again at the old path: {remade}"
    rows = Ledger(moved).all()
    assert [(e.id, e.status, e.attempts) for e in rows[1:]] == [(2, Status.RUNNING, 0)]  # in flight, not "killed"

    again = make_loop(Workspace(moved), FakeExecutor(lambda source: 3.0 + constant(source, "LR")))
    assert again.recover().id == 2  # the next start, in the new place, resumes it


def test_a_workspace_deleted_while_its_loop_runs_is_not_made_again(workspace) -> None:
    """`rm -rf ws` while the loop trains in it: the loop made the whole workspace again at that path (an empty
    ledger's worth of history the person had deleted) and went on there. It stops as for a move instead: the person
    deleted it, and a workspace the loop made up would hold no history to judge by."""
    executor = _away_during_the_run(workspace, lambda: shutil.rmtree(workspace.root))
    loop = make_loop(workspace, executor)
    with pytest.raises(AutoresearchError, match="moved or deleted while the loop ran"):
        loop.step(ScriptedAgent([set_lr(0.9)]))
    remade = [name for name in MADE_BY_THE_LOOP if os.path.lexists(workspace.root / name)]
    assert not remade, f"made again: {remade}"


def test_a_workspace_moved_while_the_agent_proposes_is_not_written_at_the_old_path(workspace, tmp_path) -> None:
    """`mv` during an LLM agent's turn (no shell: no watch around it): its proposal is not committed nor trained at
    the old path; the loop stops as for a move during a run."""
    moved = tmp_path / "moved"
    executor = FakeExecutor(lambda source: 3.0 + constant(source, "LR"))
    loop = make_loop(workspace, executor)
    loop.baseline()

    def edit(context):
        os.rename(workspace.root, moved)
        return set_lr(0.9)(context)

    with pytest.raises(AutoresearchError, match="moved or deleted while the loop ran"):
        loop.step(ScriptedAgent([edit]))
    remade = [name for name in MADE_BY_THE_LOOP if os.path.lexists(workspace.root / name)]
    assert not remade, f"made again at the old path: {remade}"
    assert len(executor.calls) == 3  # the baseline's seeds only


def test_a_workspace_checked_out_with_git_worktree_add_is_refused_not_a_traceback(workspace, tmp_path) -> None:
    """`git worktree add ../other` of a workspace gives a folder whose `.git` is a file. `autoresearch run` there
    started the baseline, then, checking the workspace after the run, died with a traceback: NotADirectoryError:
    '.../.git/refs' (integrity._put_back_links). The worktree also shares refs/autoresearch/discarded/<n> with the
    first workspace, whose ids a second ledger would reuse. It is refused at the start, saying what to do instead."""
    executor = FakeExecutor(lambda source: 3.0 + constant(source, "LR"))
    make_loop(workspace, executor).baseline()
    other = tmp_path / "other"
    workspace.git("worktree", "add", "-q", "-b", "other", str(other), "HEAD")
    with pytest.raises(AutoresearchError, match="git worktree") as caught:
        Workspace(other)
    assert "cp -a" in caught.value.hint and str(workspace.root) in caught.value.hint
    assert not (other / ".autoresearch").exists()  # nothing of the loop's made there


def test_a_git_folder_a_killed_turn_left_a_file_is_put_back_not_refused_as_a_worktree(workspace, tmp_path) -> None:
    """An agent's turn that made .git a file (`gitdir: .moved`, as a worktree's names its folder), then a kill: the
    next start is the recovery's, which says what the turn left (here: the history moved out of .git, whose objects
    the snapshot does not hold), not a refusal of the workspace as a git worktree."""
    from test_red_team_recovery import next_start, sh, turn_begins

    turn_begins(workspace, tmp_path)
    sh(workspace, "mv .git .moved && echo 'gitdir: .moved' > .git")
    again = Workspace(workspace.root)  # not refused
    try:
        next_start(again)
    except LoopError as exc:
        assert "stopped during an agent's turn" in str(exc), exc
    assert again.git.git_dir.is_dir()


@pytest.mark.slow  # over half a second with its setup
@pytest.mark.parametrize(
    "command",
    [
        ["run", "--agent", "queue", "--max-experiments", "1", "--plain"],
        ["try", "-m", "x"],
        ["submit", "-m", "x"],
        ["status"],
        ["report"],
        ["show", "1"],
        ["diff", "1", "1"],
        ["wait", "1"],
        ["rebuild-ledger"],
    ],
)
def test_every_command_in_a_git_worktree_of_a_workspace_refuses_without_a_traceback(
    workspace, tmp_path, command
) -> None:
    """Each command run inside such a worktree says what it is and exits 2, no traceback."""
    workspace.git("worktree", "add", "-q", "-b", "other", str(tmp_path / "other"), "HEAD")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "autoresearch", *command],
        cwd=tmp_path / "other",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    assert "Traceback" not in said and "git worktree" in said, said


@pytest.mark.slow  # over half a second
def test_run_whose_workspace_is_moved_stops_saying_so_and_resumes_in_the_new_place(
    workspace, tmp_path, monkeypatch, capsys
) -> None:
    """`autoresearch run`, its workspace moved during the baseline's first run: exit 2 with the error and hint, no
    traceback, no report or results.tsv written at the old path; `run` in the new place finishes the baseline (and
    goes on)."""
    from autoresearch.cli import main
    from autoresearch.loop import executor as executors

    moved = tmp_path / "moved"

    def score(source: str) -> float:
        if not moved.exists():
            os.rename(workspace.root, moved)
        return 3.0 + constant(source, "LR")

    monkeypatch.setattr(executors, "LocalExecutor", lambda env=None: FakeExecutor(score))
    args = ["run", "--agent", "tune", "--max-experiments", "1", "--plain", "--workspace"]
    assert main([*args, str(workspace.root)]) == 2
    err = capsys.readouterr().err
    assert "moved or deleted while the loop ran" in err and "Traceback" not in err, err
    remade = [name for name in (*MADE_BY_THE_LOOP, "report.md", "progress.png") if (workspace.root / name).exists()]
    assert not remade, f"made again at the old path: {remade}"
    assert main([*args, str(moved)]) == 0
    baseline, *_ = Ledger(moved).all()
    assert baseline.status == Status.KEEP and len(baseline.run_values) == 3, baseline


# -- the loop with several workers (the scheduler; `submit`'s loop) ---------------------------------------------------

MADE_BY_THE_SCHEDULER = (*MADE_BY_THE_LOOP, ".autoresearch/workers")


@dataclass
class Away:
    """A worker's executor whose runs, once `gate` is set, call it with their train.py, then end as `end` says: "ok"
    (scored), "crash" (no result: its folder was gone), "error" (the executor raised, reading the folder gone)."""

    gate: Callable[[str], None] | None = None
    end: str = "ok"

    def run(self, spec: RunSpec) -> Outcome:
        source = spec.source.read_text()
        if self.gate is not None:
            self.gate(source)
            if self.end == "error":
                spec.source.read_text()
            if self.end == "crash":
                return Outcome(RunEnd.CRASH, None, "the evaluator wrote no result", "", 0.01)
        return outcome_of(0, fake_result(score(source), spec.fingerprint), "", "", 0.01, spec.fingerprint)

    def close(self) -> None:
        pass


def _two_workers(ws: Workspace, end: str = "ok") -> tuple[Scheduler, Away]:
    loop = make_loop(ws, FakeExecutor(score), baseline_runs=2)
    away = Away(end=end)
    return Scheduler(loop, make_workers(loop, devices("0,1", None, cores=2), lambda _: away), confirm_runs=0), away


def _two_at_once(workspace, away):
    """A gate for two workers' runs: the run of LR 0.2 takes the workspace `away` once both train, and the other
    (the betas' edit) ends only after that."""
    started: list[str] = []

    def gate(source: str) -> None:
        started.append(source)
        wait_until(lambda: len(started) >= 2)
        if constant(source, "LR") == 0.2:
            away()
        else:
            wait_until(lambda: not os.path.lexists(workspace.root / "train.py"))

    return gate


@pytest.mark.slow  # over half a second with its setup
@pytest.mark.parametrize("end", ["ok", "crash", "error"])
def test_a_workspace_moved_while_several_workers_train_stops_the_loop_and_resumes_in_the_new_place(
    workspace, tmp_path, end
) -> None:
    """`mv ws ws2` while two workers train: the driver learnt of it only at the agent's next turn (if any), and
    meanwhile recorded the runs' ends (a crash, where a run found its folder gone) at the old path. It stops at the
    first run's end now, however the run ended, writing nothing there; the two experiments stay in flight in the
    ledger, in its new place, and the next start there trains them again and judges them."""
    moved = tmp_path / "moved"
    sched, away = _two_workers(workspace, end)
    sched.run(None)  # the baseline
    away.gate = _two_at_once(workspace, lambda: os.rename(workspace.root, moved))
    with pytest.raises(WorkspaceMoved, match="moved or deleted while the loop ran"):
        sched.run(ScriptedAgent([set_lr(0.2), betas]), max_experiments=2)
    remade = [name for name in MADE_BY_THE_SCHEDULER if os.path.lexists(workspace.root / name)]
    assert not remade, f"made again at the old path: {remade}"
    rows = Ledger(moved).all()
    in_flight = [(2, Status.RUNNING, 0, []), (3, Status.RUNNING, 0, [])]
    assert [(e.id, e.status, e.attempts, e.run_values) for e in rows[1:]] == in_flight

    again, _ = _two_workers(Workspace(moved))  # `autoresearch run` in the new place
    again.run(None)
    rows = again.loop.ledger.all()
    assert all(r.status.final for r in rows), rows
    assert [r.description for r in rows[1:3]] == ["LR 0.2", "Adam betas 0.8, 0.9"]
    assert all(len(r.run_values) == 1 for r in rows[1:3])
    assert len((moved / "results.tsv").read_text().splitlines()) == 1 + len(rows)
    assert not os.path.lexists(workspace.root)


def test_a_workspace_deleted_while_several_workers_train_stops_the_loop_and_is_not_made_again(workspace) -> None:
    sched, away = _two_workers(workspace)
    sched.run(None)
    away.gate = _two_at_once(workspace, lambda: shutil.rmtree(workspace.root))
    with pytest.raises(WorkspaceMoved, match="moved or deleted while the loop ran"):
        sched.run(ScriptedAgent([set_lr(0.2), betas]), max_experiments=2)
    assert not os.path.lexists(workspace.root), list(workspace.root.rglob("*"))


def test_a_submit_loop_waiting_for_submissions_stops_when_its_workspace_is_moved(workspace, tmp_path, monkeypatch):
    """The loop `submit` starts lingers, idle, for the next submission (10 minutes): moved meanwhile, it went on
    waiting on an inbox at the old path, which no `submit` in the new place reaches, holding the workspace's lock
    there (a `submit` saw a loop running and queued with it in vain). It stops at its next poll now."""
    from autoresearch.loop import scheduler as scheduling
    from autoresearch.loop.parallel import run_workers

    moved, polls = tmp_path / "moved", []

    class MovedWhileIdle(RealClock):
        def sleep(self, seconds: float) -> None:
            polls.append(seconds)
            assert len(polls) < 20, "still waiting for submissions in a workspace moved away"
            if not moved.exists():
                os.rename(workspace.root, moved)

    monkeypatch.setattr(scheduling, "RealClock", MovedWhileIdle)
    loop = make_loop(workspace, FakeExecutor(score), baseline_runs=2)
    with pytest.raises(WorkspaceMoved):
        run_workers(loop, None, devices("0,1", None, cores=2), linger=600, executor_for=lambda _: Away())
    assert len(polls) == 1 and not os.path.lexists(workspace.root)
    baseline, *_ = Ledger(moved).all()
    assert baseline.status == Status.KEEP and len(baseline.run_values) == 2


@pytest.mark.slow  # over half a second
def test_run_with_workers_whose_workspace_is_moved_stops_saying_so_and_resumes_in_the_new_place(
    workspace, tmp_path, monkeypatch, capsys
) -> None:
    """`autoresearch run --workers 2` (or `submit`'s loop), its workspace moved while the baseline's seeds train:
    exit 2 with the error and hint, no traceback, nothing written at the old path (no report, no results.tsv, no
    worktrees); `run` in the new place trains the baseline there."""
    from autoresearch.cli import main
    from autoresearch.loop import executor as executors
    from autoresearch.loop import workers

    moved = tmp_path / "moved"

    def away(source: str) -> float:
        if not moved.exists():
            os.rename(workspace.root, moved)
        return score(source)

    class Local(FakeExecutor):  # each worker's LocalExecutor, as the CLI makes them
        def __init__(self, env=None):
            super().__init__(away)
            self.device_env = env

        def close(self, wait=None) -> None:
            pass

    monkeypatch.setattr(executors, "LocalExecutor", Local)
    monkeypatch.setattr(workers, "LocalExecutor", Local)
    args = ["run", "--agent", "queue", "--workers", "2", "--baseline-runs", "2", "--plain", "--workspace"]
    assert main([*args, str(workspace.root)]) == 2
    err = capsys.readouterr().err
    assert "moved or deleted while the loop ran" in err and "Traceback" not in err, err
    # what resumes a loop `submit` started (`run` would start the tune agent on one worker)
    said = "hint: the next `autoresearch submit --workers 2 --baseline-runs 2` (or `run --agent queue --workers 2"
    assert f"{said} --baseline-runs 2`) in its new" in err
    # (the fake executor writes its result file under the old path's runs folder: only what the loop made counts)
    made = (*MADE_BY_THE_SCHEDULER, "report.md", "progress.png")
    remade = [name for name in made if os.path.lexists(workspace.root / name)]
    assert not remade, f"made again at the old path: {remade}"
    assert main([*args, str(moved)]) == 0
    baseline, *_ = Ledger(moved).all()
    assert baseline.status == Status.KEEP and len(baseline.run_values) == 2, baseline
    assert (moved / "report.md").exists() and not os.path.lexists(workspace.root / ".git")


@pytest.mark.slow  # over half a second
def test_wait_whose_workspace_is_moved_says_so_and_makes_no_ledger_at_the_old_path(
    workspace, tmp_path, monkeypatch, capsys
) -> None:
    """`wait` opened the ledger at its path at every poll: moved meanwhile, that made the folder and an empty ledger
    there, and said "no experiment 2 in the ledger". It says the workspace was moved (its loop stops too)."""
    from autoresearch.cli import main
    from autoresearch.loop import waiting

    moved = tmp_path / "moved"
    sched, _ = _two_workers(workspace)
    sched.run(None)
    inbox = Inbox(workspace.state)
    inbox.put("LR 0.2", with_constants(workspace.read_train_py(), LR=0.2), workspace.git.head())
    assert [e.id for e in inbox.take(sched.loop)] == [2]  # queued with the loop, which is then moved with it

    def running(is_locked, state):
        def alive() -> bool:
            if not moved.exists():
                os.rename(workspace.root, moved)
            return True

        return alive

    monkeypatch.setattr(waiting, "loop_running", running)
    assert main(["wait", "2", "--workspace", str(workspace.root)]) == 2
    err = capsys.readouterr().err
    assert "moved or deleted while the loop ran" in err and "Traceback" not in err, err
    assert "hint: the next `autoresearch submit` (or `run --agent queue`), then `wait`, in its new place" in err
    assert not os.path.lexists(workspace.root)
