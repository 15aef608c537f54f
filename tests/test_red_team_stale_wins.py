"""Red team: a stale win whose merge onto the best is its own train.py, judged on the best with no run repeated
(Ratchet.judged_on), attacked by a submitter and by a driver killed at the wrong moment."""

from __future__ import annotations

import contextlib

import pytest
from loop_support import ScriptedAgent, constant, with_constants
from test_scheduler import BETAS, Ledger, lr_and_betas, scheduler, score, set_lr, wait_until

from autoresearch.loop.inbox import Inbox
from autoresearch.loop.ratchet import Ratchet
from autoresearch.loop.rebuild import rebuild
from autoresearch.vocabulary import Status


def test_a_train_py_measured_and_discarded_on_the_best_is_not_judged_there_again_by_naming_an_older_base(workspace):
    """BROKE, fixed: `submit` may name any kept commit as its base. S (the best's train.py plus the betas) is
    measured on the best and discarded (an unlucky draw); the same S submitted again as a change of the baseline
    trained there, was a stale win whose merge onto the best is S itself, and was judged against the best: a
    second roll of the dice that the duplicate check refuses everywhere else ('already measured on this best')."""
    draws = []

    def noisy(source: str) -> float:  # the first draw of the betas on LR 0.2 is unlucky, later ones are not
        if BETAS in source and constant(source, "LR") == 0.2:
            draws.append(source)
            return score(source) + (0.1 if len(draws) == 1 else 0.0)
        return score(source)

    sched, _ = scheduler(workspace, inbox=True, score=noisy)
    sched.run(None)  # the baseline: exp 1
    ws, inbox = workspace, Inbox(workspace.state)
    baseline = ws.git.head()
    lr = with_constants(ws.read_train_py(), LR=0.2)
    inbox.put("LR 0.2", lr, baseline)
    sched.run(None)
    best = sched.loop.best()
    assert best.id == 2 and best.status == Status.KEEP
    both = lr.replace("torch.optim.Adam(model.parameters(), lr=LR)", BETAS)
    inbox.put("betas", both, best.commit)
    sched.run(None)
    assert sched.loop.ledger.get(3).status == Status.DISCARD  # S measured on the best: not better (unlucky)
    again = inbox.put("LR 0.2 and betas", both, baseline)  # the same S, as a change of the baseline
    sched.run(None)
    answer = again.answer()  # the run above answered it
    rows = sched.loop.ledger.all()
    repeat = rows[3] if len(rows) > 3 else None
    assert "error" in answer or repeat.status != Status.KEEP, (answer, repeat.status, repeat.reason)
    assert sched.loop.best().id == 2


def test_a_driver_killed_between_judged_on_and_the_verdict_resumes_a_marginal_win_and_keeps_it_once(
    workspace, monkeypatch
):
    """judged_on moved the row onto the best, the driver dies before the verdict; run again, the marginal win on
    the best is run once more (on its new commit) and kept once, its commit's parent the best's."""

    def small(source: str) -> float:  # the betas gain 0.004 on LR 0.2: a marginal win (margin 0.0028)
        return score(source) + (0.046 if BETAS in source else 0.0)

    box: list = []

    def gate(source: str) -> None:
        if BETAS in source:
            wait_until(lambda: Ledger(box[0].loop.ws.root).get(2).status == Status.KEEP)

    original = Ratchet.conclude
    killed = []

    def dies(self, exp, outcome):
        if "judged against exp 2" in exp.reason and not killed:
            killed.append(exp.id)
            raise KeyboardInterrupt  # the driver dies here: the row is on the best, no verdict yet
        return original(self, exp, outcome)

    monkeypatch.setattr(Ratchet, "conclude", dies)
    sched, _ = scheduler(workspace, gate=gate, score=small)
    box.append(sched)
    with contextlib.suppress(KeyboardInterrupt):
        sched.run(ScriptedAgent([set_lr(0.2), lr_and_betas]), max_experiments=2)
    assert killed == [3]
    moved = sched.loop.ledger.get(3)
    assert moved.status == Status.RUNNING and moved.parent == sched.loop.ledger.get(2).commit

    again, fakes = scheduler(workspace, score=small)
    again.run(None)
    rows = again.loop.ledger.all()
    assert [r.status for r in rows] == [Status.KEEP, Status.KEEP, Status.KEEP], [r.reason for r in rows]
    exp = rows[2]
    assert len(exp.run_values) == 2 and exp.run_indices == [0, 1]
    assert [constant(s, "SEED") for f in fakes.values() for _, _, s in f.runs] == [43]
    git = again.loop.git
    assert git.head() == exp.commit and git.parent(exp.commit) == rows[1].commit
    assert git.show(exp.commit, "train.py") == exp.source and again.loop.ws.git.changed_paths() == set()
    assert exp.reason.count("judged against exp 2") == 1, exp.reason
    assert git.exp_commits() == {2: rows[1].commit, 3: exp.commit}


@pytest.mark.slow  # over half a second
def test_rebuild_ledger_after_judged_on_gives_back_its_rows_on_the_best(workspace):
    """The commits judged_on makes carry `exp N: ...`: a rebuilt ledger has the kept row on the best, and the
    discarded one's ref (a stale win judged on the best and not better there) points at its moved commit."""
    box: list = []

    def gate(source: str) -> None:
        root = box[0].loop.ws.root
        if "# a note" in source:
            wait_until(lambda: Ledger(root).get(2).status == Status.KEEP)
        elif BETAS in source:
            wait_until(lambda: Ledger(root).get(3).status.final)

    def noted(ctx):  # LR 0.2 and a comment, on the baseline: a win there, no better than LR 0.2 alone
        return "LR 0.2 and a note", with_constants(ctx.train_py, LR=0.2) + "# a note\n"

    sched, _ = scheduler(workspace, gpus="0,1,2", gate=gate)
    box.append(sched)
    sched.run(ScriptedAgent([set_lr(0.2), noted, lr_and_betas]), max_experiments=3)
    before = sched.loop.ledger.all()
    assert [r.status for r in before] == [Status.KEEP, Status.KEEP, Status.DISCARD, Status.KEEP], [
        r.reason for r in before
    ]
    git = sched.loop.git
    assert "judged against exp 2" in before[2].reason and "judged against exp 2" in before[3].reason
    assert git.ref("refs/autoresearch/discarded/3") == before[2].commit
    assert git.parent(before[2].commit) == before[1].commit == git.parent(before[3].commit)
    assert git.head() == before[3].commit
    sched.loop.ledger.close()
    rebuild(workspace.root, git)
    after = Ledger(workspace.root).all()
    assert [(r.id, r.status, r.parent, r.commit, r.source) for r in after] == [
        (r.id, r.status, r.parent, r.commit, r.source) for r in before
    ]
