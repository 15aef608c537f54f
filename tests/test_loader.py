"""Training batches: the right shape and shift, train rows only, every row once per epoch, a fixed order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autoresearch.config.apparatus import Apparatus
from autoresearch.config.presets import PRESETS, Preset
from autoresearch.data.shards import MANIFEST_FORMAT, Manifest, ShardInfo, write_shard
from autoresearch.data.sources import TRAIN, VAL
from autoresearch.data.tokenizer import Tokenizer
from autoresearch.harness.loader import RowOrder, TrainBatches
from autoresearch.harness.run import Run

CPU = torch.device("cpu")
SEQ = 8
ROW_LEN = SEQ + 1
VAL_TOKEN_BASE = 60_000  # validation rows use ids from here up; train rows stay below


def numbered_rows(first: int, n: int, row_len: int = ROW_LEN) -> np.ndarray:
    """Rows [BOS, i, i+1, ...] for i = first, first + 1, ...: column 1 names the row."""
    rows = np.zeros((n, row_len), dtype=np.uint16)
    rows[:, 1:] = first + np.arange(n)[:, None] + np.arange(row_len - 1)[None, :]
    return rows


def row_ids(x: torch.Tensor) -> list[int]:
    return x[:, 1].tolist()


@pytest.fixture
def preset() -> Preset:
    return Preset(
        name="loader-test",
        description="tests",
        seq_len=SEQ,
        vocab_size=2**16 - 1,
        budget_seconds=5,
        eval_tokens=4 * SEQ,
        untimed_steps=1,
        tokenizer_train_chars=1,
        max_corpus_bytes=None,
    )


@pytest.fixture
def dataset(tmp_path: Path, preset: Preset, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Prepared data written by hand: train shards of 7, 0 and 5 rows; a val shard of very different ids."""
    out = tmp_path / "data"
    out.mkdir()
    singles = [bytes([b]) for b in range(256)]
    pairs = [bytes([a, b]) for a in range(256) for b in range(256)]
    tokenizer = Tokenizer([b"", *singles, *pairs[: preset.vocab_size - 257]])
    tokenizer.save(out / "tokenizer.json")
    infos = []
    for i, (first, n) in enumerate([(1000, 7), (2000, 0), (3000, 5)]):
        info = ShardInfo(f"train-{i:05d}", TRAIN, n, ROW_LEN, "", f"t{i}", tokenizer.digest())
        infos.append(write_shard(out, info, numbered_rows(first, n)))
    val = ShardInfo("val", VAL, 6, ROW_LEN, "", "v", tokenizer.digest())
    infos.append(write_shard(out, val, numbered_rows(VAL_TOKEN_BASE, 6)))
    Manifest(MANIFEST_FORMAT, {"name": "hand-made"}, preset.as_dict(), tokenizer.digest(), ROW_LEN, infos).save(
        out / "manifest.json"
    )
    monkeypatch.setitem(PRESETS, preset.name, preset)
    return out


TRAIN_IDS = sorted([*range(1000, 1007), *range(3000, 3005)])


def make_run(dataset: Path, preset: Preset) -> Run:
    return Run(Apparatus(preset=preset.name, dataset="hand-made", budget_seconds=5.0, data_dir=str(dataset)))


def test_batches_are_int64_of_batch_by_seq_len_and_targets_are_inputs_shifted_by_one(
    dataset: Path, preset: Preset
) -> None:
    batches = make_run(dataset, preset).train_batches(4)
    for _ in range(5):
        x, y = next(batches)
        assert x.shape == y.shape == (4, SEQ)
        assert x.dtype == y.dtype == torch.int64
        assert x.device.type == y.device.type == "cpu"
        assert (x[:, 1:] == y[:, :-1]).all()
        assert (x[:, 0] == 0).all()  # rows are BOS-aligned
        rows = torch.cat([x, y[:, -1:]], dim=1)  # the whole stored row
        assert (rows[:, 1:] == rows[:, 1:2] + torch.arange(SEQ)).all()


def test_rows_come_only_from_the_train_shards_never_validation(dataset: Path, preset: Preset) -> None:
    run = make_run(dataset, preset)
    assert (run._val_rows[:, 1:] >= VAL_TOKEN_BASE).all()  # evaluation reads the val shard...
    assert len(run._val_rows) == preset.eval_rows
    batches = run.train_batches(5)
    seen = set()
    for _ in range(20):  # several epochs
        x, y = next(batches)
        assert int(x.max()) < VAL_TOKEN_BASE and int(y.max()) < VAL_TOKEN_BASE  # ...training never does
        seen.update(row_ids(x))
    assert sorted(seen) == TRAIN_IDS


def test_one_epoch_visits_every_train_row_exactly_once(dataset: Path, preset: Preset) -> None:
    batches = make_run(dataset, preset).train_batches(4)  # 12 rows: 3 batches per epoch
    epoch = [i for _ in range(3) for i in row_ids(next(batches)[0])]
    assert sorted(epoch) == TRAIN_IDS
    assert batches.epoch == 1
    second = [i for _ in range(3) for i in row_ids(next(batches)[0])]
    assert sorted(second) == TRAIN_IDS
    assert second != epoch  # reshuffled each epoch
    assert batches.tokens_served == 6 * 4 * SEQ


def test_epochs_stay_whole_when_the_batch_size_does_not_divide_the_rows() -> None:
    shards = [numbered_rows(1, 7), numbered_rows(100, 6)]
    batches = TrainBatches(shards, 5, CPU)  # 13 rows
    served = [i for _ in range(13) for i in row_ids(next(batches)[0])]  # 65 rows: 5 whole epochs
    for e in range(5):
        assert sorted(served[13 * e : 13 * (e + 1)]) == [*range(1, 8), *range(100, 106)]


def test_the_order_is_the_same_for_every_loader_and_every_batch_size(dataset: Path, preset: Preset) -> None:
    first = make_run(dataset, preset).train_batches(4)
    second = make_run(dataset, preset).train_batches(4)
    a = [i for _ in range(9) for i in row_ids(next(first)[0])]
    b = [i for _ in range(9) for i in row_ids(next(second)[0])]
    assert a == b  # two experiments see the same data in the same order
    by_threes = TrainBatches([numbered_rows(1000, 7), numbered_rows(3000, 5)], 3, CPU)
    assert [i for _ in range(12) for i in row_ids(next(by_threes)[0])] == a


def test_row_order_is_a_fixed_permutation_per_epoch() -> None:
    order = RowOrder(10)
    first = order.take(10)
    assert sorted(first.tolist()) == list(range(10))
    assert first.tolist() == RowOrder(10).take(10).tolist()
    assert first.tolist() != list(range(10))  # shuffled
    assert sorted(order.take(10).tolist()) == list(range(10))
    assert RowOrder(10, seed=1).take(10).tolist() != first.tolist()


def test_token_ids_above_32767_survive_the_uint16_shards() -> None:
    rows = numbered_rows(65_000, 3)
    x, y = next(TrainBatches([rows], 3, CPU))
    assert sorted(x[:, 1].tolist()) == [65_000, 65_001, 65_002]
    assert int(y.max()) == 65_002 + SEQ - 1


def test_train_batches_may_be_asked_for_once(dataset: Path, preset: Preset) -> None:
    run = make_run(dataset, preset)
    run.train_batches(2)
    with pytest.raises(RuntimeError, match="once"):
        run.train_batches(2)
