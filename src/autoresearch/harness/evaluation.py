"""The metric: validation bits per byte, computed by the harness from the model's logits.

    val_bpb = sum over target tokens of cross-entropy in nats / (ln 2 * sum of their raw byte lengths)

Special tokens (BOS) have byte length 0 and are excluded from both sums. The evaluation rows, their
length and their number are fixed by the preset. Also here: the causality probe, which catches a
model whose predictions at one position depend on tokens after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from autoresearch.harness.device import autocast

CE_CHUNK_ELEMENTS = 2**27  # eager scoring takes logits this many at a time: a 512 MiB float32 copy at most
NONDETERMINISM_LIMIT = 0.1  # nats of one input may differ this much between calls (kernel noise)


class NonFiniteLogits(Exception):
    pass


@dataclass(frozen=True)
class Score:
    nats: float
    bytes: int
    tokens: int

    @property
    def bpb(self) -> float:
        return self.nats / (math.log(2) * self.bytes)


def call_model(model: Callable, idx: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """`model(idx)` must return logits (batch, seq, >= vocab); columns past the vocabulary are ignored."""
    logits = model(idx)
    if not isinstance(logits, torch.Tensor) or logits.shape[:-1] != idx.shape or logits.shape[-1] < vocab_size:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model(idx) must return logits of shape {(*idx.shape, vocab_size)}, got {shape}")
    return logits[..., :vocab_size]


class Scorer:
    """Cross-entropy in nats of every target token of a batch, from the model's logits.

    On CUDA the loss is compiled, so the logits are read once and never copied to float32; elsewhere
    it is taken in chunks to bound the float32 copy. The model itself runs as train.py left it.
    """

    def __init__(self, model: Callable, vocab_size: int, device: torch.device):
        self.model, self.vocab_size, self.device = model, vocab_size, device
        self._loss = torch.compile(_token_nats, dynamic=False) if device.type == "cuda" else _token_nats_chunked

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()  # one memory layout for every call: a compiled model is not compiled again
        with autocast(self.device):
            logits = call_model(self.model, x, self.vocab_size)
        return self._loss(logits, y)


def _token_nats(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view(targets.shape)


def _token_nats_chunked(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    flat, flat_targets = logits.flatten(0, 1), targets.flatten()
    out = torch.empty(flat_targets.shape, dtype=torch.float32, device=logits.device)
    step = max(1, CE_CHUNK_ELEMENTS // logits.shape[-1])
    for i in range(0, len(out), step):
        out[i : i + step] = F.cross_entropy(flat[i : i + step].float(), flat_targets[i : i + step], reduction="none")
    return out.view(targets.shape)


def batch_size_for(rows: int, limit: int) -> int:
    """The largest batch <= limit that divides `rows` exactly (one compiled shape, no ragged last batch)."""
    size = max(1, min(limit, rows))
    while rows % size:
        size -= 1
    return size


@torch.inference_mode()
def score_rows(scorer: Scorer, rows: np.ndarray, token_bytes: torch.Tensor, batch_size: int) -> Score:
    """Score every row of `rows` (n, seq_len + 1); on running out of memory, retry with half the batch."""
    device = scorer.device
    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    start = 0
    while start < len(rows):
        batch = torch.from_numpy(rows[start : start + batch_size].astype(np.int64)).to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        try:
            per_token = scorer(x, y)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            del batch, x, y
            torch.cuda.empty_cache()
            batch_size = batch_size_for(len(rows) - start, batch_size // 2)
            continue
        counted = token_bytes[y]
        nats += (per_token.double() * (counted > 0)).sum()
        nbytes += counted.sum()
        start += len(batch)
    total = nats.item()
    if not math.isfinite(total):
        raise NonFiniteLogits("the loss on the validation set is not finite (NaN or inf logits)")
    return Score(nats=total, bytes=int(nbytes.item()), tokens=len(rows) * (rows.shape[1] - 1))


@torch.inference_mode()
def causality_violation(scorer: Scorer, rows: np.ndarray) -> str | None:
    """Why the model looks ahead, or None if it does not.

    The batch is scored twice unchanged, to measure run-to-run noise. Then, for each of the first four
    rows r, every input from a cut point p_r on is replaced, and every other row too; the targets of the
    positions before p_r are kept. The loss at a position t < p_r may depend only on the inputs up to t
    and on its own target, so it may not move beyond the noise. (Inputs and targets are replaced
    separately: the input at p_r is the target of position p_r - 1, and keeping it would let a model
    that reads the next input, its own target, pass.)
    """
    batch = torch.from_numpy(rows.astype(np.int64)).to(scorer.device)
    x, y = batch[:, :-1], batch[:, 1:]
    seq = x.shape[1]
    gen = torch.Generator().manual_seed(0)
    before = scorer(x, y).float()
    jitter = (before - scorer(x, y).float()).abs().max().item()
    if not jitter <= NONDETERMINISM_LIMIT:
        return f"causality probe: the same input scored {jitter:.3g} nats apart; the model is not deterministic"
    for r, cut in enumerate((seq // 2, seq // 8, (3 * seq) // 4, 1)[: len(batch)]):
        keep = torch.zeros_like(x, dtype=torch.bool)
        keep[r, :cut] = True
        noise = torch.randint(1, scorer.vocab_size, x.shape, generator=gen).to(scorer.device)
        after = scorer(torch.where(keep, x, noise), torch.where(keep, y, noise)).float()
        moved = (before[r, :cut] - after[r, :cut]).abs().max().item()
        if not moved <= 1e-3 + 10 * jitter:
            return (
                f"causality probe: the loss before position {cut} changed by {moved:.3g} nats when only later "
                f"tokens (or other rows) changed; the model sees the future (run-to-run noise {jitter:.3g})"
            )
    return None
