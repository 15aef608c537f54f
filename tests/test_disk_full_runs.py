"""A disk that fills while a run trains stops the loop with the disk-full error, the experiment left in flight to be
trained again; it is never recorded as the experiment's own crash. What decides is what the loop and the evaluator see
of the disk (statvfs, their own writes failing), never text train.py printed; and a run that fills the disk with its
own files is a crash of its own, or any train.py could stop the night at will."""

from __future__ import annotations

import errno
import os
import pickle
import threading
from pathlib import Path

import pytest
from loop_support import make_workspace

from autoresearch.evaluator import referee as referee_module
from autoresearch.evaluator import sandbox
from autoresearch.evaluator.confined import FORK_ENV
from autoresearch.evaluator.referee import CRASHED, DISK_FULL, Referee
from autoresearch.evaluator.run_output import Output
from autoresearch.loop.executor import DISK_FULL as LOOP_DISK_FULL
from autoresearch.loop.executor import LocalExecutor, RunSpec
from autoresearch.orphans import remove_box
from autoresearch.vocabulary import RunEnd
from autoresearch.workspace import disk
from autoresearch.workspace.disk import DiskFullError

TRACEBACK = "Traceback (most recent call last):\nOSError: [Errno 28] No space left on device"


def statvfs_with(monkeypatch: pytest.MonkeyPatch, free_bytes: int) -> None:
    """Every file system has `free_bytes` left for this user (inodes to spare)."""
    real = os.statvfs

    class Full:
        def __init__(self, st) -> None:
            self.f_frsize, self.f_bavail = 4096, free_bytes // 4096
            self.f_bfree = self.f_bavail  # root's, the blocks reserved for it among them
            self.f_files, self.f_favail = st.f_files, max(st.f_favail, 1)
            self.f_ffree = self.f_favail

    monkeypatch.setattr(os, "statvfs", lambda path: Full(real(path)))


def run_with_evaluator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, says: str):
    """LocalExecutor.run with an evaluator that prints `says` and exits with `code` (started as a new process, as
    after the fork server failed); what it returns."""
    monkeypatch.setenv("AUTORESEARCH_FORK_SERVER", "0")
    evaluator = tmp_path / "evaluator"
    evaluator.write_text(f"#!/bin/sh\nread job\nprintf '%s\\n' '{says}' >&2\nexit {code}\n")
    evaluator.chmod(0o755)
    (tmp_path / "train.py").write_text("print('trained')\n")
    (tmp_path / "state").mkdir()
    executor = LocalExecutor(python=str(evaluator), prewarm=False)
    try:
        return executor.run(RunSpec(tmp_path, tmp_path / "state" / "runs" / "2-0", timeout=5, fingerprint=""))
    finally:
        executor.close()


def test_the_evaluators_own_disk_full_stops_the_loop_where_the_disk_is_still_short_after(tmp_path, monkeypatch):
    """BROKE, fixed (red team): the evaluator's write of the run's progress or result failing with ENOSPC made it
    exit as an error, which the loop recorded as the experiment's crash, for good (or, with the fork server, as an
    apparatus changed: "make a new workspace"). Its own write failing is its exit code DISK_FULL now: the loop stops,
    where the disk is still short of room once the evaluator is gone."""
    assert LOOP_DISK_FULL == DISK_FULL
    statvfs_with(monkeypatch, 100 * 2**20)  # under what a run may take of it
    with pytest.raises(DiskFullError, match="the disk is full: free space, then run again; nothing was lost"):
        run_with_evaluator(tmp_path, monkeypatch, DISK_FULL, "error: the disk is full")


def test_a_disk_full_whose_room_is_back_once_the_run_ended_is_the_runs_own_crash(tmp_path, monkeypatch):
    """BROKE, fixed (red team): a train.py that filled the disk with a file it unlinked but held open, or passed to its
    evaluator over the channel (SCM_RIGHTS), or with empty files until no inode was left, had no file of its own to
    count: the evaluator exited DISK_FULL, the loop stopped unrecorded, and the same run did it at every start (or
    was tried again until it drew a good score). The loop looks at the disk once the evaluator is gone: the room a run
    may take of it back, the run filled it."""
    statvfs_with(monkeypatch, 10 * 2**30)
    outcome = run_with_evaluator(tmp_path, monkeypatch, DISK_FULL, "error: the disk is full")
    assert outcome.status == RunEnd.CRASH and outcome.result is None
    assert outcome.reason.startswith("the run filled the disk: once it ended, 1 GiB or more were free")


