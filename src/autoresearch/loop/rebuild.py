"""`autoresearch rebuild-ledger`: a lost, emptied or corrupt ledger made again from what survives it.

results.tsv has one line per finished experiment, in id order, with its commit, val_bpb, memory, status
and description. A line is placed by its commit's subject (`exp N: ...`), not by its position: the file
leaves out what was in flight when it was written, and a line that is not the loop's is skipped, never
taken for its neighbour's. git has every experiment's train.py (kept ones on the branch as `exp N: ...`,
discarded ones under refs/autoresearch/discarded/N); each run's directory still holds the evaluator's
result (`.autoresearch/runs/N-k/result.json`), so the baseline's seeds, and with them the noise, come back
too. What git and the runs' files know wins over a line: the status is where git keeps the commit (a
`keep` line for a discarded commit is no keep), and val_bpb is the mean of the runs' results where they
survive (a crash has none; a kept change's runs measured again as the loop joined them). Experiments that
only git knows (results.tsv lost too) come back with their status from where git keeps them, the baseline
as the commit the first experiment was made on; the branch tip missing from a results.tsv that has lines
was in flight (one worker trains on the branch): it is trained again at the next start. A line whose commit git
no longer has (the loop's refs deleted, then `git gc --prune`) keeps its value and status; only its train.py is
lost. Ids are never reused: the next id is past every id the file, git or the run folders name. What could not be
got back (the baseline's seeds with its runs' folders, which the next start trains again) `not_recovered` says.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import sqlite3
import statistics
import time
from pathlib import Path

from autoresearch.evaluator.result import Result
from autoresearch.files import sync
from autoresearch.loop import results_tsv
from autoresearch.loop.confirmation import not_confirmed
from autoresearch.loop.executor import read_result
from autoresearch.loop.experiment import Experiment, best_of
from autoresearch.loop.judge import beyond_seeds, measured_noise
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.waiting import unreported
from autoresearch.vocabulary import Kind, Status
from autoresearch.workspace.disk import DiskFullError, sqlite_short_of_space
from autoresearch.workspace.git import Git
from autoresearch.workspace.workspace import as_read

DISCARDED = "refs/autoresearch/discarded/"
SHORT_SHA = re.compile(r"[0-9a-f]{7,40}")  # how results.tsv names a commit
RUN_FOLDER = re.compile(r"^(\d+)-(\d+)$")  # runs/<experiment>-<run index>, as the loop names them


def rebuild(root: Path, git: Git) -> tuple[int, Path | None, list[int]]:
    """Write a new ledger, move the present one aside and put the new one in its place; how many rows it has, where
    the old one went, and the numbers of results.tsv's lines it could not place (not a row the loop writes, or no
    free id for it). All or nothing: the new ledger and results.tsv are written whole first, the ledger to a file
    beside the old one (one folder: the rename is atomic), and only then does it take the old one's place. A full
    disk or a kill midway leaves the ledger as it was (red team: written row by row into place, a rebuild cut short
    by a full disk left a ledger of 2 experiments out of 7 that read as healthy, and the next `run` cut results.tsv
    down to it)."""
    state = root / ".autoresearch"
    old = state / "ledger.sqlite"
    new = state / "ledger.sqlite.rebuilding"
    rows, skipped = _rows(root, git)
    _remove(new)  # what a rebuild killed midway left
    try:
        _write(root, new, rows)
    except BaseException:
        _remove(new)
        raise
    # the old file and its -wal (which holds its latest rows) and -shm, all under one new name: kept whole
    found = [suffix for suffix in ("", "-wal", "-shm") if os.path.lexists(f"{old}{suffix}")]
    aside = _aside(old) if found else None
    for suffix in found:
        os.rename(f"{old}{suffix}", f"{aside}{suffix}")
    os.rename(new, old)
    sync(state)  # the renames too
    return len(rows), aside if "" in found else None, skipped


def not_recovered(root: Path) -> list[str]:
    """What the rebuilt ledger lacks, in words, for `rebuild-ledger` to say (it said only "rebuilt the ledger: 16
    experiments", and every `run` after it stopped for want of the noise)."""
    ledger = Ledger(root, check_history=False)
    try:
        rows = ledger.all()
    finally:
        ledger.close()
    notes = []
    base = next((e for e in rows if e.kind == Kind.BASELINE and e.status == Status.KEEP), None)
    if base is not None and measured_noise(rows) is None:
        notes.append("the baseline's seeds, which measure the noise (results.tsv keeps only their mean)")
    if (best := best_of(rows)) is not None and best.val_bpb is None:
        notes.append(f"the best's val_bpb (exp {best.id})")
    if notes:
        notes[-1] += ": the next `run` or `try` trains them again first"
    if unvalued := [e.id for e in rows if e.status == Status.DISCARD and e.val_bpb is None]:
        notes.append(f"the val_bpb of discarded experiments {_ids(unvalued)} (results.tsv did not have them)")
    if gone := [e.id for e in rows if e.kind == Kind.EXPERIMENT and not e.commit]:
        notes.append(f"the train.py and diff of experiments {_ids(gone)}: their commits are gone from git (pruned)")
    return notes


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:12])) + (f" and {len(ids) - 12} more" if len(ids) > 12 else "")


