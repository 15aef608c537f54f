"""Processes a killed loop leaves behind: a training run's, a coding agent's.

Each is started in a process group of its own, whose leader's pid and start time go into a pid file; the next
start kills that group (`reap`), before anything else touches what it could still be writing to. The start
time tells a leader from an unrelated process that got its pid since.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil


def write_pid_file(path: Path, pid: int) -> None:
    """The process's pid and start time: together they name it even after the pid is reused."""
    try:
        path.write_text(f"{pid} {psutil.Process(pid).create_time()}")
    except psutil.Error:  # already gone
        path.write_text(f"{pid} 0")


def reap(pid_file: Path) -> bool:
    """Kill the process group named by `pid_file`, if its leader still runs; True if one was killed. Never this
    process's own group, nor one whose named process leads no group: only what the loop started fits."""
    try:
        text, created = pid_file.read_text().split()
        pid = int(text)
        if psutil.Process(pid).create_time() != float(created):
            return False  # that pid now belongs to another process
        if os.getpgid(pid) != pid or pid == os.getpgrp():
            return False
        os.killpg(pid, signal.SIGKILL)
        return True
    except (OSError, ValueError, psutil.Error):
        return False
