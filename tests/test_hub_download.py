"""Hub datasets against a fake Hub on 127.0.0.1: downloads, resumes, retries, corruption, offline use, errors."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autoresearch.data.sources import TRAIN, VAL
from autoresearch.data.sources.hub import HUB_DATASETS, HubDataset, HubSource
from autoresearch.errors import ConfigError, DataError

if TYPE_CHECKING:
    from fake_hub import FakeHub


REPO = "test-org/tiny-corpus"
TINY = HubDataset("tiny", REPO, "data/train-{:02d}.parquet", "data/val.parquet", default_shards=2, max_shards=3)


def parquet_bytes(texts: list[str]) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), out, row_group_size=2)
    return out.getvalue()


def docs(tag: str, n: int = 5) -> list[str]:
    return [f"{tag} document {i}: " + "lorem ipsum dolor sit amet " * (i + 20) for i in range(n)]


@pytest.fixture
def hub(fake_hub: FakeHub) -> FakeHub:
    """The fake Hub serving TINY: three training files and a validation file, all LFS-like."""
    for i in range(3):
        fake_hub.add(REPO, f"data/train-{i:02d}.parquet", parquet_bytes(docs(f"train{i}")))
    fake_hub.add(REPO, "data/val.parquet", parquet_bytes(docs("val")))
    return fake_hub


def cache_dir() -> Path:
    return Path(os.environ["HF_HUB_CACHE"])


def blob(etag: str) -> Path:
    """The file huggingface_hub keeps in its cache: blobs/<etag>, linked from snapshots/<commit>/<filename>."""
    (path,) = cache_dir().glob(f"datasets--*/blobs/{etag}")
    return path


def closed_port_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def fetched(shards: int | None = None) -> HubSource:
    source = HubSource(TINY, shards)
    source.fetch()
    return source


def test_download_then_parts_yield_train_and_separate_val(hub: FakeHub, capfd: pytest.CaptureFixture[str]) -> None:
    source = fetched()
    parts = source.parts()
    assert [(p.name, p.split) for p in parts] == [("train-00000", TRAIN), ("train-00001", TRAIN), ("val", VAL)]
    assert list(parts[0].documents()) == docs("train0")
    assert list(parts[1].documents()) == docs("train1")
    assert list(parts[2].documents()) == docs("val")
    assert parts[0].identity == hub.etag(REPO, "data/train-00.parquet")
    assert len({p.identity for p in parts}) == 3
    assert {r.filename for r in hub.gets()} == {"data/train-00.parquet", "data/train-01.parquet", "data/val.parquet"}
    err = capfd.readouterr().err
    assert "[1/3] downloading data/train-00.parquet" in err and "[3/3] downloading data/val.parquet" in err
    info = source.describe()
    assert info["repo"] == REPO and info["revision"] == "main" and info["val_file"] == "data/val.parquet"
    assert [f["file"] for f in info["files"]] == ["data/train-00.parquet", "data/train-01.parquet", "data/val.parquet"]
    assert info["files"][0]["bytes"] == len(hub.files[(REPO, "data/train-00.parquet")])
    assert info["files"][0]["commit"] == hub.commit


def test_files_outside_lfs_are_identified_by_their_git_etag(fake_hub: FakeHub) -> None:
    etags = [fake_hub.add(REPO, f"data/train-{i:02d}.parquet", parquet_bytes(docs(f"t{i}")), lfs=False) for i in (0, 1)]
    fake_hub.add(REPO, "data/val.parquet", parquet_bytes(docs("val")), lfs=False)
    parts = fetched().parts()
    assert [p.identity for p in parts[:2]] == etags
    assert list(parts[1].documents()) == docs("t1")


def test_second_fetch_uses_the_cache_and_more_shards_only_add_files(
    hub: FakeHub, capfd: pytest.CaptureFixture[str]
) -> None:
    fetched()
    seen = len(hub.requests)
    source = fetched()
    assert len(hub.requests) == seen  # not even a HEAD
    assert "[1/3] cached data/train-00.parquet" in capfd.readouterr().err
    assert list(source.parts()[0].documents()) == docs("train0")
    bigger = fetched(3)
    assert [r.filename for r in hub.gets()[3:]] == ["data/train-02.parquet"]
    assert bigger.slug == source.slug and bigger.request != source.request
    assert [p.name for p in bigger.parts()] == ["train-00000", "train-00001", "train-00002", "val"]


@pytest.mark.slow  # over half a second
def test_connection_cut_mid_body_is_resumed(hub: FakeHub) -> None:
    # huggingface_hub writes what it got in chunks of 10 MiB, so only a bigger file shows a resume
    big = [os.urandom(3 << 20).hex() for _ in range(2)]
    out = io.BytesIO()
    pq.write_table(pa.table({"text": big}), out, compression="none")
    etag = hub.add(REPO, "data/train-00.parquet", out.getvalue())
    hub.cut_after = 11 << 20
    source = fetched()
    first, second = hub.gets("data/train-00.parquet")
    assert first.range is None
    assert second.range is not None and int(second.range.removeprefix("bytes=").rstrip("-")) > 0
    assert hashlib.sha256(blob(etag).read_bytes()).hexdigest() == etag
    assert list(source.parts()[0].documents()) == big


def test_server_errors_are_retried_with_back_off(hub: FakeHub, capfd: pytest.CaptureFixture[str]) -> None:
    hub.fail["HEAD"] = [503]  # retried by huggingface_hub (1.x, 2.x)
    hub.fail["GET"] = [500]  # retried here: huggingface_hub never retries a 5xx download
    source = fetched()
    assert list(source.parts()[0].documents()) == docs("train0")
    assert len(hub.gets("data/train-00.parquet")) == 2
    assert hub.sleeps  # it waited between attempts
    assert re.search(r"data/train-00.parquet: HTTP 500; retrying in \d+s", capfd.readouterr().err)


def test_corrupt_download_is_fetched_again(hub: FakeHub, capfd: pytest.CaptureFixture[str]) -> None:
    hub.corrupt["data/val.parquet"] = 1
    source = fetched()
    assert len(hub.gets("data/val.parquet")) == 2
    assert "data/val.parquet arrived corrupt" in capfd.readouterr().err
    assert list(source.parts()[-1].documents()) == docs("val")


def test_persistently_corrupt_download_fails_and_leaves_nothing_cached(hub: FakeHub) -> None:
    hub.corrupt["data/train-01.parquet"] = -1
    etag = hub.etag(REPO, "data/train-01.parquet")
    with pytest.raises(DataError, match=r"data/train-01.parquet .* arrived corrupt twice") as err:
        fetched()
    assert "HF_ENDPOINT" in str(err.value)
    assert len(hub.gets("data/train-01.parquet")) == 2
    assert not [p for p in cache_dir().glob("datasets--*/blobs/*") if p.name.startswith(etag)]
    assert not list(cache_dir().rglob("train-01.parquet"))
    hub.corrupt.clear()  # the server recovers: the next run downloads a good copy
    assert list(fetched().parts()[1].documents()) == docs("train1")


def test_unreachable_endpoint_says_what_to_do(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = closed_port_endpoint()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(DataError) as err:
        fetched()
    text = str(err.value)
    assert f"cannot reach {endpoint}" in text and "data/train-00.parquet" in text
    for advice in ("proxy", "HF_ENDPOINT", "--dataset python-source", "local:PATH", "HF_HUB_OFFLINE=1"):
        assert advice in text
    assert not hub.requests


def test_offline_mode_uses_the_cache_without_any_server(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    fetched()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_endpoint())
    seen = len(hub.requests)
    source = fetched()
    assert [list(p.documents()) for p in source.parts()] == [docs("train0"), docs("train1"), docs("val")]
    assert len(hub.requests) == seen
    with pytest.raises(DataError, match=r"data/train-02.parquet .* not in the cache .* offline mode is on") as err:
        fetched(3)
    assert "unset HF_HUB_OFFLINE" in str(err.value)


def test_missing_repository_or_file_is_named(hub: FakeHub) -> None:
    with pytest.raises(DataError, match=r"dataset repository not found.*test-org/nope"):
        HubSource(HubDataset("nope", "test-org/nope", "x-{}.parquet", "v.parquet", 1, 1), None).fetch()
    with pytest.raises(DataError, match=r"file not found.*data/absent-0.parquet of test-org/tiny-corpus"):
        HubSource(HubDataset("absent", REPO, "data/absent-{}.parquet", "data/val.parquet", 1, 1), None).fetch()


def test_damaged_cache_is_reported_when_read_and_repaired_by_the_next_fetch(hub: FakeHub) -> None:
    source = fetched()
    damaged = blob(hub.etag(REPO, "data/train-01.parquet"))
    damaged.write_bytes(damaged.read_bytes()[:100])  # the disk lost the end of the file
    with pytest.raises(DataError, match=r"data/train-01.parquet of test-org/tiny-corpus") as err:
        list(source.parts()[1].documents())
    assert f"delete {damaged}" in str(err.value)
    gets = len(hub.gets())
    assert list(fetched().parts()[1].documents()) == docs("train1")  # footer check fails, so it is downloaded
    assert [r.filename for r in hub.gets()[gets:]] == ["data/train-01.parquet"]


def test_shard_counts_and_the_pinned_validation_files() -> None:
    climbmix, fineweb = HUB_DATASETS["climbmix"], HUB_DATASETS["fineweb-edu"]
    assert climbmix.repo_id == "karpathy/climbmix-400b-shuffle"
    assert climbmix.train_files(2) == ["shard_00000.parquet", "shard_00001.parquet"]
    assert climbmix.train_files(climbmix.max_shards)[-1] == "shard_06541.parquet"
    assert climbmix.val_file == "shard_06542.parquet"
    assert fineweb.train_files(fineweb.max_shards)[-1] == "sample/10BT/012_00000.parquet"
    assert fineweb.val_file == "sample/10BT/013_00000.parquet"
    assert HubSource(climbmix, None).shards == 10 and HubSource(fineweb, None).shards == 1
    assert HubSource(climbmix, None).slug == HubSource(climbmix, 20).slug == "climbmix"
    for dataset, bad in ((climbmix, 0), (climbmix, 6543), (fineweb, 14)):
        with pytest.raises(ConfigError, match=f"choose 1 to {dataset.max_shards}"):
            HubSource(dataset, bad)


@pytest.mark.slow  # ~2 s: the fast subset stays under a minute
def test_the_hub_cache_is_hidden_from_train_py_wherever_a_variable_or_the_prepare_put_it(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mini_preset
) -> None:
    """BROKE, fixed: the referee hid only the cache its own HF_HUB_CACHE or HF_HOME named (else ~/.cache/huggingface):
    the one HUGGINGFACE_HUB_CACHE or XDG_CACHE_HOME placed, or the one a `prepare` run with other variables had
    downloaded into, stayed readable by train.py, validation file and all."""
    from autoresearch.data.prepare import prepare
    from autoresearch.data.sources.hub import HubSettings
    from autoresearch.evaluator.hidden import data_places
    from autoresearch.evaluator.sandbox import evaluator_env

    rng = random.Random(0)  # text varied enough to learn the mini preset's 300 tokens from
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(400)]
    for name in ("data/train-00.parquet", "data/train-01.parquet", "data/val.parquet"):
        texts = [" ".join(rng.choice(words) for _ in range(300)) for _ in range(8)]
        fake_hub.add(REPO, name, parquet_bytes(texts))
    monkeypatch.setitem(HUB_DATASETS, "tiny", TINY)
    prepared = prepare("tiny", mini_preset, tmp_path / "cache")  # into the fake hub's HF_HUB_CACHE
    downloaded = cache_dir()
    assert list(downloaded.glob("datasets--*/snapshots/*/data/val.parquet"))
    legacy, xdg, home = tmp_path / "legacy-hub", tmp_path / "xdg", tmp_path / "home"
    for place in (legacy, xdg / "huggingface" / "hub", home):
        place.mkdir(parents=True)
    assert HubSettings.from_env({"HUGGINGFACE_HUB_CACHE": str(legacy)}).cache_dir == legacy  # as huggingface_hub
    for name in ("HF_HOME", "HF_HUB_CACHE"):  # the loop runs with other variables than the prepare did
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(legacy))
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    seen = evaluator_env(os.environ)  # what the referee, which hides them, is started with
    assert seen["HUGGINGFACE_HUB_CACHE"] == str(legacy) and seen["XDG_CACHE_HOME"] == str(xdg)
    monkeypatch.setattr(os, "environ", seen)
    hidden = data_places(prepared, None, os.environ)  # what the referee hides, and an agent's namespace too
    assert {downloaded, legacy, xdg / "huggingface" / "hub"} <= set(hidden)


def test_hf_xets_chunk_cache_is_hidden_from_runs_and_agents_wherever_a_variable_or_the_prepare_put_it(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mini_preset
) -> None:
    """BROKE, fixed: hf_xet keeps the chunks of the files it downloads in a cache of its own ($HF_XET_CACHE, else
    $HF_HOME/xet, else ~/.cache/huggingface/xet, as huggingface_hub's constants say), the validation file's text
    among them. Neither a run nor an agent's namespace hid it; both do now, wherever it was at the `prepare` or
    would be under the variables at the run."""
    from loop_support import make_workspace

    from autoresearch.data.prepare import prepare
    from autoresearch.evaluator.hidden import data_places, workspace_data_places
    from autoresearch.evaluator.sandbox import evaluator_env

    rng = random.Random(1)  # text varied enough to learn the mini preset's 300 tokens from
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(400)]
    for name in ("data/train-00.parquet", "data/train-01.parquet", "data/val.parquet"):
        fake_hub.add(REPO, name, parquet_bytes([" ".join(rng.choice(words) for _ in range(300)) for _ in range(8)]))
    monkeypatch.setitem(HUB_DATASETS, "tiny", TINY)
    at_prepare = tmp_path / "xet-at-prepare"
    monkeypatch.setenv("HF_XET_CACHE", str(at_prepare))
    prepared = prepare("tiny", mini_preset, tmp_path / "cache")
    workspace = make_workspace(tmp_path / "ws", prepared)
    for name in ("HF_HOME", "HF_HUB_CACHE", "HF_XET_CACHE", "XDG_CACHE_HOME"):  # the loop runs with other variables
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    ways = {
        "prepare": ({}, at_prepare),
        "HF_XET_CACHE": ({"HF_XET_CACHE": str(tmp_path / "xet")}, tmp_path / "xet"),
        "HF_HOME": ({"HF_HOME": str(tmp_path / "hf")}, tmp_path / "hf" / "xet"),
        "XDG_CACHE_HOME": ({"XDG_CACHE_HOME": str(tmp_path / "xdg")}, tmp_path / "xdg" / "huggingface" / "xet"),
        "HOME": ({"HOME": str(tmp_path / "home")}, tmp_path / "home" / ".cache" / "huggingface" / "xet"),
    }
    for way, (variables, xet) in ways.items():
        xet.mkdir(parents=True)  # chunks were downloaded there
        with monkeypatch.context() as m:
            for name, value in variables.items():
                m.setenv(name, value)
            run = data_places(prepared, None, evaluator_env(os.environ))  # what the referee is started with hides
            assert xet in run, way
            assert xet in workspace_data_places(workspace.root), way  # what the agent's namespace covers
        shutil.rmtree(xet)


def test_a_warning_of_huggingface_hub_is_printed_once() -> None:
    """Offline, `prepare --dataset climbmix` printed every `Retrying in 1s [Retry 1/5].` twice: once bare, by
    huggingface_hub's own handler, and once as `warning: ...`, by the CLI's."""
    code = (
        "import logging; from autoresearch.cli import configure_logging; configure_logging(); "
        "from autoresearch.data.sources import hub; hub._hub_logs_once(); "
        "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')"
    )
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert err == "warning: Retrying in 1s [Retry 1/5].\n"
