"""The driver's clock: real in the loop; bench/simulate.py passes a simulated one, so that hours of runs on many
workers are scheduled, judged and measured in seconds on a CPU, through the loop's own code."""

from __future__ import annotations

import queue
import time
from typing import Any, Protocol


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