@pytest.mark.parametrize("code", [1, 2], ids=["evaluator-traceback", "fork-server-setup-failed"])
def test_an_evaluator_that_died_on_a_full_disk_stops_the_loop_not_records_a_crash(tmp_path, monkeypatch, code):
    """BROKE, fixed (red team): an evaluator that died of a full disk (a traceback: exit 1 started anew, exit 2 forked,
    taken for "could not set up") was a CRASH of the experiment's, or stopped the loop with advice to make a new
    workspace. The loop looks at the disk itself once an evaluator ended without a result: full, it stops so."""
    statvfs_with(monkeypatch, 0)
    with pytest.raises(DiskFullError, match="the disk is full"):
        run_with_evaluator(tmp_path, monkeypatch, code, TRACEBACK)


def test_a_run_that_only_says_the_disk_is_full_is_its_own_crash(tmp_path, monkeypatch):
    """What the run printed decides nothing: with room on the disk, the same failure is recorded as it was."""
    statvfs_with(monkeypatch, 10 * 2**30)
    outcome = run_with_evaluator(tmp_path, monkeypatch, 1, TRACEBACK)
    assert outcome.status == RunEnd.CRASH and "No space left on device" in outcome.reason


def test_a_nearly_full_disk_is_one_with_under_a_mebibyte_or_no_inode_left(tmp_path, monkeypatch):
    statvfs_with(monkeypatch, 2 * disk.ROOM)
    assert not disk.nearly_full(tmp_path)
    statvfs_with(monkeypatch, disk.ROOM // 2)
    assert disk.nearly_full(tmp_path)
    assert not disk.nearly_full(tmp_path / "gone")  # cannot be told: not full


def test_the_runs_output_is_still_read_when_its_log_cannot_be_written(tmp_path):
    """BROKE, fixed: its log's writes failing with ENOSPC stopped the thread that reads the run's output: train.py
    then blocked on a full pipe until the hard timeout. The output is read on, and the referee is told (it stops the
    loop)."""
    read, write = os.pipe()

    class FullLog:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            pass

    def train_py() -> None:
        with os.fdopen(write, "wb") as sink:
            sink.write(b"x" * (1 << 20) + b"\nlast line\n")  # past a pipe's buffer: blocks if nobody reads

    output = Output(os.fdopen(read, "rb"))
    output.attach(FullLog())
    printing = threading.Thread(target=train_py, daemon=True)
    printing.start()
    printing.join(timeout=5)
    assert not printing.is_alive(), "train.py blocked on its output"
    output.finish(timeout=5)
    assert output.disk_full and output.last_line() == "last line"


class StoppedExperiment:
    def stop(self) -> None:
        pass


def referee_of(box: Path, monkeypatch: pytest.MonkeyPatch) -> Referee:
    """A referee as one is when the disk filled during its run; its result, if it writes one, says why."""
    referee = object.__new__(Referee)
    referee.box, referee.experiment = box, StoppedExperiment()
    monkeypatch.setattr(Referee, "_result", lambda self, bpb, why: Reason(why))
    return referee


class Reason:
    def __init__(self, why: str) -> None:
        self.why = why

    def save(self, path: Path, key: str | None) -> None:
        path.write_text(self.why)


def test_a_disk_full_not_of_the_runs_making_ends_the_evaluator_with_disk_full(tmp_path, monkeypatch):
    box = tmp_path / "box"
    (box / ".compile").mkdir(parents=True)
    (box / ".compile" / "kernel").write_bytes(b"k" * 4096)  # what an honest run compiled
    result = tmp_path / "result.json"
    assert referee_of(box, monkeypatch)._out_of_space(result, None, tmp_path / "compile") == DISK_FULL
    assert not result.exists() and box.exists()  # (the box goes as every run's does)


def test_a_run_that_fills_the_disk_with_its_own_files_is_a_crash_of_its_own_and_they_are_deleted(tmp_path, monkeypatch):
    """A train.py that filled the disk through its box on purpose would stop the loop at every start: what it wrote
    itself past OWN_FILES_CAP makes the full disk its doing."""
    monkeypatch.setattr(referee_module, "OWN_FILES_CAP", 64 * 1024)
    box, staged = tmp_path / "box", tmp_path / "compile"
    box.mkdir()
    staged.mkdir()
    (box / "filler").write_bytes(os.urandom(48 * 1024))
    (staged / "kernel").write_bytes(os.urandom(48 * 1024))  # moved out of its box: still its own
    result = tmp_path / "result.json"
    assert referee_of(box, monkeypatch)._out_of_space(result, None, staged) == CRASHED
    assert result.read_text().startswith("the run filled the disk")
    assert not box.exists() and not staged.exists()


def test_a_run_that_hides_its_files_past_path_max_is_still_held_to_them(tmp_path, monkeypatch):
    """A walk with os.walk, as first written, lists nothing past PATH_MAX nor in a folder it cannot read: a run that
    filled the disk from a tree deeper than that passed for one the disk filled around."""
    monkeypatch.setattr(referee_module, "OWN_FILES_CAP", 64 * 1024)
    box = tmp_path / "box"
    box.mkdir()
    fd = os.open(box, os.O_RDONLY)
    try:
        for _ in range(40):  # 40 x 200 characters: past PATH_MAX (4096)
            os.mkdir("d" * 200, dir_fd=fd)
            inner = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        with open(os.open("filler", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "wb") as filler:
            filler.write(os.urandom(96 * 1024))
    finally:
        os.close(fd)
    result = tmp_path / "result.json"
    assert referee_of(box, monkeypatch)._out_of_space(result, None, None) == CRASHED
    assert not box.exists()


def test_the_disk_full_error_crosses_processes_whole():
    """It comes from a Ray node to the loop pickled (loop/ray_executor.py): its message names the node too."""
    error = DiskFullError("a training run (its evaluator's writes)", "then this", "Ray node gpu-7 (/cache/ray)")
    again = pickle.loads(pickle.dumps(error))
    assert (again.what, again.then, again.where, str(again)) == (error.what, error.then, error.where, str(error))
    assert str(again).startswith("the disk is full on Ray node gpu-7 (/cache/ray): free space there, then run again")


# A train.py that hands its evaluator an open file over the channel (SCM_RIGHTS), riding on bytes the evaluator never
# reads: asked for a batch larger than the socket holds, the evaluator waits in its answer while the bytes are queued
# behind the request; read on, it stops the run at the next frame, whose payload (the file's carrier) is refused.
HANDS_A_FILE_OVER = """
import json, os, socket, struct
from autoresearch import harness
from autoresearch.wire import Channel

def frame(header):
    data = json.dumps(header).encode()
    return struct.pack(">I", len(data)) + data

harness.start()
sock = Channel.from_env().sock
held = os.open("held", os.O_WRONLY)
sock.sendall(frame({"op": "batch", "rows": 4096}))
sock.sendall(frame({"op": "step", "payload": 1}))
socket.send_fds(sock, [b"x"], [held])
os.close(held)
while sock.recv(1 << 20):
    pass
"""


@pytest.mark.slow
@pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="needs bubblewrap")
def test_a_file_a_run_handed_its_evaluator_over_the_channel_is_not_held_once_the_run_stopped(
    tmp_path, tiny_prepared, monkeypatch
):
    """BROKE, fixed (red team): the evaluator closed the run's channel only as it exited, and a file descriptor train.py
    sent over it on bytes never read stayed open in the socket's queue meanwhile, while it scored the run: a file
    train.py unlinked held its room on the disk when the evaluator looked at the disk. Now the channel is closed as the
    run is stopped. The file here is a FIFO's writing end: its reader sees its end once no one holds it."""
    monkeypatch.setenv(FORK_ENV, "0")  # the experiment started as a new process: pytest is not forked
    ws = make_workspace(tmp_path / "ws", tiny_prepared)
    referee = Referee(ws.root / "train.py", dict(os.environ))
    try:
        os.mkfifo(referee.box / "held")
        os.chmod(referee.box / "held", 0o666)  # the run drops its privileges
        reader = os.open(referee.box / "held", os.O_RDONLY | os.O_NONBLOCK)
        try:
            with (tmp_path / "log.txt").open("wb") as log:
                code = referee.run(HANDS_A_FILE_OVER.encode(), log, tmp_path / "result.json")
            said = (tmp_path / "log.txt").read_text()
            assert code == CRASHED and "a payload of 1 bytes for 'step'" in said, said
            assert referee.experiment.exit_code() is not None  # the run is over; its evaluator (this process) is not
            assert os.read(reader, 1) == b"", "the evaluator holds the file the run handed over"
        finally:
            os.close(reader)
    finally:
        referee.experiment.stop()
        remove_box(referee.box)
