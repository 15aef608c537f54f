"""A coding agent that drives the loop itself (`autoresearch try`, `submit`) and wants its change kept.

It works from your shell, outside any turn the loop controls: nothing it does between calls is watched as a turn
is. What these tests check is what the loop can still refuse or see through: it trains the bytes it records, and
a run its caller took out of the sandbox is not judged against a confined baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from loop_support import constant, fake_result, make_loop, with_constants

from autoresearch.loop.executor import RunSpec, outcome_of
from autoresearch.loop.ledger import Ledger, LedgerError
from autoresearch.loop.settings import LoopError
from autoresearch.loop.trying import try_working_tree
from autoresearch.vocabulary import Status


def score(source: str) -> float:
    """Best at LR = 0.2; the baseline's second seed scores 0.002 worse (its noise)."""
    return 1.0 + (constant(source, "LR") - 0.2) ** 2 + (0.002 if constant(source, "SEED") == 43 else 0.0)


@dataclass
class RacedExecutor:
    """Reads train.py as the local executor does (`spec.source_bytes()`, once its evaluator is at hand), while a
    process the agent left swaps it: `swap(source) -> source` is what the file holds when it is read, and the file
    is put back before the run ends, so the loop finds train.py as it wrote it."""

    swap: object = None
    confined: bool = True
    trained: list[str] = field(default_factory=list)

    def run(self, spec: RunSpec) -> object:
        written = spec.source.read_text()
        if self.swap is not None:
            spec.source.write_text(self.swap(written))
        source = spec.source_bytes().decode()
        spec.source.write_text(written)  # put back before the run ends
        self.trained.append(source)
        peeked = 0.0 if self.confined else 0.05  # unconfined, it trained on the validation rows it could read
        result = replace(fake_result(score(source) - peeked, spec.fingerprint), confined=self.confined)
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        result.save(spec.run_dir / "result.json")
        return outcome_of(0, result, "", "", 0.01, spec.fingerprint)

    def close(self) -> None:
        pass


def test_a_train_py_swapped_while_try_trains_it_is_not_what_is_trained(workspace):
    """BROKE, fixed: the loop wrote train.py, and the executor read the file again when the run's evaluator was at
    hand (seconds later, on a run whose fork server still imports torch). A process the agent started beside `try`
    could put a better train.py there in between and the recorded one back before the run ended: the loop checks
    train.py only at the end. The record then showed LR 0.1 kept with the score of LR 0.2. The loop now hands the
    executor the bytes it recorded."""
    executor = RacedExecutor()
    make_loop(workspace, executor).baseline()
    executor.swap = lambda written: with_constants(written, LR=0.2)  # the change the agent did not submit
    workspace.write_train_py(with_constants(workspace.read_train_py(), LR=0.1))
    exp = try_working_tree(make_loop(workspace, executor), "LR 0.1")
    assert constant(executor.trained[-1], "LR") == 0.1
    assert exp.val_bpb == pytest.approx(score(exp.source)) and constant(exp.source, "LR") == 0.1


def test_a_try_the_agent_runs_outside_the_sandbox_is_not_judged_against_a_confined_baseline(workspace):
    """BROKE, fixed: `AUTORESEARCH_SANDBOX=off autoresearch try -m ...` (the variable reaches the run from the agent's
    own shell; so does a PATH without bubblewrap) trained train.py unconfined, where it can read the validation rows
    and weights the agent trained and left anywhere, and judged it against the confined baseline: LR 0.1 with a
    score no confined run of it gets was kept; the result said `confined: false`, nobody looked. The run now stops
    as one on another setup does: the edit stays in train.py, and a confined `try` judges it."""
    executor = RacedExecutor()
    make_loop(workspace, executor).baseline()
    cheat = with_constants(workspace.read_train_py(), LR=0.1)
    executor.confined = False
    workspace.write_train_py(cheat)
    with pytest.raises(LoopError, match=r"outside the sandbox \(confined: false\)") as stopped:
        try_working_tree(make_loop(workspace, executor), "LR 0.1")
    assert "AUTORESEARCH_SANDBOX" in stopped.value.hint
    assert workspace.read_train_py() == cheat and Ledger(workspace.root).get(2).status == Status.RUNNING
    executor.confined = True  # in the sandbox again: LR 0.1 scores as it does
    exp = try_working_tree(make_loop(workspace, executor), "LR 0.1")
    assert exp.id == 2 and exp.status == Status.KEEP and exp.val_bpb == pytest.approx(score(cheat))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("forge", "named"),
    [
        ("UPDATE experiments SET val_bpb = val_bpb + 0.01 WHERE id = 1", "changed 1"),  # a worse best to beat
        ("UPDATE experiments SET runs = '[1.0225, 1.0225, 1.0225]' WHERE id = 1", "changed 1"),  # a smaller noise
        ("UPDATE experiments SET status = 'keep', val_bpb = 1.0 WHERE id = 2", "changed 2"),  # a discard made the best
        ("DELETE FROM experiments WHERE id = 2", "deleted 2"),  # a discard hidden
    ],
)
def test_a_ledger_the_agent_edits_between_two_trys_is_refused(workspace, forge, named):
    """BROKE, fixed: the ledger is the loop's memory and the agent's to write between two `try` calls (sqlite3 from
    its shell). A best made worse, or a noise made smaller, let the next `try` keep a change that beats neither; a
    discard rewritten as kept became the best. The loop read the rows as it found them. Each row is now sealed as
    the loop writes it, and a `try` over rows it did not write stops, naming them, before anything is trained."""
    import sqlite3

    executor = RacedExecutor()
    make_loop(workspace, executor).baseline()
    workspace.write_train_py(with_constants(workspace.read_train_py(), LR=0.5))
    assert try_working_tree(make_loop(workspace, executor), "LR 0.5").status == Status.DISCARD
    with sqlite3.connect(workspace.state / "ledger.sqlite") as db:
        db.execute(forge)
    trained = len(executor.trained)
    workspace.write_train_py(with_constants(workspace.read_train_py(), LR=0.045))  # not better than the real best
    with pytest.raises(LedgerError, match=f"written by another hand.*experiments {named}") as refused:
        try_working_tree(make_loop(workspace, executor), "LR 0.045")
    assert "rebuild-ledger" in refused.value.hint and len(executor.trained) == trained


