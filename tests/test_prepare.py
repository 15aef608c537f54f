"""`prepare`: a user's corpus becomes a tokenizer and token shards, once, and damage is found and repaired."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import random
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from autoresearch.config.presets import Preset, get_preset
from autoresearch.data import prepare as prepare_module
from autoresearch.data.prepare import prepare
from autoresearch.data.shards import Manifest, evaluation_rows, open_shard, shard_intact
from autoresearch.data.sources import TRAIN, VAL
from autoresearch.data.sources.base import split_texts
from autoresearch.data.tokenizer import Tokenizer
from autoresearch.errors import ConfigError, DataError
from autoresearch.evaluator.feeder import Feeder

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "ru", "te", "sa", "vo") for b in ("n", "ra", "ve", "x", "lt")]
MARKER = re.compile(rb"<DOC_([a-z]+)_(\d+)>")
KINDS = ("txt", "md", "jsonl", "pq")


def document(kind: str, i: int, lines: int = 25) -> str:
    """About 1.6 KB of text; its marker opens every line, so any piece of a few lines names its document."""
    rng = random.Random(f"{kind}-{i}")
    return "".join(f"<DOC_{kind}_{i:02d}> line {j}: {' '.join(rng.choices(WORDS, k=8))}\n" for j in range(lines))


def write_corpus(root: Path, per_kind: int = 6) -> set[tuple[str, int]]:
    """A local dataset with every supported file type; returns the (kind, number) of each document."""
    (root / "notes").mkdir(parents=True)
    (root / "deep" / "er").mkdir(parents=True)
    for i in range(per_kind):
        (root / "notes" / f"doc{i}.txt").write_text(document("txt", i))
        (root / "deep" / "er" / f"doc{i}.md").write_text(document("md", i))
    lines = [json.dumps({"text": document("jsonl", i), "id": i}) for i in range(per_kind)]
    lines += ["", json.dumps({"text": document("txt", 0)})]  # a blank line; a duplicate of a .txt document
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n")
    texts = [document("pq", i) for i in range(per_kind)] + ["", None]  # empty rows are skipped
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), root / "docs.parquet", row_group_size=4)
    (root / "ignored.csv").write_text(document("csv", 0))  # not a supported suffix
    (root / "empty.txt").write_text("  \n")
    return {(kind, i) for kind in KINDS for i in range(per_kind)}


def markers(tokenizer: Tokenizer, rows: np.ndarray) -> set[tuple[str, int]]:
    """The documents named in `rows`, read piece by piece (a row holds pieces of several documents)."""
    found = set()
    for row in rows:
        for piece in np.split(row, np.flatnonzero(row == tokenizer.bos_id)):
            text = tokenizer.decode_bytes(piece.tolist())
            found |= {(kind.decode(), int(num)) for kind, num in MARKER.findall(text)}
    return found


def split_markers(out: Path) -> tuple[set, set]:
    manifest = Manifest.load(out / "manifest.json")
    tokenizer = Tokenizer.load(out / "tokenizer.json")
    train = set().union(*(markers(tokenizer, open_shard(out, s, verify=True)) for s in manifest.split(TRAIN)))
    (val_info,) = manifest.split(VAL)
    return train, markers(tokenizer, open_shard(out, val_info, verify=True))


def shard_files(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.iterdir()) if p.suffix in (".bin", ".json")}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    write_corpus(root)
    return root


@pytest.fixture
def prepared(corpus: Path, mini_preset: Preset, tmp_path: Path, console: Console) -> Path:
    return prepare(f"local:{corpus}", mini_preset, tmp_path / "cache", console=console)


def feeder_for(prepared: Path) -> Feeder:
    manifest = Manifest.load(prepared / "manifest.json")
    return Feeder(prepared, manifest, Tokenizer.load(prepared / "tokenizer.json").vocab_size)


def test_local_corpus_of_every_file_type_keeps_validation_documents_out_of_train(
    tmp_path: Path, mini_preset: Preset, console: Console
) -> None:
    expected = write_corpus(tmp_path / "corpus")
    out = prepare(f"local:{tmp_path / 'corpus'}", mini_preset, tmp_path / "cache", console=console)
    train, val = split_markers(out)
    assert val and train
    assert not train & val  # the duplicated .txt/.jsonl document too: it is in one split only
    assert train | val == expected  # every document of every type; nothing from the .csv
    assert {kind for kind, _ in train | val} == set(KINDS)
    manifest = Manifest.load(out / "manifest.json")
    assert manifest.dataset["duplicates_dropped"] == 1
    assert manifest.row_len == mini_preset.seq_len + 1
    assert sum(s.rows for s in manifest.split(VAL)) >= mini_preset.eval_rows


def test_second_prepare_does_nothing_and_says_already_prepared(
    prepared: Path, corpus: Path, mini_preset: Preset, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = shard_files(prepared)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("prepare rebuilt prepared data")

    monkeypatch.setattr(prepare_module, "_build", no_rebuild)
    again = Console(file=io.StringIO(), width=300)
    started = time.monotonic()
    assert prepare(f"local:{corpus}", mini_preset, prepared.parents[2], console=again) == prepared
    assert time.monotonic() - started < 2
    assert "already prepared" in again.file.getvalue()
    assert shard_files(prepared) == before


def test_a_shard_corrupted_on_disk_is_detected_and_rebuilt_by_the_next_prepare(
    prepared: Path, corpus: Path, mini_preset: Preset, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = Manifest.load(prepared / "manifest.json")
    info = manifest.split(TRAIN)[0]
    path = prepared / f"{info.name}.bin"
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[100:104] = bytes(b ^ 0xFF for b in damaged[100:104])  # same size, different bytes
    path.write_bytes(bytes(damaged))

    with pytest.raises(DataError, match="corrupt") as err:
        open_shard(prepared, info, verify=True)
    assert "autoresearch prepare" in str(err.value)
    assert "a train shard is corrupt" in feeder_for(prepared).problem()  # the evaluator voids a run on it

    prepare(f"local:{corpus}", mini_preset, prepared.parents[2], console=console)
    assert f"damaged shards {info.name}" in console.file.getvalue()
    assert path.read_bytes() == original
    assert all(shard_intact(prepared, s) for s in Manifest.load(prepared / "manifest.json").shards)


def test_a_truncated_shard_is_refused_with_a_hint_to_run_prepare_which_repairs_it(
    prepared: Path, corpus: Path, mini_preset: Preset, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = Manifest.load(prepared / "manifest.json")
    for info in (manifest.split(TRAIN)[0], manifest.split(VAL)[0]):
        path = prepared / f"{info.name}.bin"
        path.write_bytes(path.read_bytes()[:-7])
        with pytest.raises(DataError, match="truncated") as err:
            open_shard(prepared, info, verify=False)
        assert "run `autoresearch prepare`" in str(err.value)

    with pytest.raises(DataError, match="truncated"):
        feeder_for(prepared)  # the evaluator refuses to serve it

    prepare(f"local:{corpus}", mini_preset, prepared.parents[2], console=console)
    assert all(shard_intact(prepared, s) for s in manifest.shards)
    feeder = feeder_for(prepared)
    assert len(feeder.rows(4)) == 4 * manifest.row_len * 2 and feeder.problem() is None


def test_a_read_only_cache_serves_prepared_data_and_refuses_to_build_with_a_hint(
    prepared: Path, corpus: Path, mini_preset: Preset, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, opened = prepared.parents[2], Path.open

    def read_only(path: Path, mode: str = "r", *args, **kwargs):  # a read-only mount, also for root
        if path.is_relative_to(cache) and set(mode) & set("wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return opened(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", read_only)
    assert prepare(f"local:{corpus}", mini_preset, cache, console=console) == prepared
    assert "already prepared" in console.file.getvalue()
    with pytest.raises(DataError, match="cannot write the prepared data") as err:
        prepare(f"local:{corpus}", dataclasses.replace(mini_preset, name="other"), cache, console=console)
    assert "--cache-dir" in str(err.value) and "Read-only file system" in str(err.value)


def test_a_cache_dir_that_cannot_be_made_is_a_data_error(tmp_path: Path, corpus: Path, mini_preset: Preset) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    with pytest.raises(DataError, match="cannot write the prepared data") as err:
        prepare(f"local:{corpus}", mini_preset, tmp_path / "file" / "cache")
    assert "Not a directory" in str(err.value)


def test_a_full_cache_disk_is_a_disk_full_error_leaving_no_half_shard_and_the_next_prepare_resumes(
    tmp_path: Path, corpus: Path, mini_preset: Preset, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BROKE, fixed (red team): `prepare` on a full cache disk ended in a traceback from `write_shard`
    (OSError: [Errno 28]) and left the half-written `train-00000.bin.tmp` behind (20 MB of a 20 MB disk)."""
    from autoresearch.workspace.disk import DiskFullError

    written, wrote = Path.write_bytes, []

    def fills_up(path: Path, data: bytes) -> int:
        if path.name.endswith(".bin.tmp") and wrote:  # the second shard finds the disk full, half written
            written(path, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        wrote.append(path.name)
        return written(path, data)

    monkeypatch.setattr(Path, "write_bytes", fills_up)
    with pytest.raises(DiskFullError, match="the disk is full") as err:
        prepare(f"local:{corpus}", mini_preset, tmp_path / "cache", console=console)
    assert "resumes at the first shard not written yet" in str(err.value) and "in flight" not in str(err.value)
    (out,) = (tmp_path / "cache").glob("*/*/*")
    assert not list(out.glob("*.tmp")) and (out / wrote[0].removesuffix(".tmp")).is_file()  # the first is kept
    monkeypatch.undo()
    assert prepare(f"local:{corpus}", mini_preset, tmp_path / "cache", console=console) == out
    assert (out / "manifest.json").is_file()


@pytest.mark.parametrize("content", [b"", b"{broken", b"[]", b'{"format": "something-else"}'])
def test_a_damaged_tokenizer_file_is_rebuilt_by_the_next_prepare(
    content: bytes, prepared: Path, corpus: Path, mini_preset: Preset, console: Console
) -> None:
    digest = Tokenizer.load(prepared / "tokenizer.json").digest()
    (prepared / "tokenizer.json").write_bytes(content)
    prepare(f"local:{corpus}", mini_preset, prepared.parents[2], console=console)
    assert Tokenizer.load(prepared / "tokenizer.json").digest() == digest
    assert Manifest.load(prepared / "manifest.json").tokenizer_sha256 == digest


@pytest.mark.parametrize("content", [b"", b"{broken", b"[]", b'{"format": "something-else"}'])
def test_an_unreadable_manifest_is_rebuilt_by_the_next_prepare(
    content: bytes, prepared: Path, corpus: Path, mini_preset: Preset, console: Console
) -> None:
    (prepared / "manifest.json").write_bytes(content)
    with pytest.raises(DataError, match="autoresearch prepare"):
        Manifest.load(prepared / "manifest.json")
    prepare(f"local:{corpus}", mini_preset, prepared.parents[2], console=console)
    assert Manifest.load(prepared / "manifest.json").split(VAL)


def test_data_prepared_for_other_preset_settings_is_rebuilt_with_the_split_they_ask_for(
    prepared: Path, corpus: Path, mini_preset: Preset, console: Console
) -> None:
    _, val = split_markers(prepared)
    val_rows = Manifest.load(prepared / "manifest.json").split(VAL)[0].rows
    bigger = dataclasses.replace(mini_preset, eval_tokens=4 * mini_preset.eval_tokens)  # same name, more val text
    prepare(f"local:{corpus}", bigger, prepared.parents[2], console=console)
    train, bigger_val = split_markers(prepared)
    assert val <= bigger_val and Manifest.load(prepared / "manifest.json").split(VAL)[0].rows > val_rows
    assert not train & bigger_val
    assert Manifest.load(prepared / "manifest.json").preset == bigger.as_dict()


def test_force_rebuilds_everything(prepared: Path, corpus: Path, mini_preset: Preset, console: Console) -> None:
    before = shard_files(prepared)
    prepare(f"local:{corpus}", mini_preset, prepared.parents[2], force=True, console=console)
    after = shard_files(prepared)
    assert after.keys() == before.keys()
    assert all(after[name] != before[name] for name in before)


@pytest.mark.parametrize(
    ("line", "problem"),
    [("{not json", "not a JSON object"), ('{"body": "x"}', "'text' field"), ('{"text": 5}', "not a string")],
)
def test_a_malformed_jsonl_line_is_a_data_error_naming_file_and_line(
    line: str, problem: str, tmp_path: Path, mini_preset: Preset, console: Console
) -> None:
    root = tmp_path / "corpus"
    write_corpus(root)
    bad = root / "more.jsonl"
    bad.write_text(json.dumps({"text": document("x", 1)}) + "\n\n" + line + "\n")
    with pytest.raises(DataError, match=re.escape(problem)) as err:
        prepare(f"local:{root}", mini_preset, tmp_path / "cache", console=console)
    assert f"{bad}:3" in str(err.value)


def test_a_corpus_too_small_for_the_validation_set_is_a_clear_error(
    tmp_path: Path, mini_preset: Preset, console: Console
) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "one.txt").write_text(document("txt", 0))
    with pytest.raises(DataError, match="corpus too small") as err:
        prepare(f"local:{tmp_path / 'corpus'}", mini_preset, tmp_path / "cache", console=console)
    assert "hint:" in str(err.value)


