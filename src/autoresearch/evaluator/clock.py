"""The training clock, read by the evaluator: what the budget is counted in.

On a GPU it is the wall clock: the GPU is the experiment's alone, so wall time is what it had. On a CPU
the cores are shared with whatever else the machine runs, and wall time would follow that load, not
the change under test; there the clock is the CPU time of the experiment's processes (all of their
threads, and every process they started), divided by the cores the experiment is given. On an idle
machine one budget second is about one wall second; on a busy one, the run takes longer in wall time
and trains as much as it would have alone.
"""

from __future__ import annotations

import time
from typing import Protocol

import psutil

WALL, CPU = "wall", "cpu"
WALL_CLOCK = "wall clock"  # how a result names the wall clock (`describe`)


class TrainingClock(Protocol):
    kind: str  # WALL or CPU
    cores: float  # CPU: the cores one budget second stands for (a quota may be a fraction); WALL: 1

    def read(self) -> float:
        """Seconds on this clock; only differences mean anything."""


class WallClock:
    kind, cores = WALL, 1

    def read(self) -> float:
        return time.monotonic()


class CpuClock:
    """CPU seconds of every process under `root` (this process's children, itself excluded) / `cores`.

    A process that ended and was reaped is counted in its parent's children's times; the clock never goes
    back (a process read between its own end and its parent's reaping could be missed for a moment).
    """

    kind = CPU

    def __init__(self, cores: float, root: psutil.Process | None = None):
        self.cores = cores if cores > 0 else 1.0
        self.root = root or psutil.Process()
        self._last = 0.0

    def read(self) -> float:
        reaped = self.root.cpu_times()
        total = reaped.children_user + reaped.children_system
        for proc in self.root.children(recursive=True):
            try:
                t = proc.cpu_times()
            except psutil.Error:  # ended meanwhile: its time shows in its parent's children's times
                continue
            total += t.user + t.system + t.children_user + t.children_system
        self._last = max(self._last, total / self.cores)
        return self._last


def describe(clock: TrainingClock) -> str:
    """How the budget was counted, for results and logs."""
    return WALL_CLOCK if clock.kind == WALL else f"CPU time / {clock.cores:g} cores"
