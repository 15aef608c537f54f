"""The ledger: every experiment the loop ran, in SQLite, mirrored to the reference's results.tsv.

A row is written (status `running`) before git is touched and updated when the verdict is known, so a
killed loop finds on restart exactly which experiment was in flight. `results.tsv` keeps the
reference's columns and is rewritten from the database after every verdict.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

RUNNING, KEEP, DISCARD, CRASH = "running", "keep", "discard", "crash"
TSV_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"


@dataclass
class Experiment:
    id: int  # the experiment number, from 1
    kind: str  # "baseline", "experiment"
    status: str  # RUNNING, KEEP, DISCARD or CRASH
    description: str
    parent: str  # the best commit it was made from
    commit: str | None = None
    agent: str = ""
    model: str = ""
    started_at: float = 0.0
    finished_at: float | None = None
    val_bpb: float | None = None  # the judged value: the mean over runs when a win was re-run
    runs: str = "[]"  # JSON list of val_bpb of each run of this experiment
    reason: str = ""  # why it was kept, discarded or crashed
    memory_gb: float | None = None
    training_seconds: float | None = None
    total_seconds: float | None = None
    lines_added: int = 0
    lines_removed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    log_tail: str = ""
    result: str = "{}"  # JSON of the harness's result file
    source: str = ""  # train.py as run
    diff: str = ""  # against the parent

    @property
    def run_values(self) -> list[float]:
        return json.loads(self.runs)


_COLUMNS = [f.name for f in fields(Experiment)]
_QUOTED = ", ".join(f'"{name}"' for name in _COLUMNS)


class Ledger:
    def __init__(self, workspace: Path):
        self.workspace = workspace
        self.db_path = workspace / ".autoresearch" / "ledger.sqlite"
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.db_path, isolation_level=None)  # autocommit: each write is durable
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        cols = ", ".join(f'"{name}" {"INTEGER PRIMARY KEY" if name == "id" else "ANY"}' for name in _COLUMNS)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS experiments ({cols})")

    def close(self) -> None:
        self._db.close()

    # -- writes ---------------------------------------------------------------------------------

    def next_id(self) -> int:
        return (self._db.execute("SELECT MAX(id) FROM experiments").fetchone()[0] or 0) + 1

    def insert(self, exp: Experiment) -> None:
        exp.started_at = exp.started_at or time.time()
        values = asdict(exp)
        self._db.execute(
            f"INSERT INTO experiments ({_QUOTED}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            [values[c] for c in _COLUMNS],
        )

    def update(self, exp_id: int, **changes: Any) -> None:
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"no ledger column {', '.join(sorted(unknown))}")
        sets = ", ".join(f'"{k}" = ?' for k in changes)
        self._db.execute(f"UPDATE experiments SET {sets} WHERE id = ?", [*changes.values(), exp_id])

    # -- reads ----------------------------------------------------------------------------------

    def all(self) -> list[Experiment]:
        return list(self._rows("SELECT * FROM experiments ORDER BY id"))

    def get(self, exp_id: int) -> Experiment | None:
        return next(self._rows("SELECT * FROM experiments WHERE id = ?", exp_id), None)

    def running(self) -> Experiment | None:
        return next(self._rows("SELECT * FROM experiments WHERE status = ? ORDER BY id", RUNNING), None)

    def _rows(self, sql: str, *args: Any) -> Iterator[Experiment]:
        cursor = self._db.execute(sql, args)
        names = [d[0] for d in cursor.description]
        for row in cursor:
            yield Experiment(**dict(zip(names, row, strict=True)))

    # -- the reference's table ------------------------------------------------------------------

    def write_tsv(self) -> None:
        """Rewrite results.tsv from the database (atomically), one line per finished experiment."""
        lines = [TSV_HEADER]
        for exp in self.all():
            if exp.status == RUNNING:
                continue
            bpb = f"{exp.val_bpb:.6f}" if exp.val_bpb is not None else "0.000000"
            mem = f"{exp.memory_gb:.1f}" if exp.memory_gb is not None else "0.0"
            desc = " ".join(exp.description.split())
            lines.append(f"{(exp.commit or '')[:7]}\t{bpb}\t{mem}\t{exp.status}\t{desc}\n")
        tmp = self.workspace / "results.tsv.tmp"
        tmp.write_text("".join(lines))
        tmp.replace(self.workspace / "results.tsv")
