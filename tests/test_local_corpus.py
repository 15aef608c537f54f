"""`local:PATH` corpora of one or a few big files: long documents are cut into chunks before the train/validation
split, so a single book prepares; a corpus that is truly too small is refused with a true hint, before anything
is written."""

from __future__ import annotations

import dataclasses
import re
import sysconfig
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from autoresearch.config.presets import Preset, get_preset
from autoresearch.data import prepare as prepare_module
from autoresearch.data.prepare import prepare
from autoresearch.data.shards import Manifest, open_shard
from autoresearch.data.sources import TRAIN, VAL, make_source
from autoresearch.data.tokenizer import Tokenizer
from autoresearch.errors import DataError

LINE_MARKER = re.compile(rb"<L(\d{6})>")


def stdlib_text(chars: int) -> str:
    """About `chars` characters of real Python source: standard-library modules one after another."""
    parts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= chars:
            break
    return "".join(parts)[:chars]


def marked(text: str) -> str:
    """`text` with a number opening each line, so that a piece of a few lines names where it came from."""
    return "".join(f"<L{i:06d}> {line}" for i, line in enumerate(text.splitlines(keepends=True)))


def line_numbers(tokenizer: Tokenizer, rows: np.ndarray) -> set[int]:
    found: set[int] = set()
    for row in rows:
        for piece in np.split(row, np.flatnonzero(row == tokenizer.bos_id)):
            found |= {int(n) for n in LINE_MARKER.findall(tokenizer.decode_bytes(piece.tolist()))}
    return found


def cache_contents(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


@pytest.mark.slow
def test_one_large_file_prepares_and_none_of_its_validation_text_is_trained_on(
    tmp_path: Path, console: Console
) -> None:
    tiny = get_preset("tiny")
    text = marked(stdlib_text(1_500_000))  # ~1.7 MB: 5x the tiny preset's validation text
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "book.txt").write_text(text)
    out = prepare(f"local:{tmp_path / 'book'}", tiny, tmp_path / "cache", console=console)

    manifest = Manifest.load(out / "manifest.json")
    tokenizer = Tokenizer.load(out / "tokenizer.json")
    assert tokenizer.vocab_size == tiny.vocab_size
    (val_info,) = manifest.split(VAL)
    assert val_info.rows >= tiny.eval_rows and sum(s.rows for s in manifest.split(TRAIN)) > 0
    assert manifest.dataset["documents_cut"] == 1 and manifest.dataset["val_documents"] > 100
    train = set().union(*(line_numbers(tokenizer, open_shard(out, s, verify=True)) for s in manifest.split(TRAIN)))
    val = line_numbers(tokenizer, open_shard(out, val_info, verify=True))
    lines = text.count("\n")
    assert not train & val  # no line of validation text is trained on
    assert len(train | val) > 0.97 * lines  # all are there, but for markers cut where a row ends (read in neither)
    assert min(val) < lines // 10 and max(val) > lines - lines // 10  # validation comes from all over the file

    again = prepare(f"local:{tmp_path / 'book'}", tiny, tmp_path / "cache-2", console=console)
    assert Manifest.load(again / "manifest.json").digest() == manifest.digest()  # the same data, every time
    assert (again / "val.bin").read_bytes() == (out / "val.bin").read_bytes()
    alone = prepare(f"local:{tmp_path / 'book' / 'book.txt'}", tiny, tmp_path / "cache-3", console=console)
    assert (alone / "val.bin").read_bytes() == (out / "val.bin").read_bytes()  # the file named alone: the same


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_the_same_text_in_two_files_prepares(tmp_path: Path, console: Console) -> None:
    tiny = get_preset("tiny")
    text = stdlib_text(1_200_000)
    half = text.index("\n", len(text) // 2) + 1
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text(text[:half])
    (tmp_path / "c" / "b.md").write_text(text[half:])
    out = prepare(f"local:{tmp_path / 'c'}", tiny, tmp_path / "cache", console=console)
    manifest = Manifest.load(out / "manifest.json")
    assert Tokenizer.load(out / "tokenizer.json").vocab_size == tiny.vocab_size
    assert manifest.split(VAL)[0].rows >= tiny.eval_rows
    assert manifest.dataset["documents_cut"] == 2


def test_long_documents_are_cut_into_chunks_at_line_breaks_and_the_split_keeps_them_apart(tmp_path: Path) -> None:
    from autoresearch.data.sources.base import line_chunks

    text = stdlib_text(400_000)
    chunks = list(line_chunks(text, 1024))
    assert "".join(chunks) == text and all(len(c) <= 1024 for c in chunks)
    assert sum(c.endswith("\n") for c in chunks) >= len(chunks) - 1
    no_lines = " ".join(["word"] * 1000)
    assert "".join(line_chunks(no_lines, 100)) == no_lines
    assert all(len(c) <= 100 and c.endswith(" ") for c in list(line_chunks(no_lines, 100))[:-1])
    assert [len(c) for c in line_chunks("x" * 250, 100)] == [100, 100, 50]

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "big.txt").write_text(text)
    source = make_source(f"local:{tmp_path / 'c'}", get_preset("tiny"))
    source.check()
    split = source._split
    assert split is not None and not set(split.val) & set(split.train)
    assert all(piece in text for piece in split.val)
    assert sum(map(len, split.val)) >= 327_680 and sum(map(len, split.val + split.train)) == len(text)