def test_a_ledger_row_the_agent_edits_while_the_loop_serves_submissions_is_refused(workspace):
    """`run` serving `submit`s reads the ledger for every decision while the agent works beside it. A row written by
    another process since the loop last read the file is checked against its seal before the loop uses it."""
    import sqlite3

    loop = make_loop(workspace, RacedExecutor())
    loop.baseline()
    assert loop.best().id == 1
    with sqlite3.connect(workspace.state / "ledger.sqlite") as db:
        db.execute("UPDATE experiments SET val_bpb = 2.0 WHERE id = 1")
    with pytest.raises(LedgerError, match=r"written by another hand.*experiments changed 1"):
        loop.best()
    with pytest.raises(LedgerError, match="written by another hand"):  # nor does its next write seal the forgery
        loop.ledger.update(1, reason="a reason")


def test_a_trigger_the_agent_plants_in_the_ledger_does_not_make_the_loop_seal_its_forgery(workspace):
    """BROKE, fixed: the seals cover the rows, not the schema. A trigger planted between two `try` calls (sqlite3
    from the agent's shell, or a command agent's turn: the loop puts the rows back, not the schema) leaves every row
    and seal as it was, so the check passed; it fired inside the loop's own next write, whose seal then covered what
    the trigger made of the row: a discard became kept, and the best. The loop now refuses a ledger whose schema
    holds anything it did not make."""
    import sqlite3

    executor = RacedExecutor()
    make_loop(workspace, executor).baseline()
    with sqlite3.connect(workspace.state / "ledger.sqlite") as db:
        db.execute(
            "CREATE TRIGGER forge AFTER UPDATE OF status ON experiments WHEN new.status = 'discard' BEGIN "
            "UPDATE experiments SET status = 'keep', val_bpb = 0.5 WHERE id = new.id; END"
        )
    workspace.write_train_py(with_constants(workspace.read_train_py(), LR=0.5))  # worse than the baseline
    with pytest.raises(LedgerError, match="trigger forge"):
        try_working_tree(make_loop(workspace, executor), "LR 0.5")
    assert all(exp.status != Status.KEEP or exp.id == 1 for exp in Ledger(workspace.root, check_history=False).all())


def test_a_trigger_planted_during_an_agents_turn_is_dropped_when_the_ledger_is_put_back(workspace, tmp_path):
    """BROKE, fixed: after a turn the loop put the ledger's rows and seals back as they were, and left the schema
    as the agent made it: a trigger stayed, to fire in the loop's next write."""
    import sqlite3

    make_loop(workspace, RacedExecutor()).baseline()
    ledger = Ledger(workspace.root)
    before = ledger.state()
    with sqlite3.connect(workspace.state / "ledger.sqlite") as db:
        db.execute('CREATE TRIGGER "a""b" AFTER UPDATE ON experiments BEGIN UPDATE experiments SET val_bpb = 0.5; END')
    assert ledger.put_back(before, tmp_path / "quarantine") == "changed the ledger's schema"
    ledger.update(1, reason="a reason")
    assert ledger.get(1).val_bpb != 0.5
    ledger.verify()


def test_a_ray_node_training_from_its_own_copy_trains_the_bytes_the_loop_sent(tmp_path, monkeypatch):
    """BROKE, fixed: a node that does not see the workspace wrote the request's train.py into its work folder and
    then ran a RunSpec without the bytes, so its evaluator read the file again later: what lay there then (the folder
    is under the cache root, where the folder can be made, or a file swapped, by whoever shares the node) was
    trained. The node now hands its executor the bytes it was sent."""
    from autoresearch.loop import ray_executor
    from autoresearch.loop.executor import RunSpec

    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    trained = []

    class Swapped:
        def run(self, spec: RunSpec):
            spec.source.write_text("print('swapped in')\n")  # what another hand left there meanwhile
            trained.append(spec.source_bytes())
            return outcome_of(1, None, "", "", 0.0, spec.fingerprint)

    monkeypatch.setattr(ray_executor, "_executor", Swapped)
    monkeypatch.setattr(ray_executor, "Apparatus", lambda **fields: type("A", (), {"save": lambda self, p: None})())
    spec = RunSpec(tmp_path / "ws", tmp_path / "ws" / ".autoresearch" / "runs" / "1-0", 60.0, "fp")
    request = ray_executor.Request("v", "c", "t", b'{"data_dir": "/nowhere"}', b"print('sent')\n", "{}", None)
    work = tmp_path / "work"
    work.mkdir()
    ray_executor._train_apart(spec, request, tmp_path / "data", "node", work)
    assert trained == [b"print('sent')\n"]