def test_a_corpus_too_small_for_the_tiny_preset_says_so(tmp_path: Path, corpus: Path, console: Console) -> None:
    with pytest.raises(DataError, match="corpus too small"):
        prepare(f"local:{corpus}", get_preset("tiny"), tmp_path / "cache", console=console)


def test_a_corpus_too_small_for_the_vocabulary_is_a_clear_error(
    tmp_path: Path, corpus: Path, mini_preset: Preset, console: Console
) -> None:
    huge_vocab = dataclasses.replace(mini_preset, vocab_size=20_000)
    with pytest.raises(DataError, match="too small to learn 20000 tokens"):
        prepare(f"local:{corpus}", huge_vocab, tmp_path / "cache", console=console)


def test_a_directory_without_text_files_is_a_clear_error(tmp_path: Path, mini_preset: Preset, console: Console) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"no \.txt, \.md, \.jsonl, \.parquet files"):
        prepare(f"local:{tmp_path / 'corpus'}", mini_preset, tmp_path / "cache", console=console)
    with pytest.raises(DataError, match=r"data\.csv is not a \.txt, \.md, \.jsonl, \.parquet file"):
        prepare(f"local:{tmp_path / 'corpus' / 'data.csv'}", mini_preset, tmp_path / "cache", console=console)
    with pytest.raises(DataError, match="does not exist"):
        prepare(f"local:{tmp_path / 'nowhere'}", mini_preset, tmp_path / "cache", console=console)


