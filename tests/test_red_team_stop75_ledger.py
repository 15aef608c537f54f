"""Red team (helper 133) of the read-only ledger (`Ledger(reading=True)`, which `status`, `show` and `diff` use): it
opened SQLite's immutable mode, which fails to seal an old ledger and drops the rows still in the write-ahead log; a
copy in a temporary folder is read now. Each test but the guards failed on the immutable mode."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
from loop_support import FakeExecutor, constant, make_loop, on_a_read_only_mount


def _executor() -> FakeExecutor:
    return FakeExecutor(lambda source: 3.0 + constant(source, "LR"))


def test_status_of_a_ledger_from_before_the_seals_on_a_read_only_mount_is_no_traceback(
    workspace, subprocess_env
) -> None:
    """verify() seals a ledger from before the seals as it is (BEGIN IMMEDIATE, DROP/CREATE seals): through the
    immutable read-only connection that write fails with sqlite3.OperationalError "attempt to write a readonly
    database", which disk_full_is_an_error re-raises. Seen: `status` on an archived workspace of an older version
    ends with a traceback (before 1a479f1 it said the ledger could not be read, a LedgerError, no traceback)."""
    loop = make_loop(workspace, _executor())
    loop.baseline()
    loop.ledger.close()
    db = sqlite3.connect(workspace.root / ".autoresearch" / "ledger.sqlite")
    db.execute("DROP TABLE seals")  # as a version from before the seals left it
    db.commit()
    db.close()
    root = str(workspace.root)
    cli = f"{sys.executable} -m autoresearch"
    said = on_a_read_only_mount(root, f"{cli} status --workspace {root}; echo status=$?", subprocess_env)
    assert "Traceback" not in said, said
    assert "status=0" in said, said


@pytest.mark.slow  # over half a second
def test_status_on_a_read_only_mount_does_not_drop_rows_held_in_the_write_ahead_log(workspace, subprocess_env) -> None:
    """immutable=1 tells SQLite the file cannot change and has no journal: it reads the main file alone and ignores
    ledger.sqlite-wal. Where the log holds committed rows (the loop killed, its -wal kept) and the -shm is not
    there (SQLite can rebuild it; a copy or backup that leaves it out), the normal open on the read-only folder
    fails ("unable to open database file"), the fallback opens immutable and the last experiments are gone:
    `status` shows an older night or, with results.tsv listing them, claims the ledger "lost rows" and tells the
    user to rebuild it. A normal open of a copy in a writable temp folder reads them all."""
    loop = make_loop(workspace, _executor())
    loop.baseline()
    loop.ledger.close()
    ledger = workspace.root / ".autoresearch" / "ledger.sqlite"
    # A loop that wrote its last experiment into the log and was killed before any checkpoint:
    code = (
        "import os, sys, sqlite3; from pathlib import Path; sys.path[:0] = sys.argv[2:]\n"
        "from loop_support import FakeExecutor, ScriptedAgent, constant, make_loop, set_lr\n"
        "from autoresearch.workspace.workspace import Workspace\n"
        "real = sqlite3.connect\n"
        "def connect(*a, **k):\n"
        "    db = real(*a, **k); db.execute('PRAGMA wal_autocheckpoint=0'); return db\n"
        "sqlite3.connect = connect\n"
        "loop = make_loop(Workspace(Path(sys.argv[1])), FakeExecutor(lambda s: 3.0 + constant(s, 'LR')))\n"
        "loop.run(ScriptedAgent([set_lr(0.01)]), 1)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    tests = os.path.dirname(__file__)
    subprocess.run([sys.executable, "-c", code, str(workspace.root), tests, *sys.path], env=subprocess_env, timeout=120)
    assert os.path.getsize(f"{ledger}-wal") > 0
    os.unlink(f"{ledger}-shm")
    shutil.copy(ledger, workspace.root.parent / "copy.sqlite")  # what the files hold, read where one can write
    shutil.copy(f"{ledger}-wal", workspace.root.parent / "copy.sqlite-wal")
    whole = sqlite3.connect(workspace.root.parent / "copy.sqlite")
    experiments = whole.execute("SELECT COUNT(*) FROM experiments").fetchone()[0]
    whole.close()
    assert experiments == 2
    root = str(workspace.root)
    cli = f"{sys.executable} -m autoresearch"
    said = on_a_read_only_mount(root, f"{cli} status --workspace {root}; echo status=$?", subprocess_env)
    assert "status=0" in said and "rebuild-ledger" not in said, said
    assert "Traceback" not in said, said


@pytest.mark.slow  # over half a second
@pytest.mark.parametrize("command", ["report", "wait 1", "show 1", "diff 1 1"])
def test_other_commands_on_a_read_only_mount_say_so_without_a_traceback(workspace, subprocess_env, command) -> None:
    """With the ledger now readable on a read-only mount (reading=True, via report's verified_rows too), the
    commands that write next to it get past the ledger and meet the read-only folder themselves. Held at 46b3bcd."""
    loop = make_loop(workspace, _executor())
    loop.baseline()
    loop.ledger.close()
    root = str(workspace.root)
    cli = f"{sys.executable} -m autoresearch"
    said = on_a_read_only_mount(root, f"cd {root} && timeout 60 {cli} {command}; echo rc=$?", subprocess_env)
    assert "Traceback" not in said, said


def test_status_of_a_damaged_ledger_on_a_read_only_mount_is_no_traceback(workspace, subprocess_env) -> None:
    """The fallback's own `sqlite3.connect(...immutable=1)` and `SELECT COUNT(*)` sit inside the `except` of the
    first open, unguarded: a ledger that is really damaged (not a database, a torn copy) on a read-only mount or in
    a folder not the user's raises sqlite3.DatabaseError "file is not a database" from there. Before 1a479f1 it was
    a LedgerError naming rebuild-ledger; now `status` ends with a traceback."""
    loop = make_loop(workspace, _executor())
    loop.baseline()
    loop.ledger.close()
    (workspace.root / ".autoresearch" / "ledger.sqlite").write_bytes(b"this is not a database, " * 400)
    root = str(workspace.root)
    cli = f"{sys.executable} -m autoresearch"
    said = on_a_read_only_mount(root, f"{cli} status --workspace {root}; echo status=$?", subprocess_env)
    assert "Traceback" not in said, said
    assert "status=2" in said or "status=1" in said, said


def test_a_ledger_one_may_not_read_in_a_folder_one_may_not_write_is_a_ledger_error(
    workspace, monkeypatch, tmp_path
) -> None:
    """A colleague's workspace whose ledger.sqlite is theirs alone (mode 600): the first open fails, the folder is not
    the user's to write, and the fallback's own open failed the same way, unguarded: sqlite3.OperationalError "unable
    to open database file" as a traceback from `status`. (As root no file is out of reach: the refusals are played.)"""
    from autoresearch.errors import LedgerError
    from autoresearch.loop import ledger

    loop = make_loop(workspace, _executor())
    loop.baseline()
    loop.ledger.close()
    real = sqlite3.connect

    def refused(path, *args, **kwargs):  # the colleague's file: SQLite cannot open it
        if str(path).startswith(str(workspace.root)):
            raise sqlite3.OperationalError("unable to open database file")
        return real(path, *args, **kwargs)

    def unreadable(source, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(source))

    monkeypatch.setattr(ledger.sqlite3, "connect", refused)
    monkeypatch.setattr(ledger, "read_only", lambda folder: True)
    monkeypatch.setattr(ledger.shutil, "copyfile", unreadable)
    copy = tmp_path / "copy"
    monkeypatch.setattr(ledger.tempfile, "mkdtemp", lambda **kwargs: copy.mkdir() or str(copy))
    with pytest.raises(LedgerError, match=r"cannot be read \(Permission denied\)"):
        ledger.Ledger(workspace.root, reading=True)
    assert not copy.exists()  # nothing left behind
