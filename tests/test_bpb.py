"""Bits per byte: computed by the harness from the logits, exactly, robust to bad logits and to low memory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from autoresearch.config.presets import get_preset
from autoresearch.evaluator.score import NonFiniteLogits, Scorer, batch_size_for, eval_batch_size, score_rows

CPU = torch.device("cpu")
# A 5-token vocabulary: BOS, "a", the first and the second byte of "ä" (each alone is not UTF-8), "abc".
TOKENS = [b"", b"a", b"\xc3", b"\xa4", b"abc"]
TOKEN_BYTES = torch.tensor([len(t) for t in TOKENS])
PROBS = [0.1, 0.2, 0.3, 0.15, 0.25]
ROWS = np.array(
    [
        [0, 1, 2, 3, 0, 4],  # targets 1 2 3 BOS 4
        [0, 4, 4, 1, 0, 2],  # targets 4 4 1 BOS 2
    ]
)


def constant_model(probs: list[float]):
    """Logits that give the same next-token distribution everywhere."""
    logits = torch.tensor(probs, dtype=torch.float64).log().float()
    return lambda idx: logits.expand(*idx.shape, len(probs))


def score(model, rows: np.ndarray = ROWS, batch_size: int = 2, vocab: int = 5, token_bytes=TOKEN_BYTES):
    return score_rows(Scorer(model, vocab, CPU), rows, token_bytes, batch_size)


def test_bpb_matches_hand_computation_excluding_bos_and_counting_partial_utf8_bytes() -> None:
    # Targets that count: 1 2 3 4 (row 0) and 4 4 1 2 (row 1); the two BOS targets count for nothing.
    nats = -(2 * math.log(0.2) + 2 * math.log(0.3) + math.log(0.15) + 3 * math.log(0.25))
    nbytes = (1 + 1 + 1 + 3) + (3 + 3 + 1 + 1)  # the partial-UTF-8 tokens 2 and 3 are one byte each
    result = score(constant_model(PROBS))
    assert result.bytes == nbytes == 14
    assert result.tokens == 10
    assert result.nats == pytest.approx(nats, rel=1e-6)
    assert result.bpb == pytest.approx(nats / (math.log(2) * 14), rel=1e-6)
    # Decoding tokens 2 and 3 alone gives U+FFFD, three bytes each: that count would be wrong.
    assert len(b"\xc3".decode("utf-8", "replace").encode()) == 3


def test_bpb_of_a_uniform_model_is_log2_vocab_over_bytes_per_token() -> None:
    rows = np.array([[0, 4, 4, 4, 4]])  # four 3-byte targets
    result = score(constant_model([0.2] * 5), rows=rows, batch_size=1)
    assert result.bpb == pytest.approx(math.log2(5) / 3, rel=1e-6)


def test_logit_columns_past_the_vocabulary_are_ignored() -> None:
    base = constant_model(PROBS)

    def padded(idx):  # vocabulary padded to 8 columns, with large logits in the padding
        logits = base(idx)
        return torch.cat([logits, torch.full((*idx.shape, 3), 50.0)], dim=-1)

    assert score(padded).nats == pytest.approx(score(base).nats, rel=1e-6)


def test_model_returning_the_wrong_shape_is_rejected_with_the_expected_shape() -> None:
    with pytest.raises(ValueError, match=r"\(2, 5, 5\)"):
        score(lambda idx: torch.zeros(idx.shape[0], 5))
    with pytest.raises(ValueError, match="tuple"):
        score(lambda idx: (torch.zeros(*idx.shape, 5), None))
    with pytest.raises(ValueError):  # fewer columns than the vocabulary
        score(lambda idx: torch.zeros(*idx.shape, 4))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_logits_raise_NonFiniteLogits(bad: float) -> None:
    base = constant_model(PROBS)

    def broken(idx):
        logits = base(idx).clone()
        logits[-1, 2, :] = bad  # one position of one row
        return logits

    with pytest.raises(NonFiniteLogits):
        score(broken)


def test_out_of_memory_is_raised_for_the_evaluator_to_report() -> None:
    def hopeless(idx):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.OutOfMemoryError):
        score(hopeless, batch_size=2)


def test_score_does_not_depend_on_the_batch_size() -> None:
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 5, size=(6, 7))
    model = lambda idx: torch.nn.functional.one_hot(idx, 5).float() * 2.0  # depends on the input
    scores = [score(model, rows=rows, batch_size=b) for b in (1, 2, 3, 6)]
    assert len({s.bytes for s in scores}) == 1
    assert all(s.nats == pytest.approx(scores[0].nats, rel=1e-9) for s in scores)


@pytest.mark.parametrize(("rows", "limit", "expected"), [(256, 16, 16), (12, 5, 4), (7, 4, 1), (3, 100, 3), (5, 0, 1)])
def test_evaluation_batch_divides_the_rows_exactly(rows: int, limit: int, expected: int) -> None:
    assert batch_size_for(rows, limit) == expected


@pytest.mark.parametrize(("preset", "expected"), [("tiny", 16), ("h100", 64)])
def test_the_evaluation_batch_is_fixed_by_the_preset_and_keeps_the_probe_cheap(preset: str, expected: int) -> None:
    p = get_preset(preset)
    size = eval_batch_size(p.eval_rows, p.seq_len, p.vocab_size)
    assert size == expected and p.eval_rows % size == 0
    assert size * p.seq_len * p.vocab_size <= 2**30  # the logits of one batch: at most 2 GiB in bf16
    assert 2 * size <= p.eval_rows / 8  # the probe's two batches: at most an eighth of the evaluation
