"""The runs' logs, bounded in total: a long night of a train.py that prints a lot cannot fill the disk with them.

Each run's log (`.autoresearch/runs/<exp>-<run>/log.txt`) is capped where it is written (evaluator/run_output.py's
LOG_LIMIT, 32 MiB), but that is per run: 10,000 runs of a chatty train.py would be 320 GB. So after each verdict
`trim` looks at them all, and while they take more than MAX_BYTES, cuts the oldest down to their ends: first to TAIL
bytes, then, if that is not enough, to SHORT_TAIL. Never cut: the logs of kept experiments (the baseline's too), of
experiments in flight (being written, or to be judged), and of the NEWEST_WHOLE latest experiments.

Nothing a command or the report reads is lost: the ledger keeps the end of a crash's log (`log_tail`, what `show`
prints), `status` and the live view read only the logs of runs in flight, and `rebuild-ledger` reads the runs'
result files, which stay. A cut log begins with a line that says how much of it was cut.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from autoresearch.loop.experiment import Experiment
from autoresearch.vocabulary import IN_FLIGHT, Status

LOG = "log.txt"
MAX_BYTES = 2 << 30  # all the runs' logs together, before the oldest are cut
TAIL = 256 << 10  # what the first cut keeps of a log: its end
SHORT_TAIL = 16 << 10  # what the second keeps, where cutting all to TAIL was not enough
NEWEST_WHOLE = 20  # the latest experiments whose logs stay whole
_RUN = re.compile(r"([0-9]+)-([0-9]+)")
CUT = LOG + ".cut"  # where a cut log is written before it takes the log's place
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_OPEN = os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW  # a link or FIFO an agent left is not followed
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY


def trim(runs: Path, rows: Iterable[Experiment], max_bytes: int | None = None) -> int:
    """Cut the oldest logs under `runs` to their ends while all of them take more than `max_bytes` (MAX_BYTES), sparing
    those of the experiments `protected` by `rows` (the ledger's, oldest first); the bytes freed."""
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    logs = _logs(runs)
    total = sum(size for _, _, size in logs)
    if total <= max_bytes:
        return 0
    spared = protected(list(rows))
    cuttable = sorted((exp, run, size) for exp, run, size in logs if exp not in spared)
    freed = 0
    for keep in (TAIL, SHORT_TAIL):
        for exp, run, size in cuttable:
            if total - freed <= max_bytes:
                return freed
            if size > keep + _HEADER_BYTES:
                freed += cut(runs, f"{exp}-{run}", keep, max_bytes)
        cuttable = [(exp, run, min(size, keep)) for exp, run, size in cuttable]
    return freed


def protected(rows: list[Experiment]) -> set[int]:
    """The experiments whose logs stay whole: kept ones, those in flight, and the NEWEST_WHOLE latest."""
    spared = {e.id for e in rows if e.status == Status.KEEP or e.status in IN_FLIGHT}
    return spared | {e.id for e in rows[max(0, len(rows) - NEWEST_WHOLE) :]}


def _logs(runs: Path) -> list[tuple[int, int, int]]:
    """(experiment, run, size) of every run's log that is a regular file."""
    found = []
    try:
        entries = list(os.scandir(runs))
    except OSError:
        return found
    for entry in entries:
        match = _RUN.fullmatch(entry.name)
        if match is None or entry.name != f"{int(match[1])}-{int(match[2])}" or not entry.is_dir(follow_symlinks=False):
            continue  # only the name the loop gives a run's folder ("05-0" is another folder than 5-0's), not a link
        try:
            st = os.lstat(os.path.join(entry.path, LOG))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.append((int(match[1]), int(match[2]), st.st_size))
    return found


_HEADER = "[the first {cut} bytes of this log were cut after the run: the loop keeps the runs' logs under {cap}]\n"
_HEADER_BYTES = 200


def cut(runs: Path, name: str, keep: int, cap: int) -> int:
    """Replace the log in the run's folder `name` under `runs` by its last `keep` bytes (from the first line that
    begins in them), headed by a line saying so; the bytes freed. Each step is taken inside that very folder, opened
    without following a link there or in its place (one an agent made after `_logs` looked); a log that is no regular
    file (a link, a FIFO an agent left there) is left as it is, and so is one whose cut cannot be written."""
    try:
        top = os.open(runs, _DIRECTORY)
    except OSError:
        return 0
    try:
        folder = os.open(name, _DIRECTORY | _NOFOLLOW, dir_fd=top)
    except OSError:
        return 0
    finally:
        os.close(top)
    try:
        return _cut(folder, keep, cap)
    except OSError:  # a folder `log.txt.cut`, no room, no permission: the log stays whole, the loop goes on
        with contextlib.suppress(OSError):
            os.unlink(CUT, dir_fd=folder)
        return 0
    finally:
        os.close(folder)


def _cut(folder: int, keep: int, cap: int) -> int:
    with open(os.open(LOG, _OPEN, dir_fd=folder), "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size <= keep:
            return 0
        f.seek(st.st_size - keep)
        end = f.read(keep)
    if (newline := end.find(b"\n")) != -1 and newline < len(end) - 1:
        end = end[newline + 1 :]
    header = _HEADER.format(cut=st.st_size - len(end), cap=f"{cap / 2**30:g} GiB").encode()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(CUT, dir_fd=folder)
    with open(os.open(CUT, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644, dir_fd=folder), "wb") as f:
        f.write(header + end)
    os.replace(CUT, LOG, src_dir_fd=folder, dst_dir_fd=folder)
    return st.st_size - len(header) - len(end)
