"""The ledger: every experiment the loop ran, in SQLite, mirrored to the reference's results.tsv.

A row is written (status `running`) before git is touched and updated when the verdict is known, so a
killed loop finds on restart exactly which experiment was in flight. `results.tsv` keeps the
reference's columns and is rewritten from the database after every verdict.

The driver asks for every row many times per experiment (the best, the noise, the agent's context, the
duplicate check, results.tsv: 11.6 times per experiment at 16 workers in bench/simulate.py). `all()` reads
the table again only when it has changed since: a write through this connection, or a commit by any other
(SQLite's `data_version`), so it is never stale, for this process or another's writes.

Each row is sealed as it is written: its digest goes into the `seals` table in the same transaction. A coding agent
that drives the loop (`try`, `submit`) works from your shell between the loop's calls, and could edit a row with
sqlite3 to make a best look worse, a noise look smaller, a discard look kept. The loop checks every row against its
seal as it starts (`verify`) and whenever another process has written the file since it last read it, and refuses
a ledger it did not write. This is a tripwire, not a proof: the seals lie in the same file, which the agent can
write too, so one that reads this code can forge them (see the README's "What is not covered").
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from autoresearch.errors import LedgerError
from autoresearch.loop import results_tsv
from autoresearch.loop.experiment import Experiment
from autoresearch.vocabulary import IN_FLIGHT, Kind, Status
from autoresearch.workspace.disk import DiskFullError, disk_full_is_an_error, sqlite_short_of_space

_COLUMNS = [f.name for f in fields(Experiment)]
_QUOTED = ", ".join(f'"{name}"' for name in _COLUMNS)


REBUILD_HINT = (
    "run `autoresearch rebuild-ledger`: it makes the ledger again from results.tsv, git and the runs' results "
    "(the present file is kept beside it)"
)


# What `Ledger.state` records and `Ledger.put_back` restores: the rows, the file's (device, inode), the seals.
LedgerState = tuple[list[tuple], tuple[int, int] | None, dict[int, str]]


def ledger_path(workspace: Path) -> Path:
    """Where the workspace's ledger is (opening a Ledger there makes an empty one where there is none)."""
    return workspace / ".autoresearch" / "ledger.sqlite"


def has_history(workspace: Path) -> bool:
    """Whether the workspace ran experiments: results.tsv lists one, a run's folder is left (results.tsv deleted
    with the ledger), or git holds one (`git clean -xfd` and `git stash -a` take all of .autoresearch/ and
    results.tsv). Without its ledger, a start from experiment 1 would reuse their ids."""
    if len(results_tsv.read(workspace).splitlines()) > 1:
        return True
    runs = workspace / ".autoresearch" / "runs"
    if runs.is_dir() and any(re.fullmatch(r"\d+-\d+", path.name) for path in runs.iterdir()):
        return True
    return git_holds_experiments(workspace)


def git_holds_experiments(workspace: Path) -> bool:
    """Whether the workspace's git holds the loop's experiments: a discarded one's ref, or a kept one's `exp N: ...`
    commit on the branch (BROKE, fixed: after `git clean -xfd`, `status` said "no experiments yet" and `run` trained
    a new baseline over them, then stopped on an id a discarded ref already had)."""
    from autoresearch.workspace.git import Git  # git.py is below the ledger: imported only where it is needed

    if not (workspace / ".git").exists():
        return False
    git = Git(workspace)
    if git("for-each-ref", "--count=1", "--format=%(refname)", "refs/autoresearch/discarded/", check=False).strip():
        return True
    return bool(git("log", "--first-parent", "-1", "--format=%H", "--grep=^exp [0-9][0-9]*: ", "HEAD", check=False))