def test_python_source_of_another_interpreter_does_not_rebuild_the_first_ones_data(
    tmp_path: Path, mini_preset: Preset, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoresearch.data.sources import python_source

    venvs = [tmp_path / "venv-a", tmp_path / "venv-b"]
    for n, venv in enumerate(venvs):
        write_corpus(venv)
        (venv / "extra.txt").write_text(document("txt", 90 + n))  # the second venv holds other files
    monkeypatch.setattr(python_source, "default_roots", lambda: [venvs[0]])
    first = prepare("python-source", mini_preset, tmp_path / "cache", console=console)
    before = (first / "manifest.json").read_bytes()
    monkeypatch.setattr(python_source, "default_roots", lambda: [venvs[1]])
    second = prepare("python-source", mini_preset, tmp_path / "cache", console=console)
    assert second != first  # a workspace made with the first Python still finds the data it was measured on
    assert (first / "manifest.json").read_bytes() == before
    monkeypatch.setattr(python_source, "default_roots", lambda: [venvs[0]])
    assert prepare("python-source", mini_preset, tmp_path / "cache", console=console) == first


@pytest.mark.parametrize("named", ["", "  "])
def test_local_without_a_path_is_refused_not_read_as_the_current_directory(
    named: str, tmp_path: Path, mini_preset: Preset, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "private.txt").write_text("not a corpus\n" * 100_000)
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(ConfigError, match="names no path"):
        prepare(f"local:{named}", mini_preset, tmp_path / "cache", console=console)
    assert not (tmp_path / "cache").exists()


def test_a_parquet_file_without_a_text_column_or_damaged_is_a_clear_error(
    tmp_path: Path, corpus: Path, mini_preset: Preset, console: Console
) -> None:
    pq.write_table(pa.table({"content": ["x"]}), corpus / "zz.parquet")
    with pytest.raises(DataError, match="no 'text' column"):
        prepare(f"local:{corpus}", mini_preset, tmp_path / "cache", console=console)
    (corpus / "zz.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    with pytest.raises(DataError, match="not a readable parquet file"):
        prepare(f"local:{corpus}", mini_preset, tmp_path / "cache", console=console)


def test_the_tiny_preset_prepares_a_copy_of_the_standard_library(tiny_prepared: Path) -> None:
    tiny = get_preset("tiny")
    manifest = Manifest.load(tiny_prepared / "manifest.json")
    assert Tokenizer.load(tiny_prepared / "tokenizer.json").vocab_size == tiny.vocab_size
    assert manifest.row_len == tiny.seq_len + 1
    (val,) = manifest.split(VAL)
    assert val.rows >= tiny.eval_rows
    assert sum(s.rows for s in manifest.split(TRAIN)) > 0
    assert all(shard_intact(tiny_prepared, s) for s in manifest.shards)


def test_validation_takes_a_middle_piece_of_many_documents_and_trains_on_none_of_them() -> None:
    """A long validation document gives a piece from its middle, starting at a line: the same validation bytes
    then span many documents, so a seed that suits a few of them moves val_bpb less. The rest of a validation
    document is dropped, never trained on."""
    docs = [document("txt", i, lines=200) for i in range(60)]  # ~13 KB each
    whole = split_texts(docs, val_bytes=20_000, max_bytes=None)
    pieces = split_texts(docs, val_bytes=20_000, max_bytes=None, val_piece=1_000)
    assert len(whole.val) == 2 and len(pieces.val) >= 20
    for piece in pieces.val:
        assert len(piece) <= 1_000 and piece.startswith("<DOC_txt_")
        (source,) = [d for d in docs if piece in d]
        assert 0 < source.index(piece) < len(source) - len(piece)  # from the middle, not the head
        assert source not in pieces.train
    assert len(pieces.train) + len(pieces.val) == len(docs)


def test_too_few_documents_for_small_pieces_get_larger_ones() -> None:
    docs = [document("md", i, lines=400) for i in range(4)]  # ~27 KB each
    split = split_texts(docs, val_bytes=40_000, max_bytes=None, val_piece=1_000)
    assert sum(len(v) for v in split.val) >= 40_000 and split.train
    with pytest.raises(DataError, match="corpus too small"):
        split_texts(docs, val_bytes=200_000, max_bytes=None, val_piece=1_000)


def test_the_evaluator_scores_rows_spread_over_the_whole_validation_shard(prepared: Path, mini_preset: Preset) -> None:
    """Packing fills rows longest piece first, so a shard's first rows can all be one long document: the
    evaluated rows are spread evenly from its first row to near its last instead."""
    manifest = Manifest.load(prepared / "manifest.json")
    shard = open_shard(prepared, manifest.split(VAL)[0], verify=True)
    assert len(shard) > mini_preset.eval_rows
    rows = evaluation_rows(shard, mini_preset.eval_rows)
    assert rows.shape == (mini_preset.eval_rows, shard.shape[1])
    chosen = [next(i for i in range(len(shard)) if (shard[i] == row).all()) for row in rows]
    assert chosen[0] == 0 and chosen == sorted(set(chosen)) and chosen[-1] >= len(shard) - len(shard) // len(rows) - 1
    assert (evaluation_rows(shard[:5], mini_preset.eval_rows) == shard[:5]).all()


def test_progress_says_which_shard_it_tokenizes_how_many_are_done_and_the_tokens_as_they_come(
    corpus: Path, mini_preset: Preset, tmp_path: Path, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BROKE, fixed: the bar ended as `tokenizing val 2/2 0.2M tokens` (val's 2 of 2? shards, train and val
    together), and its tokens moved only when a whole shard was done (minutes for a hub shard)."""
    import autoresearch.data.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "ENCODE_BATCH_DOCS", 2)  # several batches in each shard
    updates: list[dict] = []
    real_update = prepare_module.Progress.update
    monkeypatch.setattr(
        prepare_module.Progress, "update", lambda self, task, **kw: updates.append(kw) or real_update(self, task, **kw)
    )
    out = prepare(f"local:{corpus}", mini_preset, tmp_path / "cache", console=console)
    said = console.file.getvalue()
    assert "tokenized 2 shards (1 train, 1 val)" in said and "2/2 shards, " in said and "M tokens" in said
    assert "tokenizing val" not in said  # the end state says what was made, not what it was doing
    described = [kw["description"] for kw in updates if "description" in kw]
    assert described[:2] == ["tokenizing shard train-00000", "tokenizing shard val"]
    within_train = [kw["tokens"] for kw in updates[1 : updates.index({"description": "tokenizing shard val"})]]
    assert len(within_train) > 2 and within_train == sorted(within_train)  # it grows batch by batch
    manifest = Manifest.load(out / "manifest.json")
    assert updates[-2]["tokens"] * 1e6 == pytest.approx(sum(s.stats["tokens_in"] for s in manifest.shards))
