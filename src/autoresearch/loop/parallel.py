"""The loop on several workers, started: whether a workspace needs it, and `run_workers`, which checks that runs
can be confined, makes a worker per device, runs the scheduler (loop/scheduler.py) and removes the worktrees of a
loop that has ended."""

from __future__ import annotations

from autoresearch.agents.base import Agent
from autoresearch.evaluator import sandbox
from autoresearch.loop.engine import LoopError, ResearchLoop
from autoresearch.loop.inbox import Inbox
from autoresearch.loop.recovery import judged_left_open, left_by_workers
from autoresearch.loop.scheduler import Scheduler
from autoresearch.loop.workers import Device, close_workers, make_workers, remove_worktrees


def needs_scheduler(loop: ResearchLoop) -> bool:
    """Whether what is in flight was left by a loop with several workers, or submitted, or such a loop died with a
    run of a judged experiment in progress (the best measured again): the one-worker loop cannot take it up."""
    return left_by_workers(loop.ledger.in_flight()) or bool(judged_left_open(loop.ledger.all()))


def run_workers(
    loop: ResearchLoop,
    agent: Agent | None,
    found: list[Device],
    max_experiments: int | None = None,
    hours: float | None = None,
    linger: float = 0.0,
    executor_for=None,
    placement: list[str] | None = None,
) -> None:
    """The loop on `found` devices (the CLI's `run` with --gpus, --workers or --ray, or with submissions);
    `executor_for(device)` makes each worker's executor (default: a LocalExecutor pinned to the device); `placement`:
    the CLI's options that gave them, recorded for a hint that starts the loop again."""
    if (why := sandbox.unavailable_reason()) is not None:
        # One worker checks the workspace around each run; several cannot, while the others' runs go on. Only
        # confinement keeps a run out of the workspace then.
        raise LoopError(
            f"several workers, or submitted experiments, need confined runs, and here they cannot be: {why}",
            hint="install bubblewrap (see the README's Confinement), or run one worker with `autoresearch run`",
        )
    loop.recover_workspace()  # before the worktrees' git commands, which an agent's config left by a kill could steer
    workers = make_workers(loop, found, executor_for)
    try:
        Scheduler(loop, workers, Inbox(loop.ws.state), linger, placement=placement).run(agent, max_experiments, hours)
    finally:
        close_workers(workers)
        if not loop.ledger.in_flight():  # a loop that has ended leaves no worktree behind
            remove_worktrees(loop.git, loop.ws.state)
