"""The ledger reads its table again only when it changed, and never hands out stale or shared rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from autoresearch.loop import ledger as ledger_module
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


def test_its_own_write_reads_back_the_row_it_wrote_not_the_whole_table(tmp_path: Path, monkeypatch) -> None:
    ledger = Ledger(tmp_path)
    ledger.verify()  # as the loop's ledger: a write first checks that nobody else wrote
    for exp_id in range(1, 6):
        ledger.insert(row(exp_id))
    ledger.all()
    reads = []
    read = ledger._rows
    monkeypatch.setattr(ledger, "_rows", lambda sql, *args: reads.append(sql) or read(sql, *args))
    ledger.update(3, status=Status.KEEP, reason="better")
    ledger.insert(row(7))
    ledger.insert(row(6))  # out of order: the rows stay in id order
    rows = ledger.all()
    assert not [sql for sql in reads if "WHERE" not in sql]  # at 5,000 rows a full read costs the driver ~0.1 s
    assert [(e.id, e.status, e.reason) for e in rows] == [(e.id, e.status, e.reason) for e in Ledger(tmp_path).all()]
    assert [e.id for e in rows] == [1, 2, 3, 4, 5, 6, 7] and rows[2].status == Status.KEEP
    Ledger(tmp_path).update(2, reason="another process")  # another's write still makes it read all again
    assert ledger.all()[1].reason == "another process"


def test_putting_back_an_untouched_ledger_digests_no_row_and_a_forged_seal_is_still_put_back(
    tmp_path: Path, monkeypatch
) -> None:
    ledger = Ledger(tmp_path)
    for exp_id in range(1, 6):
        ledger.insert(row(exp_id))
    before = ledger.state()
    digested = []
    digest = ledger_module._digest
    monkeypatch.setattr(ledger_module, "_digest", lambda r: digested.append(r[0]) or digest(r))
    assert ledger.put_back(before, tmp_path / "quarantine") is None
    assert digested == []  # every row digested at every run and agent turn: most of a second at 5,000 rows
    with sqlite3.connect(tmp_path / ".autoresearch" / "ledger.sqlite") as db:
        db.execute("UPDATE seals SET digest = 'forged' WHERE id = 2")
    assert ledger.put_back(before, tmp_path / "quarantine") == "changed the ledger's seals"
    ledger.verify()
