"""The training data, served by the trusted side and counted there.

The experiment cannot open the shards: it asks for rows. Before the clock starts it gets uniformly
random tokens (compilation and warm-up need batches of the right shape, and training on them teaches
nothing); from the clock's start to the deadline it gets the training rows in a fixed pseudo-random
order, the same for every experiment, epoch after epoch; after the deadline, random tokens again.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from autoresearch.data.shards import REPAIR_HINT, Manifest, open_shard
from autoresearch.data.sources import TRAIN
from autoresearch.files import file_sha256

DATA_ORDER_SEED = 1337
MAX_ROWS_PER_BATCH = 1 << 16  # a request for more is a broken or hostile experiment


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


class Feeder:
    """Rows of the train split (uint16, seq_len + 1 tokens each), or random tokens, as bytes."""

    def __init__(self, data_dir: Path, manifest: Manifest, vocab_size: int):
        self.shards = [s for s in (open_shard(data_dir, i, verify=False) for i in manifest.split(TRAIN)) if len(s)]
        if not self.shards:
            raise ValueError(f"{data_dir} has no training rows")
        self.row_len = self.shards[0].shape[1]
        self.vocab_size = vocab_size
        self._offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.order = RowOrder(int(self._offsets[-1]))
        self._noise = np.random.default_rng()
        self.rows_served = 0  # training rows, not noise
        # The shards are hashed while the run trains (hashlib releases the GIL), not before it.
        self._problem: str | None = None
        self._check = threading.Thread(target=self._verify, args=(data_dir, manifest), daemon=True, name="verify")
        self._check.start()

    def problem(self) -> str | None:
        """Why the training data cannot be trusted (a shard changed on disk), once the check is done."""
        self._check.join()
        return self._problem

    def _verify(self, data_dir: Path, manifest: Manifest) -> None:
        for info in manifest.split(TRAIN):
            path = data_dir / f"{info.name}.bin"
            try:
                if file_sha256(path) != info.sha256:
                    self._problem = f"a train shard is corrupt ({path} does not match its SHA-256); {REPAIR_HINT}"
                    return
            except OSError as exc:
                self._problem = f"a train shard cannot be read ({exc}); {REPAIR_HINT}"
                return

    def rows(self, n: int) -> bytes:
        """The next `n` training rows."""
        idx = self.order.take(n)
        which = np.searchsorted(self._offsets, idx, side="right") - 1
        out = np.empty((n, self.row_len), dtype=np.uint16)
        for s in np.unique(which):
            mask = which == s
            out[mask] = self.shards[s][idx[mask] - self._offsets[s]]
        self.rows_served += n
        return out.tobytes()

    def noise(self, n: int) -> bytes:
        """`n` rows of uniformly random tokens: batches of the right shape that carry no information."""
        return self._noise.integers(0, self.vocab_size, (n, self.row_len), dtype=np.uint16).tobytes()