def test_a_corpus_too_small_is_refused_with_a_true_hint_and_nothing_written(tmp_path: Path, console: Console) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text(stdlib_text(200_000))  # less than tiny's 327,680 validation bytes
    with pytest.raises(DataError, match="corpus too small") as err:
        prepare(f"local:{tmp_path / 'c'}", get_preset("tiny"), tmp_path / "cache", console=console)
    assert "327,680" in str(err.value) and "hint: point the dataset at more text" in str(err.value)
    assert "bytes in 1 file under" in str(err.value)
    assert "--preset" not in str(err.value)  # there is no preset with a smaller evaluation set than tiny
    assert cache_contents(tmp_path / "cache") == []

    (tmp_path / "c" / "b.txt").write_text(stdlib_text(600_000))  # 800 KB: enough for tiny, not for h100
    with pytest.raises(DataError, match="corpus too small") as err:
        prepare(f"local:{tmp_path / 'c'}", get_preset("h100"), tmp_path / "cache", console=console)
    assert "104,857,600" in str(err.value) and "--preset tiny" in str(err.value)  # a preset whose validation fits
    assert cache_contents(tmp_path / "cache") == []


def test_too_little_distinct_text_is_refused_before_anything_is_prepared(tmp_path: Path, console: Console) -> None:
    """Big enough by its size, too small once the repeated text is dropped: refused by the split, which now comes
    before the cache directory and its lock are made."""
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("The same line of text, over and over again.\n" * 20_000)  # 900 KB
    with pytest.raises(DataError, match=r"corpus too small: .* bytes of distinct text") as err:
        prepare(f"local:{tmp_path / 'c'}", get_preset("tiny"), tmp_path / "cache", console=console)
    assert "exact duplicates dropped" in str(err.value) and "--preset" not in str(err.value)
    assert cache_contents(tmp_path / "cache") == []
    assert "preparing" not in console.file.getvalue()


def test_a_build_that_fails_on_the_data_leaves_nothing_behind(
    tmp_path: Path, mini_preset: Preset, console: Console
) -> None:
    (tmp_path / "c").mkdir()
    lines = stdlib_text(30_000).splitlines(keepends=True)
    for i in range(20):  # short documents, each whole: the split succeeds and the tokenizer fails
        (tmp_path / "c" / f"{i:02d}.txt").write_text("".join(lines[i::20]))
    huge_vocab = dataclasses.replace(mini_preset, vocab_size=20_000)
    with pytest.raises(DataError, match="too small to learn 20000 tokens"):
        prepare(f"local:{tmp_path / 'c'}", huge_vocab, tmp_path / "cache", console=console)
    assert cache_contents(tmp_path / "cache") == []


def test_a_prepare_waiting_for_the_lock_of_one_that_removed_its_directory_makes_it_again(tmp_path: Path) -> None:
    out = tmp_path / "cache" / "data" / "x" / "tiny"
    entered = threading.Event()

    def second() -> None:
        with prepare_module._exclusive(out):
            (out / "tokenizer.json").write_text("{}")  # the directory it holds the lock in exists
            entered.set()

    with prepare_module._exclusive(out):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.2)
        assert not entered.is_set()
        prepare_module._remove(out, tmp_path / "cache")  # as a failed fresh build does
    waiter.join(10)
    assert entered.is_set() and (out / ".lock").exists() and (out / "tokenizer.json").exists()
