"""Best-fit packing: full BOS-aligned rows, every token kept but the last incomplete row, documents in order."""

from __future__ import annotations

import numpy as np
import pytest

from autoresearch.data.packing import PackStats, pack_documents

BOS = 0


def random_documents(seed: int, n: int, max_len: int) -> list[np.ndarray]:
    """Documents starting with BOS whose other tokens are all distinct and numbered in document order.

    Token k+1 follows token k inside a document, so any run of consecutive numbers is an in-order slice
    of one document, and every output token can be traced back to where it came from.
    """
    rng = np.random.default_rng(seed)
    docs, next_token = [], 1
    for length in rng.integers(0, max_len, size=n):  # length 0: a document with nothing but BOS
        docs.append(np.array([BOS, *range(next_token, next_token + length)], dtype=np.uint16))
        next_token += length
    assert next_token < 2**16
    return docs


def pieces(rows: np.ndarray) -> list[np.ndarray]:
    """Each row cut at its BOS tokens: the document pieces it holds, without their BOS."""
    out = []
    for row in rows:
        starts = np.flatnonzero(row == BOS)
        out.extend(row[s + 1 : e] for s, e in zip(starts, [*starts[1:], len(row)], strict=True))
    return out


CASES = [(seed, row_len) for seed in range(6) for row_len in (9, 33, 257)]


@pytest.mark.parametrize(("seed", "row_len"), CASES)
def test_rows_are_full_start_with_bos_and_have_no_padding(seed: int, row_len: int) -> None:
    docs = random_documents(seed, n=150, max_len=3 * row_len)
    rows, _ = pack_documents(docs, row_len, BOS)
    assert rows.dtype == np.uint16 and rows.ndim == 2 and rows.shape[1] == row_len and len(rows) > 0
    assert (rows[:, 0] == BOS).all()
    real = np.concatenate(docs)
    assert np.isin(rows, real).all()  # nothing but document tokens and BOS: no padding value


@pytest.mark.parametrize(("seed", "row_len"), CASES)
def test_every_token_is_kept_once_except_the_dropped_last_row(seed: int, row_len: int) -> None:
    docs = random_documents(seed, n=150, max_len=3 * row_len)
    rows, stats = pack_documents(docs, row_len, BOS)
    out = rows[rows != BOS]
    assert len(np.unique(out)) == len(out)  # no token twice
    tokens = np.concatenate(docs)
    missing = np.setdiff1d(tokens[tokens != BOS], out)
    assert len(missing) <= stats.tokens_dropped < row_len  # only the final, incomplete row is lost


@pytest.mark.parametrize(("seed", "row_len"), CASES)
def test_each_piece_is_an_in_order_slice_of_one_document(seed: int, row_len: int) -> None:
    docs = random_documents(seed, n=150, max_len=3 * row_len)
    rows, _ = pack_documents(docs, row_len, BOS)
    doc_of = {int(t): i for i, d in enumerate(docs) for t in d[1:]}
    for piece in pieces(rows):
        if len(piece):
            assert (np.diff(piece.astype(np.int64)) == 1).all()
            assert doc_of[int(piece[0])] == doc_of[int(piece[-1])]


@pytest.mark.parametrize(("seed", "row_len"), CASES)
def test_pack_stats_add_up(seed: int, row_len: int) -> None:
    docs = random_documents(seed, n=150, max_len=3 * row_len)
    rows, stats = pack_documents(docs, row_len, BOS)
    assert stats.documents == len(docs)
    assert stats.tokens_in == sum(len(d) for d in docs)
    assert stats.rows == len(rows)
    assert stats.rows * row_len + stats.tokens_dropped == stats.tokens_in + stats.splits
    # Each split adds exactly one BOS: the BOS in the output are the documents' own plus the splits'.
    dropped_bos = stats.documents + stats.splits - int((rows == BOS).sum())
    assert 0 <= dropped_bos <= stats.tokens_dropped


def test_a_long_document_is_cut_into_rows_with_a_bos_before_each_continuation() -> None:
    row_len = 8
    doc = np.array([BOS, *range(1, 22)], dtype=np.uint16)  # 22 tokens: rows of 8, 1 + 7, 1 + 7
    rows, stats = pack_documents([doc], row_len, BOS)
    expected = [[0, 1, 2, 3, 4, 5, 6, 7], [0, 8, 9, 10, 11, 12, 13, 14], [0, 15, 16, 17, 18, 19, 20, 21]]
    assert sorted(rows.tolist()) == expected
    assert stats == PackStats(documents=1, tokens_in=22, rows=3, splits=2, tokens_dropped=0)


def test_documents_that_fill_rows_exactly_are_packed_whole_without_loss() -> None:
    docs = [np.array([BOS, 1, 2, 3, 4], dtype=np.uint16), np.array([BOS, 5, 6], dtype=np.uint16)]
    docs += [np.array([BOS, 7, 8, 9, 10, 11], dtype=np.uint16), np.array([BOS, 12], dtype=np.uint16)]
    rows, stats = pack_documents(docs, 8, BOS)  # best fit: 6 + 2 and 5 + 3
    assert sorted(tuple(p.tolist()) for p in pieces(rows)) == [(1, 2, 3, 4), (5, 6), (7, 8, 9, 10, 11), (12,)]
    assert stats.splits == 0 and stats.tokens_dropped == 0 and stats.rows == 2


def test_too_few_tokens_for_one_row_gives_no_rows_and_counts_them_dropped() -> None:
    rows, stats = pack_documents([np.array([BOS, 1, 2], dtype=np.uint16)], 8, BOS)
    assert rows.shape == (0, 8) and rows.dtype == np.uint16
    assert stats.rows == 0 and stats.tokens_dropped == 3


def test_packing_is_deterministic() -> None:
    docs = random_documents(7, n=100, max_len=50)
    first, _ = pack_documents(docs, 33, BOS)
    second, _ = pack_documents([d.copy() for d in docs], 33, BOS)
    assert (first == second).all()


def test_stats_merge_adds_every_count() -> None:
    total = PackStats(documents=1, tokens_in=10, rows=1, splits=2, tokens_dropped=3)
    total.merge(PackStats(documents=2, tokens_in=20, rows=3, splits=4, tokens_dropped=5))
    assert total == PackStats(documents=3, tokens_in=30, rows=4, splits=6, tokens_dropped=8)
