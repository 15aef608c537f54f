"""Red team (helper 138) of `run`'s end when every ask failed (`Asking.none_proposed`); each test failed before its fix.

- A run that resumed an experiment a killed loop left in flight, trained and judged it, then found the agent failing
  every ask, ended with "none of the 1 asks ... gave a proposal: nothing was tried" and exit 2: a night's work (here
  a keep) taken for none, and a script's `run ... && report` skipped its report.
"""

from __future__ import annotations

import argparse
import errno

import pytest
from loop_support import FakeExecutor, ScriptedAgent, constant, make_loop, set_lr
from test_loop import score

from autoresearch.agents.base import ProposalError
from autoresearch.loop.ledger import Ledger
from autoresearch.vocabulary import Status
from autoresearch.workspace.disk import DiskFullError


def unreachable(ctx):
    raise ProposalError("could not reach OpenAI API at http://127.0.0.1:9/v1/")


@pytest.mark.slow  # a second: two loops on the fake executor
def test_a_run_that_resumed_and_judged_an_experiment_is_no_night_without_work(workspace) -> None:
    from autoresearch.cli.commands import drive
    from autoresearch.loop.workers import devices

    class FillsUp(FakeExecutor):  # the first loop dies with exp 2 in flight, as a killed one does
        def run(self, spec):
            if constant(workspace.read_train_py(), "LR") == 0.2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().run(spec)

    first = make_loop(workspace, FillsUp(score))
    first.baseline()
    with pytest.raises(DiskFullError):
        first.step(ScriptedAgent([set_lr(0.2)]))
    assert Ledger(workspace.root).get(2).status == Status.RUNNING
    args = argparse.Namespace(ray=None, gpus=None, workers=None, max_experiments=1, hours=None, linger=0.0)
    drive(make_loop(workspace, FakeExecutor(score)), ScriptedAgent([unreachable]), devices(None, None), args)
    rows = Ledger(workspace.root).all()
    assert rows[1].id == 2 and rows[1].status == Status.KEEP and rows[-1].status == Status.CRASH
