"""The ledger reads its table again only when it changed, and never hands out stale or shared rows."""

from __future__ import annotations

from pathlib import Path

from autoresearch.loop.ledger import Experiment, Ledger
from autoresearch.vocabulary import Status


def row(exp_id: int) -> Experiment:
    return Experiment(exp_id, "experiment", Status.RUNNING, f"exp {exp_id}", "abc")


def test_all_rereads_only_after_a_write_of_this_process_or_another(tmp_path: Path, monkeypatch) -> None:
    ledger, other = Ledger(tmp_path), Ledger(tmp_path)  # `other`: `status`, `submit` or a second driver
    reads = []
    full_read = ledger._rows
    monkeypatch.setattr(ledger, "_rows", lambda sql, *args: reads.append(sql) or full_read(sql, *args))
    ledger.insert(row(1))
    assert [e.id for e in ledger.all()] == [1] and [e.id for e in ledger.all()] == [1]
    assert len(reads) == 1  # the second call served what the first read
    ledger.update(1, status=Status.KEEP)
    assert ledger.all()[0].status == Status.KEEP  # its own write: read again
    other.insert(row(2))
    other.update(1, reason="changed elsewhere")
    assert [(e.id, e.reason) for e in ledger.all()] == [(1, "changed elsewhere"), (2, "")]  # another's commit
    assert len(reads) == 3


def test_a_row_changed_by_one_caller_is_not_what_the_next_gets(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.insert(row(1))
    ledger.all()[0].status = Status.CRASH  # the loop sets fields on rows it holds
    assert ledger.all()[0].status == Status.RUNNING
