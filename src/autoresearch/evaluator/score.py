"""The metric: validation bits per byte, computed by the harness from the model's logits.

    val_bpb = sum over target tokens of cross-entropy in nats / (ln 2 * sum of their raw byte lengths)

Special tokens (BOS) have byte length 0 and are excluded from both sums. The evaluation rows, their
length and their number are fixed by the preset. Also here: the causality probe, which catches a
model whose predictions at one position depend on tokens after it, and `score_program`, both applied to the model
a run handed over.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from autoresearch.data.tokenizer import Tokenizer
from autoresearch.device import autocast
from autoresearch.evaluator.program import Program, ShapeCompiled

CE_CHUNK_ELEMENTS = 2**27  # eager scoring takes logits this many at a time: a 512 MiB float32 copy at most
EVAL_LOGITS_ELEMENTS = 2**30  # cap on batch x seq x vocab per evaluation batch (2 GiB of bf16 logits)
EVAL_MIN_BATCHES = 16  # batches per evaluation at least: the probe's re-scored first batch is at most 1/16 of it
NONDETERMINISM_LIMIT = 0.1  # nats of one input may differ this much between calls (kernel noise)
PROBE_SIGMAS = 4.0  # a mean rise this many standard errors above the noise is a look-ahead
# Rows the probe cuts, at least (all of a smaller evaluation): each tests one position, so a model that reads its
# target at a fraction f of positions passes with a chance of (1 - f) ** rows. With 2,048 rows what passes half
# the time is f = 0.034 %, worth that share of val_bpb (the h100 preset's margin is ~1 %), for a fifth of its
# evaluation's time (all of its 10,240 rows would double it; its first batch alone, 64 rows, let f = 1 % pass).
PROBE_MIN_ROWS = 2048


class NonFiniteLogits(Exception):
    pass


@dataclass(frozen=True)
class Score:
    nats: float
    bytes: int
    tokens: int
    per_token: torch.Tensor | None = None  # per-token nats of every row, in order, for the causality probe

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


def _scored_reseeded(scorer: Scorer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-token loss, every global random generator reset first: a model that samples repeats itself."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)  # also every CUDA device's generator
    return scorer(x, y).float()


def eval_batch_size(rows: int, seq_len: int, vocab_size: int) -> int:
    """Rows per evaluation batch, fixed by the apparatus (the graph is exported for exactly this shape):
    the logits of a batch stay under EVAL_LOGITS_ELEMENTS, the evaluation has at least EVAL_MIN_BATCHES
    batches, and the batches divide the rows exactly."""
    cap = max(1, EVAL_LOGITS_ELEMENTS // (seq_len * vocab_size))
    return batch_size_for(rows, min(cap, max(1, rows // EVAL_MIN_BATCHES)))


@torch.inference_mode()
def score_rows(scorer: Scorer, rows: np.ndarray, token_bytes: torch.Tensor, batch_size: int) -> Score:
    """Score every row of `rows` (n, seq_len + 1), `batch_size` rows at a time (it divides n)."""
    device = scorer.device
    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    per_token = torch.zeros(rows.shape[0], rows.shape[1] - 1, dtype=torch.float32, device=device)
    for start in range(0, len(rows), batch_size):
        batch = torch.from_numpy(rows[start : start + batch_size].astype(np.int64)).to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        per_token[start : start + batch_size] = _scored_reseeded(scorer, x, y)
        counted = token_bytes[y]
        nats += (per_token[start : start + batch_size].double() * (counted > 0)).sum()
        nbytes += counted.sum()
    total = nats.item()
    if not math.isfinite(total):
        raise NonFiniteLogits("the loss on the validation set is not finite (NaN or inf logits)")
    return Score(nats=total, bytes=int(nbytes.item()), tokens=len(rows) * (rows.shape[1] - 1), per_token=per_token)


def probed_rows(rows: int, batch_size: int) -> int:
    """How many of the evaluation's rows (in its secret order) the probe cuts: whole batches, PROBE_MIN_ROWS at least,
    all of them if there are fewer."""
    return min(rows, -(-PROBE_MIN_ROWS // batch_size) * batch_size)


@torch.inference_mode()
def causality_violation(
    scorer: Scorer, rows: np.ndarray, evaluated: torch.Tensor | None = None, batch_size: int | None = None
) -> str | None:
    """Why the model looks ahead, or None if it does not.

    Every call starts from the same random state, so a model that samples from PyTorch's, NumPy's or
    Python's generator repeats itself. `evaluated` is the per-token loss the evaluation took of `rows`
    (scored here if not given), `batch_size` rows at a time (all of them by default). The probe scores the
    first batch again, unchanged: what moved is the noise left, and a model that scored better in the
    evaluation than here looks ahead only when it is not probed. Then it cuts every row at a random point and
    replaces every input and target from there on by a random token (inputs and targets separately: the
    input at the cut is the target of the position before it, and keeping it would let a model that reads
    its own target pass). Two checks:

    1. The loss at every position before a cut may not move beyond the noise.
    2. A look-ahead that helps, at any distance, raises the loss at the last position before the cut in
       every row; noise does not. The mean rise over the rows may not exceed PROBE_SIGMAS standard
       errors: this catches a look-ahead hidden in noise too large for check 1 to see at any position.

    Each row tests one position, the one before its cut, so many rows are cut (the caller passes
    `probed_rows` of the evaluation's: PROBE_MIN_ROWS at least): a model that reads its target at a small
    fraction f of positions passes with a chance of (1 - f) ** rows, which one batch of rows left high enough
    to gain several per cent of val_bpb. It costs a call per batch, and one.
    """
    batch_size = batch_size or len(rows)
    gen = torch.Generator().manual_seed(secrets.randbits(63))
    batches = [torch.from_numpy(rows[i : i + batch_size].astype(np.int64)).to(scorer.device)
               for i in range(0, len(rows), batch_size)]  # fmt: skip
    if evaluated is None:
        evaluated = torch.cat([_scored_reseeded(scorer, b[:, :-1], b[:, 1:]) for b in batches])
    first = evaluated[:batch_size].float()
    drift = _scored_reseeded(scorer, batches[0][:, :-1], batches[0][:, 1:]) - first  # > 0: the evaluation scored lower
    jitter = drift.abs().max().item()
    if not jitter <= NONDETERMINISM_LIMIT:
        return (
            f"causality probe: the same rows scored up to {jitter:.3g} nats apart in the evaluation and when "
            "probed; the model is not deterministic"
        )
    mean, error = _mean_and_error(drift.mean(1))
    if not mean <= 1e-3 + PROBE_SIGMAS * error:
        return (
            f"causality probe: the evaluation's first batch scored {mean:.3g} nats per token better than the "
            f"same rows when probed (standard error {error:.3g}); the model behaves differently when probed"
        )
    moved, rises = 0.0, []
    for batch, before in zip(batches, evaluated.split(batch_size), strict=True):
        x, y = batch[:, :-1], batch[:, 1:]
        cuts = torch.randint(1, x.shape[1], (len(x), 1), generator=gen).to(scorer.device)
        kept = torch.arange(x.shape[1], device=scorer.device) < cuts
        change = _scored_with_noise(scorer, x, y, kept, gen) - before.float()
        moved = max(moved, torch.where(kept, change.abs(), 0.0).max().item())
        rises.append(change.gather(1, cuts - 1))  # per row: the change at the last position before its cut
    sees_future = f"the model sees the future (run-to-run noise {jitter:.3g})"
    if not moved <= 1e-3 + 10 * jitter:
        return (
            f"causality probe: the loss before a cut changed by up to {moved:.3g} nats when only later tokens "
            f"(or other rows) changed; {sees_future}"
        )
    mean, error = _mean_and_error(torch.cat(rises).flatten())
    if not mean <= 1e-3 + PROBE_SIGMAS * error:
        return (
            f"causality probe: the loss just before a cut rose by {mean:.3g} nats on average over {len(rows)} rows "
            f"(standard error {error:.3g}) when only later tokens changed; {sees_future}"
        )
    return None


def _scored_with_noise(
    scorer: Scorer, x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Per-token loss with every input and target outside `keep` replaced by a random token."""
    noise = torch.randint(1, scorer.vocab_size, x.shape, generator=gen).to(scorer.device)
    return _scored_reseeded(scorer, torch.where(keep, x, noise), torch.where(keep, y, noise))


def _mean_and_error(samples: torch.Tensor) -> tuple[float, float]:
    """The mean of one value per row, and its standard error (0 for a single row)."""
    error = (samples.std() / math.sqrt(len(samples))).item() if len(samples) > 1 else 0.0
    return samples.mean().item(), error


def score_program(
    program: Program,
    val_rows: np.ndarray,
    tokenizer: Tokenizer,
    batch_size: int,
    compiled: ShapeCompiled | None = None,
) -> tuple[float, str | None, str | None]:
    """val_bpb of the handed-over model on the validation rows; why it is invalid (the causality probe, or
    weights it changed while running), if it is; and why the graph ran eagerly on CUDA, if it did. The
    program runs `compiled` where given (compiled ahead, evaluator/ahead.py), compiled here on CUDA, else as
    it is."""
    device = program.device
    model = compiled or (ShapeCompiled(program) if device.type == "cuda" else program.module)
    scorer = Scorer(model, tokenizer.vocab_size, device)
    # A secret order: the probe takes the first batch, which the model cannot pick out in advance.
    rows = val_rows[np.random.default_rng(secrets.randbits(64)).permutation(len(val_rows))]
    token_bytes = torch.from_numpy(tokenizer.token_bytes().astype(np.int64)).to(device)
    score = score_rows(scorer, rows, token_bytes, batch_size)
    probed = probed_rows(len(rows), batch_size)
    why = causality_violation(scorer, rows[:probed], score.per_token[:probed], batch_size)
    if program.changed():
        why = "the model changed its own weights while it was evaluated (it keeps state from call to call)"
    return score.bpb, why, getattr(model, "eager_because", None)
