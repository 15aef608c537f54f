"""The ledger reads its table again only when it changed, and never hands out stale or shared rows."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from autoresearch.loop import ledger as ledger_module
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.ledger import Ledger, LedgerError
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


class Interleaved:
    """The loop's connection, with another process's commit slipped in before its statement number `at` (or the first
    after it outside a transaction, when another connection can commit): a process writing the ledger in a loop (an
    agent's shell beside `submit`'s loop, what an unconfined run left running) may hit any of these moments."""

    def __init__(self, db: sqlite3.Connection, path: Path, at: int, sql: str) -> None:
        self.db, self.path, self.at, self.sql, self.count, self.done = db, path, at, sql, 0, False

    def execute(self, sql: str, *args):
        if not self.done and self.count >= self.at and not self.db.in_transaction:
            self.done = True
            with sqlite3.connect(self.path) as db:
                db.execute(self.sql)
        self.count += 1
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.db, name)


def test_a_row_another_process_writes_around_the_loops_own_write_is_still_found(tmp_path: Path) -> None:
    """BROKE, fixed: a write that read back its one row (4cd690e) checked the file's data_version, then read the row
    and took the data_version again as the cache's: a commit between the two was cached as the loop's, never checked
    against its seal, and sealed by the loop's next write of the row (a discard kept, at 0.5). A commit between the
    check before a write and its BEGIN (older) was sealed by that write. Any moment between the loop's statements."""
    forged = "UPDATE experiments SET val_bpb = 0.5, status = 'keep' WHERE id = 2"  # its seal not forged
    moments = None
    at = 0
    while moments is None or at < moments:
        ledger = Ledger(tmp_path / (str(at) if moments is not None else "count"))
        ledger.verify()
        for exp_id in range(1, 4):
            ledger.insert(row(exp_id))
        ledger.all()
        ledger._db = Interleaved(ledger._db, ledger.db_path, at if moments is not None else 10**9, forged)
        with pytest.raises(LedgerError, match="changed 2") if moments is not None else contextlib.nullcontext():
            # e.g. right after the loop's COMMIT, before it read its row back: cached as the loop's, never checked;
            # right before its BEGIN, after it checked: sealed by the loop's own write of that row.
            ledger.update(2, val_bpb=1.5, status=Status.DISCARD)
            ledger.all()
            ledger.all()
        if moments is None:
            moments = ledger._db.count  # a first pass counts the statements, between which the write can fall
        else:
            assert ledger._db.done
            at += 1


def test_a_row_another_process_writes_after_a_step_was_put_back_is_still_found(tmp_path: Path) -> None:
    """BROKE, fixed: putting a step back dropped the cached rows, and a read with none cached checked no seal."""
    ledger = Ledger(tmp_path)
    ledger.verify()
    for exp_id in range(1, 4):
        ledger.insert(row(exp_id))
    before = ledger.state()
    with sqlite3.connect(ledger.db_path) as db:  # during the step: put back
        db.execute("UPDATE experiments SET val_bpb = 0.5 WHERE id = 2")
    assert ledger.put_back(before, tmp_path / "quarantine") == "changed the ledger"
    with sqlite3.connect(ledger.db_path) as db:  # after it, by what the step left running
        db.execute("UPDATE experiments SET val_bpb = 0.5 WHERE id = 2")
    with pytest.raises(LedgerError, match="changed 2"):
        ledger.all()


def test_a_row_another_process_wrote_before_a_step_is_not_sealed_by_putting_the_step_back(tmp_path: Path) -> None:
    """BROKE, fixed: the rows a step must not change were taken as they were, unchecked; a step that changed the
    ledger had them all put back and sealed again, a forgery from before it too."""
    ledger = Ledger(tmp_path)
    ledger.verify()
    for exp_id in range(1, 4):
        ledger.insert(row(exp_id))
    ledger.all()
    with sqlite3.connect(ledger.db_path) as db:  # before the step, its seal not forged
        db.execute("UPDATE experiments SET val_bpb = 0.5, status = 'keep' WHERE id = 2")
    with contextlib.suppress(LedgerError):  # found as the step starts, or at the latest at the next read
        before = ledger.state()
        with sqlite3.connect(ledger.db_path) as db:  # the step changes something: all the rows are sealed again
            db.execute("UPDATE experiments SET reason = 'x' WHERE id = 3")
        ledger.put_back(before, tmp_path / "quarantine")
        ledger.all()
    with pytest.raises(LedgerError, match="changed 2"):
        Ledger(tmp_path).verify()


@pytest.mark.parametrize("put", [os.mkdir, os.mkfifo], ids=["folder", "fifo"])
def test_a_results_tsv_that_is_no_file_is_an_error_saying_to_move_it_away(tmp_path: Path, put) -> None:
    """BROKE, fixed: with the ledger lost, opening it read results.tsv to see whether experiments were run: a folder
    there was an IsADirectoryError traceback (`status`, `show`, `rebuild-ledger`), and a FIFO a wait for ever."""
    put(tmp_path / "results.tsv")
    raised: list[BaseException] = []

    def open_it() -> None:
        try:
            Ledger(tmp_path)
        except BaseException as exc:
            raised.append(exc)

    opening = threading.Thread(target=open_it, daemon=True)  # a read of the FIFO would never end
    opening.start()
    opening.join(30)
    assert not opening.is_alive(), "it waits on the FIFO"
    assert len(raised) == 1 and isinstance(raised[0], LedgerError), raised
    assert "cannot read" in str(raised[0]) and "mv results.tsv" in str(raised[0])
    assert (tmp_path / "results.tsv").exists()  # left for the person to look at


def test_a_results_tsv_of_bytes_that_are_no_utf8_still_says_experiments_were_run(tmp_path: Path) -> None:
    """BROKE, fixed: it was a UnicodeDecodeError traceback; rebuild-ledger reads such lines and skips them."""
    (tmp_path / "results.tsv").write_bytes(b"commit\tval_bpb\n\xff\xfe\t1.0\n")
    with pytest.raises(LedgerError, match="missing or empty"):
        Ledger(tmp_path)


def test_writing_results_tsv_over_a_folder_is_an_error_saying_to_move_it_away(tmp_path: Path) -> None:
    """BROKE, fixed: the loop's rewrite of results.tsv after a verdict was an IsADirectoryError traceback."""
    ledger = Ledger(tmp_path)
    ledger.insert(row(1))
    (tmp_path / "results.tsv").mkdir()
    with pytest.raises(LedgerError, match=r"cannot write .*results\.tsv: a folder is in its place") as err:
        ledger.write_tsv()
    assert "mv results.tsv" in str(err.value)
