"""The driver's clock: real in the loop; bench/simulate.py passes a simulated one, so that hours of runs on many
workers are scheduled, judged and measured in seconds on a CPU, through the loop's own code."""

from __future__ import annotations

import queue
import time
from typing import Any, Protocol

# A wait of the loop's main thread returns to Python at least this often: a Ctrl-C whose signal came just before
# the wait began, or went to another thread (numpy's), is acted on only when the main thread runs Python again.
SIGNAL_CHECK_S = 0.5


class Clock(Protocol):
    def now(self) -> float:
        """Seconds, monotonic."""

    def sleep(self, seconds: float) -> None: ...

    def next_event(self, events: queue.SimpleQueue, timeout: float, until: float | None = None) -> Any:
        """The next report of a worker or an ask; queue.Empty after `timeout` seconds without one (a simulated
        clock: once its time passes `until`, if given, before the next report)."""


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def next_event(self, events: queue.SimpleQueue, timeout: float, until: float | None = None) -> Any:
        return events.get(timeout=timeout)  # `timeout` is short: the caller looks at the time itself


def wait_step(deadline: float | None) -> float:
    """How long the next wait before `deadline` (None: none) may block: SIGNAL_CHECK_S at most, 0 once it has come."""
    if deadline is None:
        return SIGNAL_CHECK_S
    return max(0.0, min(deadline - time.monotonic(), SIGNAL_CHECK_S))


def sleep_awake(seconds: float) -> None:
    """time.sleep, returning to Python every SIGNAL_CHECK_S: a long pause of the loop still stops on Ctrl-C."""
    end = time.monotonic() + seconds
    while (wait := wait_step(end)) > 0:
        time.sleep(wait)
