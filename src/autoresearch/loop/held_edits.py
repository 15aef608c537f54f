"""A `submit` killed mid-way loses nothing: the change it took out of train.py waits in `.autoresearch/submitting/`
(HeldEdit) until it is queued, and the next `submit` puts it back (`put_back_edits`)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from autoresearch.files import flock_held, read_regular, write_text_atomic
from autoresearch.loop.asking import one_line
from autoresearch.loop.inbox import EDIT_BASE, REQUEST_LIMIT, clear_stale_tmp, edit_base, is_submission
from autoresearch.loop.ledger import Ledger

try:
    import fcntl
except ImportError:  # Windows: no flock; a live `submit`'s change cannot be told from a killed one's
    fcntl = None

HELD_DIR = "submitting"  # the change each `submit` has taken out of train.py, until it is queued (HeldEdit)
UNSUBMITTED_DIR = "unsubmitted"  # such a change that a killed `submit` left and that could not be put back


class HeldEdit:
    """The change a `submit` takes out of train.py, in `.autoresearch/submitting/` from before train.py is touched
    until the change is queued or back in train.py, locked (an flock) by that `submit` while it lives. A `submit`
    killed in between (SIGKILL: an agent's tool timeout, the OOM killer) had the change in neither train.py nor the
    ledger; it leaves it here, and the next `submit` puts it back (`put_back_edits`)."""

    def __init__(self, state: Path, edit: str, source: str, description: str, base: str):
        directory = state / HELD_DIR
        made = not directory.is_dir()
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}-{os.getpid()}"
        tmp, self.path = directory / f".{name}.tmp", directory / f"{name}.json"
        self.fd: int | None = None
        try:
            self.fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            if fcntl is not None:  # locked before it has its name: no `submit` ever sees it unlocked while we live
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            with open(os.dup(self.fd), "w") as f:
                held = {"edit": edit, "source": source, "description": description, "base": edit_base(state, base)}
                json.dump(held, f)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
        except BaseException:  # a full disk: the change is still in train.py, and nothing of it is left here
            tmp.unlink(missing_ok=True)
            self.release()
            if made:  # an empty folder left would be the only trace of a `submit` that did nothing
                with contextlib.suppress(OSError):  # not empty: another `submit` holds its change there
                    directory.rmdir()
            raise

    def release(self) -> None:
        """The change is queued, or back in train.py: this copy goes."""
        self.path.unlink(missing_ok=True)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def put_back_edits(ws, say: Callable[[str], None]) -> str | None:
    """What `submit`s killed before their change was queued left (HeldEdit): a change the ledger has (queued before
    the kill) is dropped; else, oldest first, put back in train.py if it holds the best (a note of the best it was
    made from, for `submit`), or else moved to `.autoresearch/unsubmitted/` and named. The description of the change
    put back, if one was."""
    directory = ws.state / HELD_DIR
    if fcntl is None or not directory.is_dir() or directory.is_symlink():  # without flock a live `submit`'s change
        # cannot be told apart; a link is not followed (a planted folder elsewhere)
        return None
    clear_stale_tmp(directory, ".*.tmp")  # a `submit` killed before it named its copy: the change was still in train.py
    restored = None
    for path in sorted(directory.glob("*.json")):
        if flock_held(path):
            continue  # its `submit` lives
        try:
            held = json.loads(read_regular(path, REQUEST_LIMIT))  # planted: a FIFO, a link, gigabytes are not read
            edit, source, description, base = (held[k] for k in ("edit", "source", "description", "base"))
            if not all(isinstance(f, str) for f in (edit, source, description, base)):
                raise TypeError("not text")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _queued(ws, source, description):
            path.unlink(missing_ok=True)
        elif restored is None and ws.read_train_py() == ws.committed_train_py():
            ws.write_train_py(edit)
            if base != (head := ws.git.head()):  # a keep moved the branch since: submitted as made from its base
                write_text_atomic(ws.state / EDIT_BASE, json.dumps({"base": base, "head": head}))
            path.unlink(missing_ok=True)
            restored = description
        else:
            kept = ws.state / UNSUBMITTED_DIR / f"{path.stem}.py"
            kept.parent.mkdir(exist_ok=True)
            write_text_atomic(kept, edit)
            path.unlink(missing_ok=True)
            say(
                f"warning: a `submit` killed before it queued its change ({one_line(description)}) had taken it out "
                f"of train.py; train.py holds another change, so it is in {kept}"
            )
    return restored


def _queued(ws, source: str, description: str) -> bool:
    """Whether the ledger has a submitted experiment of this train.py and description (queued before a kill)."""
    if not (ws.state / "ledger.sqlite").exists():
        return False
    ledger = Ledger(ws.root)
    try:
        return any(is_submission(e, description, source) for e in ledger.all())
    finally:
        ledger.close()


def planted(state: Path, since_ns: int) -> list[Path]:
    """The files in `.autoresearch/submitting/` written since `since_ns` (their ctime, which no process can set back)
    that no live `submit` holds: an agent's, during its turn, for the next `submit` to put into train.py as a killed
    submit's change. The folder itself where it is a link (to a folder of such files elsewhere)."""
    directory = state / HELD_DIR
    if directory.is_symlink():  # never the loop's: the next `submit` would not follow it, but it is the agent's
        return [directory]
    found = []
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        with contextlib.suppress(OSError):
            if path.lstat().st_ctime_ns >= since_ns and not flock_held(path):
                found.append(path)
    return found