def _write(root: Path, path: Path, rows: list[Experiment]) -> None:
    """The ledger of `rows` at `path`, whole in that one file (no -wal left) and on disk; results.tsv from it."""
    try:
        ledger = Ledger(root, check_history=False, path=path)
        try:
            for exp in rows:
                ledger.insert(exp)
            ledger.write_tsv()  # atomic: the old one stays where this fails
            # Everything into the file itself: a -wal left beside it would not follow it into place.
            if ledger._db.execute("PRAGMA journal_mode=DELETE").fetchone()[0] != "delete":
                raise sqlite3.OperationalError("the new ledger's write-ahead log could not be written into it")
        finally:
            ledger.close()
    except sqlite3.OperationalError as exc:
        if sqlite_short_of_space(exc, path.parent):  # SQLITE_IOERR as often as SQLITE_FULL
            raise DiskFullError("writing the new ledger") from None
        raise
    sync(path)


def _remove(path: Path) -> None:
    """`path` and the files SQLite keeps beside it."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _aside(ledger: Path) -> Path:
    """Where to move the ledger aside: a name that no file has yet, nor its -wal or -shm (a second rebuild in the
    same second replaced the first one's file)."""
    stem = f"{ledger.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    names = (ledger.with_name(stem if n == 1 else f"{stem}-{n}") for n in itertools.count(1))
    return next(p for p in names if not any(os.path.lexists(f"{p}{suffix}") for suffix in ("", "-wal", "-shm")))


def _rows(root: Path, git: Git) -> tuple[list[Experiment], list[int]]:
    """The rows, and results.tsv's lines that could not be placed. A line's id is its commit's (`exp N: ...`);
    one without a commit (a rejected proposal) takes the first id after the line before it that no other line
    and no commit has: lines are in id order, but an experiment in flight when the file was written has none."""
    kept = git.exp_commits()
    discarded = {int(ref.removeprefix(DISCARDED)): sha for ref, sha in git.refs(DISCARDED).items()}
    known = {**discarded, **kept}
    lines = results_tsv.read(root).splitlines()[1:]
    parsed: list[tuple[int, int | None, list[str], str | None]] = []  # line number, its commit's id, fields, commit
    skipped: list[int] = []
    for number, line in enumerate(lines, start=2):
        fields = line.split("\t")
        if not results_tsv.written_by_loop(fields) or not _numbers(fields):
            skipped.append(number)
            continue
        commit = git.ref(fields[0]) if fields[0] else None
        if fields[0] and commit is None and not SHORT_SHA.fullmatch(fields[0]):  # no commit's name at all
            skipped.append(number)
            continue
        parsed.append((number, git.exp_number(commit) if commit else None, fields, commit))  # the baseline: no number
    claimed = set(known) | {exp_id for _, exp_id, _, _ in parsed if exp_id is not None}
    rows: dict[int, Experiment] = {}
    last = 0
    for k, (number, exp_id, fields, commit) in enumerate(parsed):
        if exp_id is None:
            following = next((i for _, i, _, _ in parsed[k + 1 :] if i is not None), None)
            exp_id = next(i for i in itertools.count(last + 1) if i not in claimed)
            gone = bool(fields[0]) and commit is None  # its commit pruned from git: no baseline's
            if (following is not None and exp_id >= following) or (commit and exp_id != 1) or (gone and exp_id == 1):
                skipped.append(number)  # not the loop's lines: only the baseline's commit is no `exp N: ...`
                continue
            claimed.add(exp_id)
        if exp_id in rows:
            skipped.append(number)
            continue
        last = max(last, exp_id)
        _, bpb, memory, status, description = fields
        if exp_id in kept:  # where git keeps the commit says whether it was kept, not the line
            status = Status.KEEP
        elif exp_id in discarded and status == Status.KEEP:
            status = Status.DISCARD
        # A line without a commit is a proposal rejected before it ran (a crash), or one whose commit was gone
        trained = fields[0] or status != Status.CRASH
        kind = Kind.BASELINE if exp_id == 1 else (Kind.EXPERIMENT if trained else Kind.PROPOSAL)
        rows[exp_id] = _row(git, exp_id, kind, status, description, commit, _float(bpb), _float(memory))
        if kind == Kind.EXPERIMENT and commit is None:
            _gone(rows[exp_id], fields[0])
    head, newest = git.head(), max(rows, default=0)
    for exp_id, commit in known.items():
        if exp_id not in rows:
            status = Status.KEEP if exp_id in kept else Status.DISCARD
            description = git.message(commit).partition(": ")[2]
            rows[exp_id] = _row(git, exp_id, Kind.EXPERIMENT, status, description, commit, None, None)
            rows[exp_id].reason = "rebuilt from git: results.tsv did not have it"
            if newest and commit == head and exp_id in kept and exp_id > newest:  # one worker's, training
                rows[exp_id].status = Status.RUNNING  # the next start trains it again, as after any kill
                rows[exp_id].reason = "rebuilt from git: in flight when the ledger was lost"
    if 1 not in rows and known:  # results.tsv lost too: the baseline is the commit the first experiment was made on
        first = git.parent(known[min(known)])
        if first is not None and git.exp_number(first) is None:
            rows[1] = _row(git, 1, Kind.BASELINE, Status.KEEP, "baseline", first, None, None)
            rows[1].reason = "rebuilt from git and its runs: results.tsv did not have it"
    # In flight when the ledger was lost, its id is never given again: one with run folders, or a submission queued
    # and not yet trained, which has only its mark for `wait` (that would wait for no row, or print another's verdict)
    state = root / ".autoresearch"
    left = {i: "only its run folders are left" for i in _run_ids(state / "runs")}
    left |= {i: "submitted, not yet trained: submit it again" for i in unreported(state) if i not in left}
    for exp_id in sorted(set(left) - set(rows)):
        rows[exp_id] = Experiment(exp_id, Kind.PROPOSAL, Status.CRASH, "(unknown)", parent="")
        rows[exp_id].reason = f"rebuilt: {left[exp_id]} (in flight when the ledger was lost)"
    ordered = [rows[i] for i in sorted(rows)]
    _measured_again(state / "runs", ordered)
    _fill_times(ordered)
    return ordered, sorted(skipped)


def _gone(exp: Experiment, sha: str) -> None:
    """A results.tsv line whose commit git no longer has (its ref deleted, then `git gc --prune`): its value and
    status are the line's, never a crash's (BROKE, fixed: every such line was skipped, and its run folders made it
    "CRASH (unknown)"); its train.py and diff are lost. Not kept: a best must have its train.py, and the branch
    does not hold it."""
    if exp.status == Status.KEEP:
        exp.status = Status.DISCARD
    # Named in the reason, not as its commit: the ledger would store a short sha of digits alone as a number
    exp.reason = f"rebuilt from results.tsv: its commit{f' {sha}' if sha else ''} is gone from git (pruned)"


def _measured_again(runs: Path, rows: list[Experiment]) -> None:
    """A kept change's runs after its first: measuring it again (loop/confirmation.py), which a run that failed or one
    far worse than the runs before it (judge.beyond_seeds) ended, the latter not joined to its mean. So here too: a
    train.py that trains only on the seed it was judged on would otherwise raise its bar with that run, and the next
    start would measure it again."""
    noise = measured_noise(rows)
    for exp in rows:
        if exp.kind != Kind.EXPERIMENT or exp.status != Status.KEEP:
            continue
        values, seeds, why = [], [], None
        for index, _, result in _run_results(runs, exp.id):
            if result is None:  # unreadable: it tells nothing
                continue
            if not result.valid or result.val_bpb is None:
                if values:  # one before the first that ended well was the judge's
                    why = why or f"its run {index + 1} failed: {result.invalid_reason}"
            elif values and (beyond := beyond_seeds(statistics.fmean(values), result.val_bpb, noise)):
                why = why or f"its run {index + 1} {beyond}"
            else:
                values.append(result.val_bpb)
                seeds.append(index)
        if why is not None:
            exp.val_bpb, exp.runs, exp.seeds = statistics.fmean(values), json.dumps(values), json.dumps(seeds)
            exp.reason = f"{exp.reason}; {not_confirmed(why)}"


def _run_ids(runs: Path) -> set[int]:
    return {int(m[1]) for p in runs.glob("*-*") if (m := RUN_FOLDER.match(p.name))}


def _numbers(fields: list[str]) -> bool:
    try:
        float(fields[1]), float(fields[2])
    except ValueError:
        return False
    return True


def _row(git: Git, exp_id, kind, status, description, commit, bpb, memory) -> Experiment:
    source = as_read(git.show(commit, "train.py")) if commit else ""  # as the loop had read it
    parent = (git.parent(commit) if kind != Kind.BASELINE else commit) if commit else ""
    final = Status(status) if status in (Status.KEEP, Status.DISCARD, Status.CRASH) else Status.CRASH
    exp = Experiment(id=exp_id, kind=kind, status=final, description=description, parent=parent or "", commit=commit)
    exp.memory_gb, exp.source = memory, source
    exp.reason = "rebuilt from results.tsv and git"
    found = _run_results(git.root / ".autoresearch" / "runs", exp_id)
    valid = [(index, r) for index, _, r in found if r is not None and r.valid and r.val_bpb is not None]
    values = [result.val_bpb for _, result in valid]
    # The runs' own results, where they survive, over the line's number; a crash has none.
    exp.val_bpb = None if final == Status.CRASH else statistics.fmean(values) if values else bpb
    exp.runs = json.dumps(values)
    exp.seeds = json.dumps([index for index, _ in valid])  # a refused or failed run leaves a gap in the indices
    if valid:  # the last run's, as the loop records it: the apparatus and setup later runs are checked against
        last = valid[-1][1]
        exp.result = json.dumps(last.__dict__)
        exp.memory_gb, exp.training_seconds, exp.total_seconds = (
            last.peak_memory_mb / 1024, last.training_seconds, last.total_seconds
        )  # fmt: skip
    exp.started_at, exp.finished_at = _when(git, commit, found)
    return exp


def _when(git: Git, commit: str | None, found: list[tuple[int, Path, Result | None]]) -> tuple[float, float]:
    """When the experiment started and ended, as its runs' result files tell (written as each run ended, with
    the run's seconds), else when its commit was made; (0, 0) where neither tells (`_fill_times` fills it)."""
    spans = []
    for _, path, result in found:
        ended = path.stat().st_mtime
        spans.append((ended - (result.total_seconds if result is not None else 0.0), ended))
    if spans:
        return min(s for s, _ in spans), max(e for _, e in spans)
    made = git.commit_time(commit) if commit else 0.0
    return made, made


def _fill_times(rows: list[Experiment]) -> None:
    """A row no file dates (a rejected proposal) takes the end of the row before it, or the start of the first
    dated one: throughput is counted over the rows' times."""
    dated = [e.started_at for e in rows if e.started_at]
    last = min(dated) if dated else time.time()
    for exp in rows:
        if not exp.started_at:
            exp.started_at = exp.finished_at = last
        last = max(last, exp.finished_at)


def _run_results(runs: Path, exp_id: int) -> list[tuple[int, Path, Result | None]]:
    """The run index (its seed offset), the result file and the evaluator's result (None: unreadable) of each
    run of the experiment that left one, in run order; folders the loop did not name are not its runs."""
    found = [(int(m[2]), p) for p in runs.glob(f"{exp_id}-*/result.json") if (m := RUN_FOLDER.match(p.parent.name))]
    return [(index, path, read_result(path)) for index, path in sorted(found)]


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None
