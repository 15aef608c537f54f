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

from autoresearch.harness.device import autocast

CE_CHUNK_ELEMENTS = 2**27  # logits scored per chunk: bounds the float32 copy to 512 MiB
NONDETERMINISM_LIMIT = 0.1  # logits of one input may differ this much between calls (kernel noise)


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


def token_nats(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy in nats, in float32, a chunk of rows at a time."""
    vocab = logits.shape[-1]
    flat, tgt = logits.reshape(-1, vocab), targets.reshape(-1)
    step = max(1, CE_CHUNK_ELEMENTS // vocab)
    out = torch.empty(tgt.shape, dtype=torch.float32, device=logits.device)
    for i in range(0, len(tgt), step):
        chunk = flat[i : i + step].float()
        out[i : i + step] = torch.logsumexp(chunk, dim=-1) - chunk.gather(1, tgt[i : i + step, None]).squeeze(1)
    return out


def call_model(model: Callable, idx: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """`model(idx)` must return logits (batch, seq, >= vocab); columns past the vocabulary are ignored."""
    logits = model(idx)
    if not isinstance(logits, torch.Tensor) or logits.shape[:2] != idx.shape or logits.shape[2] < vocab_size:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model(idx) must return logits of shape {(*idx.shape, vocab_size)}, got {shape}")
    return logits[..., :vocab_size]


@torch.inference_mode()
def score_rows(
    model: Callable, rows: np.ndarray, token_bytes: torch.Tensor, batch_size: int, device: torch.device
) -> Score:
    """Score every row of `rows` (n, seq_len + 1); on running out of memory, retry with half the batch."""
    vocab = len(token_bytes)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    start = 0
    while start < len(rows):
        batch = torch.from_numpy(rows[start : start + batch_size].astype(np.int64)).to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        try:
            with autocast(device):
                logits = call_model(model, x, vocab)
            per_token = token_nats(logits, y)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            del batch, x, y
            torch.cuda.empty_cache()
            batch_size //= 2
            continue
        counted = token_bytes[y].reshape(-1)
        nats += (per_token.double() * (counted > 0)).sum()
        nbytes += counted.sum()
        start += len(batch)
    total = nats.item()
    if not math.isfinite(total):
        raise NonFiniteLogits("the loss on the validation set is not finite (NaN or inf logits)")
    return Score(nats=total, bytes=int(nbytes.item()), tokens=len(rows) * (rows.shape[1] - 1))


@torch.inference_mode()
def causality_violation(model: Callable, rows: np.ndarray, vocab_size: int, device: torch.device) -> str | None:
    """Why the model looks ahead, or None if it does not.

    The batch is scored twice unchanged, to measure run-to-run noise. Then, for each of the first
    four rows r, every token after a cut point p_r is replaced, and every other row too: the logits
    of row r at positions <= p_r may not move beyond the noise, since they may depend only on tokens
    at or before p_r in their own row.
    """
    batch = torch.from_numpy(rows[:, :-1].astype(np.int64)).to(device)
    seq = batch.shape[1]
    gen = torch.Generator().manual_seed(0)
    with autocast(device):
        before = call_model(model, batch, vocab_size).float()
        jitter = (before - call_model(model, batch, vocab_size).float()).abs().max().item()
        if not jitter <= NONDETERMINISM_LIMIT:
            return f"causality probe: the same input gave logits {jitter:.3g} apart; the model is not deterministic"
        for r, cut in enumerate((seq // 2, seq // 8, (3 * seq) // 4, 0)[: len(batch)]):
            keep = torch.zeros_like(batch, dtype=torch.bool)
            keep[r, : cut + 1] = True
            noise = torch.randint(1, vocab_size, batch.shape, generator=gen).to(device)
            after = call_model(model, torch.where(keep, batch, noise), vocab_size).float()
            moved = (before[r, : cut + 1] - after[r, : cut + 1]).abs().max().item()
            if not moved <= 1e-3 + 10 * jitter:
                return (
                    f"causality probe: logits at positions <= {cut} changed by {moved:.3g} when only later "
                    f"tokens (or other rows) changed; the model sees the future (run-to-run noise {jitter:.3g})"
                )
    return None
