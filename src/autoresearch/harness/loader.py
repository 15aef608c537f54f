"""Training batches from the packed train shards: never the validation split, never a stalled GPU.

Rows are served in a fixed pseudo-random order (the same for every experiment, so two runs of a
workspace see the same data), epoch after epoch. On CUDA the whole train split is copied to the GPU
once when it fits in a quarter of free memory, so a batch is a single gather kernel; otherwise a
background thread gathers batches from the memory-mapped shards into pinned memory ahead of use.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

DATA_ORDER_SEED = 1337
PREFETCH_BATCHES = 4


class RowOrder:
    """Global row indices in a fixed shuffled order, reshuffled each epoch."""

    def __init__(self, num_rows: int, seed: int = DATA_ORDER_SEED):
        self.num_rows = num_rows
        self.seed = seed
        self.epoch = 0
        self._perm = np.empty(0, dtype=np.int64)
        self._pos = 0

    def take(self, n: int) -> np.ndarray:
        out = []
        while n:
            if self._pos == len(self._perm):
                self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows)
                self._pos = 0
                self.epoch += 1
            chunk = self._perm[self._pos : self._pos + n]
            self._pos += len(chunk)
            n -= len(chunk)
            out.append(chunk)
        return np.concatenate(out)


class TrainBatches(Iterator[tuple[torch.Tensor, torch.Tensor]]):
    """Endless `(inputs, targets)` int64 batches of shape (batch_size, seq_len) on `device`."""

    def __init__(self, shards: list[np.ndarray], batch_size: int, device: torch.device):
        self.shards = [s for s in shards if len(s)]
        self.batch_size = batch_size
        self.device = device
        self.row_len = self.shards[0].shape[1]
        self._offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.order = RowOrder(int(self._offsets[-1]))
        self.tokens_served = 0
        self._resident = self._upload() if device.type == "cuda" else None
        self._queue: queue.Queue | None = None
        if device.type == "cuda" and self._resident is None:
            self._queue = queue.Queue(maxsize=PREFETCH_BATCHES)
            threading.Thread(target=self._produce, daemon=True, name="train-batches").start()

    @property
    def epoch(self) -> int:
        return self.order.epoch

    @property
    def on_device(self) -> bool:
        return self._resident is not None

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._resident is not None:
            idx = torch.from_numpy(self.order.take(self.batch_size)).to(self.device, non_blocking=True)
            rows = self._resident.index_select(0, idx).to(torch.int64) & 0xFFFF
        elif self._queue is not None:
            rows = self._queue.get().to(self.device, non_blocking=True)
        else:
            rows = self._gather(self.order.take(self.batch_size)).to(self.device)
        self.tokens_served += self.batch_size * (self.row_len - 1)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def _gather(self, idx: np.ndarray) -> torch.Tensor:
        """Rows `idx` (global numbering) from the memory-mapped shards, as int64."""
        which = np.searchsorted(self._offsets, idx, side="right") - 1
        out = np.empty((len(idx), self.row_len), dtype=np.int64)
        for s in np.unique(which):
            mask = which == s
            out[mask] = self.shards[s][idx[mask] - self._offsets[s]]
        return torch.from_numpy(out)

    def _produce(self) -> None:
        assert self._queue is not None
        while True:
            self._queue.put(self._gather(self.order.take(self.batch_size)).pin_memory())

    def _upload(self) -> torch.Tensor | None:
        nbytes = sum(s.nbytes for s in self.shards)
        free, _ = torch.cuda.mem_get_info(self.device)
        if nbytes > free // 4:
            return None
        data = torch.empty((int(self._offsets[-1]), self.row_len), dtype=torch.int16, device=self.device)
        for s, start in zip(self.shards, self._offsets, strict=False):
            data[start : start + len(s)].copy_(torch.from_numpy(np.ascontiguousarray(s).view(np.int16)))
        return data