class Ledger:
    def __init__(self, workspace: Path, check_history: bool = True, path: Path | None = None, reading: bool = False):
        """Open the workspace's ledger (the file at `path` instead: `rebuild-ledger` writes a new one beside it). A
        missing or empty ledger in a workspace whose results.tsv lists experiments is an error (`check_history`),
        never a silent fresh start that would reuse their ids. DiskFullError where it cannot be opened for lack of
        space: the file is fine, and rebuilding it would lose what only it holds. `reading`: for a command that only
        reads it, which works on a read-only mount too (an archive, a colleague's share)."""
        self.workspace = workspace
        self.db_path = path or ledger_path(workspace)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.db_path.exists()
        self._writes = 0  # writes through this object: each makes the cached rows stale
        self._verifying = False  # set by verify(): rows another process wrote are checked against their seals
        self._trusted: int | None = None  # the data_version at which the file was last checked (verify)
        self._cached: tuple[tuple[int, int], list[Experiment]] | None = None  # (version, rows) of the last read
        self._copy: Path | None = None  # a read-only folder's ledger, copied where SQLite may write (`reading`)
        try:
            self._open()
            count = self._db.execute("SELECT COUNT(*) FROM experiments").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if sqlite_short_of_space(exc, self.db_path.parent):
                raise DiskFullError("opening the ledger") from None
            if read_only(self.db_path.parent):  # SQLite cannot open its write-ahead log there: the file is fine
                if not (reading and existed):
                    raise LedgerError(
                        f"the workspace's state {self.db_path.parent} is read-only ({exc})",
                        hint="autoresearch writes there: copy the workspace somewhere you can write (`cp -a`) and "
                        "run it there; `status`, `show`, `diff` read it where it is",
                    ) from None
                count = self._open_copy()
            else:
                raise LedgerError(f"the ledger {self.db_path} cannot be read ({exc})", hint=REBUILD_HINT) from None
        if check_history and count == 0 and has_history(workspace):
            self._db.close()
            if not existed:  # leave no empty ledger behind
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
            raise _lost(self.db_path)

    def verify(self) -> None:
        """Refuse (LedgerError) a ledger whose rows are not the ones this program wrote: a row changed, added or
        deleted by another hand since (an agent with sqlite3, say). A ledger from before the seals is sealed as it
        is. From now on, rows another process writes are checked as they are read (`all`)."""
        self._verifying = True
        with disk_full_is_an_error("checking the ledger"):  # a ledger from before the seals is written
            self._check_seals()
        self._check_tsv()

    def _check_tsv(self) -> None:
        """Refuse (LedgerError) a ledger with fewer rows than results.tsv has lines: a line is written after its row,
        so rows were lost (a rebuild cut short by a full disk, before rebuilds were all or nothing), and the loop's
        next write of results.tsv would drop those lines for good (red team: `run` cut it from 7 lines to 2, then
        said to reset the branch off kept experiments)."""
        try:
            listed = results_tsv.listed(self.workspace)
        except LedgerError:  # no file to read: writing it says so
            return
        count = self._db.execute("SELECT COUNT(*) FROM experiments").fetchone()[0]
        if listed > count:
            raise LedgerError(
                f"the ledger {self.db_path} holds {count} experiments, but results.tsv lists {listed}: it lost rows",
                hint=REBUILD_HINT,
            )

    def _check_seals(self) -> None:
        self._writes += 1  # read again, whatever was cached
        self._db.execute("BEGIN")  # the rows and their seals as of one commit: `status` reads while the loop writes
        try:
            trusted = self._data_version()  # read first: a commit during the check is checked at the next read
            foreign = self._foreign()
            rows = self._db.execute("SELECT * FROM experiments ORDER BY id").fetchall()
            seals = dict(self._db.execute("SELECT id, digest FROM seals")) if self._sealed() else None
        finally:
            self._db.execute("COMMIT")
        if foreign:
            raise LedgerError(
                f"the ledger {self.db_path} holds what the loop never makes: {', '.join(foreign)}. A trigger runs "
                "inside the loop's own writes, which would seal what it made of a row",
                hint="if a coding agent drives the loop, it edited its record: do not trust what it reported since. "
                + REBUILD_HINT.replace("run ", "To go on, run ", 1),
            )
        if seals is None:
            self._db.execute("BEGIN IMMEDIATE")
            self._reseal()
            self._db.execute("COMMIT")
            self._trusted = trusted
            return
        ids = {row[0] for row in rows}
        changed = sorted(row[0] for row in rows if seals.get(row[0]) not in (None, _digest(row)))
        added = sorted(ids - set(seals))
        deleted = sorted(set(seals) - ids)
        if changed or added or deleted:
            what = [
                f"{how} {', '.join(map(str, ids[:8]))}{' ...' if len(ids) > 8 else ''}"
                for how, ids in (("changed", changed), ("added", added), ("deleted", deleted))
                if ids
            ]
            raise LedgerError(
                f"the ledger {self.db_path} was written by another hand since the loop last wrote it: rows of "
                f"experiments {'; '.join(what)}. The loop's decisions (the best, the noise) come from these rows",
                hint="if a coding agent drives the loop, it edited its record: do not trust what it reported since. "
                + REBUILD_HINT.replace("run ", "To go on, run ", 1),
            )
        self._trusted = trusted  # found as the loop left it: checked again once another process writes

    def _foreign(self) -> list[str]:
        """What the file's schema holds that the loop did not make ("trigger NAME", "view NAME", "column NAME"...):
        the seals cover rows, not the schema, and a trigger fires inside the loop's own writes, before their seal."""
        found = [
            f"{kind} {name}"
            for kind, name in self._db.execute("SELECT type, name FROM sqlite_master")
            if (kind, name) not in (("table", "experiments"), ("table", "seals"))
            and not (kind == "index" and name.startswith("sqlite_autoindex_"))
        ]
        columns = [(row[1], row[-1]) for row in self._db.execute("PRAGMA table_xinfo(experiments)")]
        found += [f"column {name}" for name, hidden in columns if name not in _COLUMNS or hidden]
        if self._sealed():
            seals = [row[1] for row in self._db.execute("PRAGMA table_xinfo(seals)")]
            found += [] if seals == ["id", "digest"] else [f"seals columns {', '.join(seals)}"]
        return found

    def _drop_foreign(self) -> bool:
        """Drop the triggers, views and indexes the loop did not make; whether there were any."""
        dropped = False
        for kind, name in self._db.execute("SELECT type, name FROM sqlite_master").fetchall():
            if kind in ("trigger", "view", "index") and not name.startswith("sqlite_autoindex_"):
                self._db.execute(f'DROP {kind.upper()} IF EXISTS "{name.replace(chr(34), chr(34) * 2)}"')
                dropped = True
        return dropped

    def _sealed(self) -> bool:
        return (
            self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'seals'").fetchone()
            is not None
        )

    def _reseal(self, exp_id: int | None = None) -> None:
        """Seal row `exp_id` (every row where None) as it now is; within the caller's transaction."""
        if exp_id is None or not self._sealed():  # a ledger from before the seals: sealed whole on its first write
            self._db.execute("DROP TABLE IF EXISTS seals")
            self._db.execute("CREATE TABLE seals (id INTEGER PRIMARY KEY, digest TEXT)")
            rows = self._db.execute("SELECT * FROM experiments").fetchall()
        else:
            rows = self._db.execute("SELECT * FROM experiments WHERE id = ?", (exp_id,)).fetchall()
            self._db.execute("DELETE FROM seals WHERE id = ?", (exp_id,))
        self._db.executemany("INSERT INTO seals (id, digest) VALUES (?, ?)", [(r[0], _digest(r)) for r in rows])

    def _open_copy(self) -> int:
        """Open a copy of the ledger (and its write-ahead log) in a temporary folder, for a command that only reads
        it from a folder SQLite cannot write its log in: a read-only mount, a colleague's workspace. A live loop
        keeps its -shm there, which lets the first open through: this is a ledger at rest, read whole (SQLite's
        immutable mode would drop the rows still in the log, and fail where it must seal an old ledger); its row
        count. LedgerError where it cannot be read."""
        self._copy = Path(tempfile.mkdtemp(prefix="autoresearch-ledger-"))
        try:
            for suffix in ("", "-wal"):
                if Path(f"{self.db_path}{suffix}").exists():
                    shutil.copyfile(f"{self.db_path}{suffix}", self._copy / f"ledger.sqlite{suffix}")
            self._open(self._copy / "ledger.sqlite")
            return self._db.execute("SELECT COUNT(*) FROM experiments").fetchone()[0]
        except (OSError, sqlite3.DatabaseError) as exc:
            self.close()
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise LedgerError(f"the ledger {self.db_path} cannot be read ({why})", hint=REBUILD_HINT) from None

    def _open(self, path: Path | None = None) -> None:
        self._writes += 1  # a new connection counts its data_version afresh
        self._trusted = None  # so the loop's ledger checks the file again at its next read
        self._db = sqlite3.connect(path or self.db_path, isolation_level=None)  # autocommit: each write is durable
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        cols = ", ".join(f'"{name}" {"INTEGER PRIMARY KEY" if name == "id" else "ANY"}' for name in _COLUMNS)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS experiments ({cols})")
        have = {row[1] for row in self._db.execute("PRAGMA table_info(experiments)")}
        for name in _COLUMNS:
            if name not in have:  # a ledger written by an older version: the new column starts at its default
                default = getattr(Experiment(0, "", "", "", ""), name)
                self._db.execute(f'ALTER TABLE experiments ADD COLUMN "{name}" ANY DEFAULT {default!r}')
        # Not resealed here: a sealed ledger lacks no column of this version, unless one was dropped to have the
        # rows sealed again as they are. A later version that adds a column must check the seals first, then reseal.

    def close(self) -> None:
        with contextlib.suppress(AttributeError):  # no connection was made
            self._db.close()
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)

    # -- writes ---------------------------------------------------------------------------------

    def next_id(self) -> int:
        return (self._db.execute("SELECT MAX(id) FROM experiments").fetchone()[0] or 0) + 1

    def insert(self, exp: Experiment) -> None:
        exp.started_at = exp.started_at or time.time()
        values = asdict(exp)
        self._write(
            exp.id,
            f"INSERT INTO experiments ({_QUOTED}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            [values[c] for c in _COLUMNS],
        )

    def update(self, exp_id: int, **changes: Any) -> None:
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"no ledger column {', '.join(sorted(unknown))}")
        sets = ", ".join(f'"{k}" = ?' for k in changes)
        self._write(exp_id, f"UPDATE experiments SET {sets} WHERE id = ?", [*changes.values(), exp_id])

    def _write(self, exp_id: int, sql: str, args: list) -> None:
        """One write of row `exp_id` and its seal, in one transaction. The loop's ledger checks first that nobody
        else wrote since it last read: its write would seal what they wrote."""
        while True:
            if self._verifying:
                self.all()
            writes = self._writes
            self._writes += 1
            with disk_full_is_an_error("writing the ledger"):
                self._db.execute("BEGIN IMMEDIATE")  # from here until COMMIT no other connection commits
                version = self._data_version()
                if self._verifying and version != self._trusted:  # another wrote since all() checked: check that
                    self._db.execute("ROLLBACK")  # first, or this write would seal what it wrote to this row
                    continue
                current = self._cached is not None and self._cached[0] == (writes, version)
                try:
                    self._db.execute(sql, args)
                    self._reseal(exp_id)
                    row = self.get(exp_id) if current else None  # read in the transaction: nobody else's yet
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            if current:  # nobody else wrote since the rows were read: the other rows are as cached
                self._recache(exp_id, row, version)
            return

    def _recache(self, exp_id: int, row: Experiment | None, version: int) -> None:
        """Put row `exp_id` as this process wrote it into the cached rows, which are otherwise current: a write reads
        back the one row it wrote, not the whole table (at 5,000 rows, reading all of them after every write cost the
        driver seconds per experiment: BENCHMARKS.md, "What a long night leaves behind"). The rows are as the file
        was at `version` (its data_version in the write's transaction), plus this write: a commit of another process
        since then makes the next read check and read them all again."""
        assert self._cached is not None
        rows = self._cached[1]
        ids = [exp.id for exp in rows]
        at = bisect.bisect_left(ids, exp_id)
        if at < len(rows) and rows[at].id == exp_id:
            if row is None:
                del rows[at]
            else:
                rows[at] = row
        elif row is not None:
            rows.insert(at, row)
        self._cached = ((self._writes, version), rows)

    def _data_version(self) -> int:
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    # -- reads ----------------------------------------------------------------------------------

    def all(self) -> list[Experiment]:
        """Every experiment, oldest first: read from the database when it changed since the last call, else
        copies of the rows read then (a caller may change what it gets; the next caller gets the rows)."""
        data_version = self._data_version()
        if self._verifying and self._trusted != data_version:
            self._check_seals()  # another process wrote the file since it was checked: not one of the loop's
        version = (self._writes, data_version)
        if self._cached is None or self._cached[0] != version:
            self._cached = (version, list(self._rows("SELECT * FROM experiments ORDER BY id")))
        return [_copy(exp) for exp in self._cached[1]]

    def get(self, exp_id: int) -> Experiment | None:
        if not -(1 << 63) <= exp_id < 1 << 63:  # past SQLite's integers (`wait 99999999999999999999`): none
            return None
        return next(self._rows("SELECT * FROM experiments WHERE id = ?", exp_id), None)

    def in_flight(self) -> list[Experiment]:
        """Every experiment queued or running (several with several workers), oldest first."""
        marks = ", ".join("?" * len(IN_FLIGHT))
        return list(self._rows(f"SELECT * FROM experiments WHERE status IN ({marks}) ORDER BY id", *IN_FLIGHT))

    def running(self) -> Experiment | None:
        return next(self._rows("SELECT * FROM experiments WHERE status = ? ORDER BY id", Status.RUNNING), None)

    def _rows(self, sql: str, *args: Any) -> Iterator[Experiment]:
        cursor = self._db.execute(sql, args)
        names = [d[0] for d in cursor.description]
        for row in cursor:
            exp = Experiment(**dict(zip(names, row, strict=True)))
            exp.kind, exp.status = _word(Kind, exp.kind), _word(Status, exp.status)
            yield exp

    # -- verifying that nobody else wrote it --------------------------------------------------------

    def state(self) -> LedgerState:
        """Every row, the identity of the file they live in, and the rows' seals: what an untrusted step must not
        change."""
        while True:
            if self._verifying:  # what another process wrote before the step is found now, not sealed by put_back
                self.all()
            rows = self._db.execute("SELECT * FROM experiments ORDER BY id").fetchall()
            seals = self._seals()
            if not self._verifying or self._data_version() == self._trusted:  # nobody wrote since the check
                return rows, self._identity(), seals

    def put_back(self, state: LedgerState, quarantine: Path) -> str | None:
        """Make the ledger what it was in `state` (taken by this process); what had changed, if anything."""
        rows, identity, seals = state
        changed = "changed the ledger's schema" if self._drop_foreign() else None
        if self._identity() != identity:  # deleted or replaced: this connection still holds the real one
            if self.db_path.exists():
                quarantine.mkdir(parents=True, exist_ok=True)
                self.db_path.replace(quarantine / self.db_path.name)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
            with contextlib.closing(sqlite3.connect(self.db_path)) as fresh:
                self._db.backup(fresh)
            self._db.close()
            self._open()
            changed = "replaced or deleted the ledger"
        if self._db.execute("SELECT * FROM experiments ORDER BY id").fetchall() != rows:
            marks = ", ".join("?" * len(_COLUMNS))
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM experiments")
            self._db.executemany(f"INSERT INTO experiments ({_QUOTED}) VALUES ({marks})", rows)
            self._db.execute("COMMIT")
            changed = changed or "changed the ledger"
        # The rows are the loop's again: so are their seals. Compared with the seals as they were, not digested from
        # every row at every check (at 5,000 rows that cost most of a second per run and per agent turn).
        if changed or self._seals() != seals:
            self._db.execute("BEGIN")
            self._reseal()
            self._db.execute("COMMIT")
            changed = changed or "changed the ledger's seals"
        if changed:  # what this process reads next is its own; where nothing changed, the rows it read still are
            self._writes += 1
            self._cached = None
        return changed

    def _seals(self) -> dict[int, str]:
        return dict(self._db.execute("SELECT id, digest FROM seals")) if self._sealed() else {}

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = self.db_path.stat()
        except OSError:
            return None
        return st.st_dev, st.st_ino

    # -- the reference's table ------------------------------------------------------------------

    def write_tsv(self) -> None:
        """Rewrite results.tsv from the database (atomically), one line per finished experiment."""
        results_tsv.write(self.workspace, self.all())


