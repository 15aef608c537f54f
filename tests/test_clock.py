"""The CPU training clock: it counts the experiment's work, whatever else the machine runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from autoresearch.evaluator.clock import CpuClock

# A fixed amount of work, in a grandchild of the measured process (as train.py's own helpers would be).
WORK = "n = 0\nfor i in range(12_000_000): n += i"
EXPERIMENT = (
    f"import subprocess, sys; subprocess.run([sys.executable, '-c', {WORK!r}]); print('done', flush=True); "
    "sys.stdin.read()"
)
HOG = "while True: pass"


def measured() -> tuple[float, float]:
    """Training-clock seconds and wall seconds the work took."""
    experiment = subprocess.Popen(
        [sys.executable, "-c", EXPERIMENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        clock = CpuClock(cores=1, root=psutil.Process(experiment.pid))
        start, started = clock.read(), time.monotonic()
        assert experiment.stdout.readline().strip() == "done"
        return clock.read() - start, time.monotonic() - started
    finally:
        experiment.communicate("")


@pytest.mark.slow  # burns CPU beside a hog: ~5 s
def test_the_cpu_clock_counts_the_work_not_the_load() -> None:
    alone, _ = measured()
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(len(os.sched_getaffinity(0)) + 1)]
    try:
        loaded, loaded_wall = measured()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert loaded_wall > 1.5 * loaded  # the load took the cores away: the wall clock would count it
    # The training clock did not, or much less: caches, clock speed and a hog on the other hyperthread of the
    # same core slow the work itself (CI once measured 1.9 x on two cores).
    assert 0.5 * alone < loaded < 2.5 * alone
    assert alone > 0.3  # it counted the grandchild's work, reaped by its parent before the last reading


def test_the_cpu_clock_never_goes_back() -> None:
    clock = CpuClock(cores=2)
    readings = [clock.read() for _ in range(50)]
    assert readings == sorted(readings)
