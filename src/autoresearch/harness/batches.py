"""Training batches as the experiment sees them: rows asked of the evaluator, put on the device.

On CUDA a thread keeps a few requests ahead in pinned memory, so the GPU never waits for the channel;
batches fetched ahead before the clock started (random tokens) are dropped once it has.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import torch

from autoresearch.wire import Channel, ChannelClosed

PREFETCH_BATCHES = 3


class TrainBatches(Iterator[tuple[torch.Tensor, torch.Tensor]]):
    """Endless `(inputs, targets)` int64 batches of shape (batch_size, row_len - 1) on `device`."""

    def __init__(self, channel: Channel, batch_size: int, row_len: int, device: torch.device):
        self.batch_size, self.row_len, self.device = batch_size, row_len, device
        self.tokens_served = 0
        self._channel = channel
        self._clock_running = False
        self._queue: queue.Queue | None = None
        if device.type == "cuda":
            self._queue = queue.Queue(maxsize=PREFETCH_BATCHES)
            threading.Thread(target=self._produce, daemon=True, name="train-batches").start()

    def clock_started(self) -> None:
        self._clock_running = True

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            data, rows = self._queue.get() if self._queue is not None else self._fetch()
            if isinstance(rows, BaseException):
                raise rows
            if data or not self._clock_running or self._queue is None:
                break  # a prefetched batch of random tokens from before the clock is not served after it
        rows = rows.to(self.device, non_blocking=True).to(torch.int64) & 0xFFFF  # uint16 tokens, sent as int16
        self.tokens_served += self.batch_size * (self.row_len - 1)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def _fetch(self) -> tuple[bool, torch.Tensor]:
        header, payload = self._channel.request({"op": "batch", "rows": self.batch_size})
        rows = torch.frombuffer(bytearray(payload), dtype=torch.int16).view(self.batch_size, self.row_len)
        return bool(header.get("data")), rows

    def _produce(self) -> None:
        assert self._queue is not None
        while True:
            try:
                data, rows = self._fetch()
                self._queue.put((data, rows.pin_memory()))
            except (ChannelClosed, RuntimeError) as exc:
                self._queue.put((False, exc))
                return