def _digest(row: tuple) -> str:
    """A row's seal: SHA-256 of its values as stored (types included: 1 and "1" differ)."""
    typed = [[type(v).__name__, v.hex() if isinstance(v, bytes) else v] for v in row]
    return hashlib.sha256(json.dumps(typed).encode()).hexdigest()


def read_only(folder: Path) -> bool:
    """Whether `folder` cannot be written: on a read-only mount (even for root), or not the user's to write."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY) or not os.access(folder, os.W_OK)
    except OSError:
        return False


def _lost(path: Path) -> LedgerError:
    return LedgerError(f"the ledger {path} is missing or empty, but this workspace has experiments (results.tsv, "
                       ".autoresearch/runs, or git's `exp N: ...` commits and refs/autoresearch/discarded/)",
                       hint=f"{REBUILD_HINT}; or, if `git stash -a` took them, `git stash pop` first")  # fmt: skip


def verified_rows(workspace: Path) -> list[Experiment]:
    """Every experiment of the workspace's ledger, for a command that shows them (`status`, `report`, `show`, the web
    view): its seals checked first, as the loop checks them (`Ledger.verify`); LedgerError if another hand wrote it.
    Unchecked, a row set to `keep` at 1.0 by hand was the night's best in all three. A missing ledger is not made
    (red team: the web view's, made twice a second and removed, was taken by a `rebuild-ledger` meanwhile for the
    old ledger, and the rebuilt one removed): none yet, or LedgerError where the workspace has experiments."""
    path = ledger_path(workspace)
    if not os.path.lexists(path):
        if has_history(workspace):
            raise _lost(path)
        return []
    ledger = Ledger(workspace, reading=True)
    try:
        ledger.verify()
        return ledger.all()
    finally:
        ledger.close()


def _copy(exp: Experiment) -> Experiment:
    """A shallow copy (every field is a str, a number or None), in half the time of `copy.copy`."""
    new = object.__new__(Experiment)
    new.__dict__.update(exp.__dict__)
    return new


def _word(vocabulary, value):
    """The member a stored word names; a word this version does not know stays the text it is."""
    try:
        return vocabulary(value)
    except ValueError:
        return value
