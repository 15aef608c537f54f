"""Signals held back while something must not be cut short."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def deferred(*signums: int) -> Iterator[None]:
    """These signals, arriving during the block, take effect (their handlers run) at its end. Elsewhere than in the
    main thread, which alone runs signal handlers, nothing to defer."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    handlers = {signum: signal.signal(signum, lambda signum, _frame: arrived.append(signum)) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)
