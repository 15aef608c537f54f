"""A long night leaves no more behind than it must: old runs' logs are cut, git's loose objects and refs packed."""

from __future__ import annotations

import pytest
from loop_support import FakeExecutor, ScriptedAgent, constant, make_loop, set_lr, with_constants

from autoresearch.loop import run_logs
from autoresearch.loop.scheduler import Scheduler
from autoresearch.loop.trying import try_working_tree
from autoresearch.loop.workers import close_workers, devices, make_workers
from autoresearch.vocabulary import Status
from autoresearch.workspace import git as git_module

KIB = 1 << 10
CHATTY = b"step 0.1234\n" * (64 * KIB // 12)  # what a chatty run prints: 64 KiB


class ChattyExecutor(FakeExecutor):
    """A fake executor whose runs print 64 KiB each."""

    def run(self, spec):
        outcome = super().run(spec)
        (spec.run_dir / "log.txt").write_bytes(CHATTY)
        return outcome


@pytest.mark.slow
def test_the_loop_cuts_old_discarded_runs_logs_after_each_verdict(workspace, monkeypatch) -> None:
    monkeypatch.setattr(run_logs, "MAX_BYTES", 400 * KIB)
    monkeypatch.setattr(run_logs, "NEWEST_WHOLE", 1)
    monkeypatch.setattr(run_logs, "TAIL", 4 * KIB)
    loop = make_loop(workspace, ChattyExecutor(lambda source: 3.0 + constant(source, "LR")))
    loop.baseline()  # three runs, kept
    edits = [set_lr(v) for v in (0.3, 0.4, 0.5, 0.6)]
    agent = ScriptedAgent(list(edits))
    for _ in edits:
        assert loop.step(agent).status == Status.DISCARD
    runs = workspace.state / "runs"
    sizes = {path.parent.name: path.stat().st_size for path in runs.glob("*/log.txt")}
    assert sum(sizes.values()) <= 400 * KIB
    assert all(sizes[f"1-{run}"] == len(CHATTY) for run in range(3)) and sizes["5-0"] == len(CHATTY)
    assert sizes["2-0"] < 5 * KIB


@pytest.mark.slow
def test_the_loop_packs_gits_objects_after_a_verdict_and_the_next_watch_keeps_the_pack(workspace, monkeypatch) -> None:
    monkeypatch.setattr(git_module, "LOOSE_OBJECTS_MAX", 1)  # pack after every verdict
    monkeypatch.setattr(git_module, "LOOSE_REFS_MAX", 1)
    loop = make_loop(workspace, FakeExecutor(lambda source: 3.0 + constant(source, "LR")))
    loop.baseline()
    edits = [set_lr(v) for v in (0.01, 0.3, 0.005, 0.4)]
    agent = ScriptedAgent(list(edits))
    done = [loop.step(agent) for _ in edits]
    assert [e.status for e in done] == [Status.KEEP, Status.DISCARD, Status.KEEP, Status.DISCARD]
    assert not [e.reason for e in done if "put back" in e.reason]  # no watch took a pack for the run's or agent's
    git = workspace.git
    assert list((git.git_dir / "objects").glob("??/*")) == [] and list(
        (git.git_dir / "objects" / "pack").glob("*.pack")
    )
    for exp in loop.ledger.all()[1:]:  # every experiment's train.py, kept or discarded, still reads from git
        assert git.show(exp.commit, "train.py") == exp.source
    assert git.ref("refs/autoresearch/discarded/5") == done[3].commit
    git("fsck", "--strict")


@pytest.mark.slow
def test_with_two_workers_packing_after_verdicts_loses_no_commit_and_no_watch_takes_the_pack(
    workspace, monkeypatch
) -> None:
    """The driver records verdicts while the other worker trains and between the agent's turns: a pack made then
    must not be found by an agent's turn's check and taken away, nor lose a commit a worker's worktree holds."""
    monkeypatch.setattr(git_module, "LOOSE_OBJECTS_MAX", 1)
    monkeypatch.setattr(git_module, "LOOSE_REFS_MAX", 1)
    loop = make_loop(workspace, FakeExecutor(lambda source: 3.0), baseline_runs=2)
    workers = make_workers(
        loop, devices("0,1", None, cores=2), lambda d: FakeExecutor(lambda s: 3.0 + constant(s, "LR"))
    )
    agent = ScriptedAgent([set_lr(v) for v in (0.01, 0.3, 0.005, 0.4, 0.002, 0.6)])
    try:
        Scheduler(loop, workers).run(agent, max_experiments=6)
    finally:
        close_workers(workers)
    rows = loop.ledger.all()
    assert len(rows) == 7 and all(r.status.final for r in rows)
    assert not [r.reason for r in rows if "put back" in r.reason]
    git = workspace.git
    assert list((git.git_dir / "objects" / "pack").glob("*.pack"))
    for exp in rows[1:]:
        assert git.show(exp.commit, "train.py") == exp.source
    assert git.head() == loop.best().commit
    git("fsck", "--strict")


def test_a_lock_a_killed_pack_refs_left_is_not_held_against_the_next_run(workspace, monkeypatch) -> None:
    """BROKE, fixed: `git pack-refs` after a verdict holds .git/packed-refs.lock while it writes; killed then (a coding
    agent's tool timing out kills `try`'s whole group, the OOM killer, a power cut), it leaves it. The next run's
    check found it, and an honest change by `try` was a crash: "the run changed files outside train.py". A lock that
    was there before a step is set aside after it, not held against it."""
    executor = FakeExecutor(lambda source: 3.0 + constant(source, "LR"))
    make_loop(workspace, executor).baseline()
    monkeypatch.setattr(git_module, "LOOSE_OBJECTS_MAX", 0)  # the next verdict packs
    git = workspace.git
    (git.git_dir / "packed-refs.lock").write_text(f"{git.head()} refs/heads/half-written\n")
    workspace.write_train_py(with_constants(workspace.read_train_py(), LR=0.001))
    exp = try_working_tree(make_loop(workspace, executor), "LR 0.001")
    assert exp.status == Status.KEEP, exp.reason
    assert not (git.git_dir / "packed-refs.lock").exists()  # set aside before the verdict's pack-refs
    assert "refs/heads/half-written" not in (git.git_dir / "packed-refs").read_text()
