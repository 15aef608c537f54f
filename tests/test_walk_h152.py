"""A user's walk of the data preparation (`prepare`, `init` on it, a workspace's damaged data) on a 2-core CPU-only
machine (helper 152): what broke, hung or misled.

1. A damaged shard (a byte flipped, truncated, a link, a FIFO) stopped `run` and `try` with the evaluator's hint "run
   `autoresearch prepare` with the same --dataset and --preset", which names neither: pasted as it is, it prepared
   the default dataset (python-source on a CPU), left the damaged shard as it was, and the next `run` stopped the same
   way. The loop names the command, as it does where the data is gone (`prepare_again_hint`). So for a garbled
   manifest.json, which stopped `run` and `try` at their start with the same hint.
2. A FIFO named `*.txt` in a `local:PATH` folder hung `prepare` (and `init`) for ever at "reading", with no word.
3. A second `prepare` (or `init`) of data another one was preparing waited on its lock without a word: for a hub
   dataset that is the whole download and tokenizing of the first, a silent wait a user takes for a hang.
4. `prepare --force` where the data cannot be fetched (HF_HUB_OFFLINE=1 without the files, the network down) removed
   the manifest, the tokenizer and the shard records before it found out: every workspace on the data stopped with
   "no prepared data" until the network came back. The data is fetched first now; a failure leaves it as it was.
5. The hint to prepare a hub dataset's data again (a shard damaged, the data deleted) had no `--shards`: a workspace
   made with `init --dataset climbmix --shards 2` was told `autoresearch prepare --dataset climbmix ...`, which
   downloads the default 10 shards (GBs) and writes other data, which the workspace then refuses ("the apparatus
   changed"). The hint names the count the manifest holds, or says what N is where the manifest is gone.
6. `init --dataset climbmix --shards 3` for a second workspace rewrote the data the first (`--shards 2`) was measured
   on, in the same folder, without a word: the first then stopped with "the apparatus changed ... make a new
   workspace", its night stranded. Preparing another request over prepared data now says what it replaces and that
   the workspaces on it stop until it is prepared with those again (the data written is the same as before).
7. The same hint for a corpus in a folder named with a space (`local:/home/me/my corpus`) gave `--dataset
   local:/home/me/my corpus` unquoted: pasted, `prepare` stopped on "unrecognized arguments: corpus". Quoted now.
8. A hub file with no `text` column (HF_ENDPOINT at a server that sends other files) was called "the cached copy is
   damaged: delete it and run again": downloaded again, it was the same file, and the same error, after as many GBs.
   The hint now says the server sent another kind of file, and to point HF_ENDPOINT at the Hub first.
9. `--cache-dir ~data/x` (a typo for ~/data/x), `AUTORESEARCH_CACHE` so, or `--dataset local:~data/x`, where no user
   is named `data`: a traceback (RuntimeError: Could not determine home directory). An error and a hint now.
10. `init ws --dataset local:corpus` (relative) wrote `local:corpus` into autoresearch.json: the hint to prepare the
   data again, pasted in the workspace, said "local dataset corpus does not exist". The full path is written now,
   as the data's manifest has it.
11. `local:PATH` on a folder with no file it reads (empty, or a tree of .py files) said "no .txt, .md, .jsonl,
   .parquet files under PATH" and nothing more; it now says that only these are read, and names --root for .py.
12. A corpus folder of links to folders (books -> /data/books) was read without them (links to folders are not
   followed: a loop), and said only "corpus too small: 6 bytes in 1 file". A warning now names the folders not read
   (what is read is as before: prepared data stays the same).
13. Prepared data copied without its (empty) `.lock` onto a read-only mount, to share it: `prepare` and `init`
   said "cannot write the prepared data ...: a read-only one works once the data in it is prepared", of data
   prepared. No lock is needed where no one can write: prepared data is used so.
14. A cached hub file with bytes changed inside (its parquet footer whole) was used as it was: `prepare --force`, or
   the rebuild of a damaged shard, made other data of it without a word, and the workspaces on the data stopped
   ("the apparatus changed"). A cached file is hashed against its name (the sha256 the server announced) as a
   download is, when it is fetched to be tokenized: read whole anyway; a damaged one is downloaded again.
15. A byte flipped in a train shard (its size whole): the set-up passed, the evaluator hashed the shard as the run
   trained and would not score it, and the loop recorded "CRASH ... invalid result: a train shard is corrupt" as the
   experiment's own failure, then did so for every experiment after it, all night. It stops the loop now, as a
   damaged val shard does, with the experiment kept in flight and the prepare command to repair the data.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import random
import shlex
import shutil
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loop_support import (
    FakeExecutor,
    ScriptedAgent,
    constant,
    fake_result,
    make_loop,
    make_workspace,
    on_a_read_only_mount,
    set_lr,
)
from rich.console import Console
from test_hub_download import REPO, parquet_bytes
from test_scheduler import score

from autoresearch.config.apparatus import Apparatus, prepare_again_hint
from autoresearch.config.paths import cache_root
from autoresearch.config.presets import get_preset
from autoresearch.data.prepare import prepare
from autoresearch.data.shards import REPAIR_HINT
from autoresearch.data.sources import make_source
from autoresearch.data.sources.hub import HUB_DATASETS, HubDataset, HubSource
from autoresearch.errors import ConfigError, DataError
from autoresearch.loop.engine import LoopError
from autoresearch.loop.executor import LocalExecutor, RunSpec, outcome_of
from autoresearch.loop.ledger import Ledger
from autoresearch.vocabulary import Status
from autoresearch.workspace.init import create_workspace


@pytest.mark.slow  # an evaluator process starts (torch's import), to find the shard damaged
def test_a_damaged_shard_stops_the_run_with_the_prepare_command_that_repairs_it(tmp_path, tiny_prepared):
    data = tmp_path / "cache" / "data" / tiny_prepared.parent.name / "tiny"
    shutil.copytree(tiny_prepared, data)
    ws = make_workspace(tmp_path / "ws", data)
    with (data / "val.bin").open("r+b") as f:
        f.truncate(1000)
    outcome = LocalExecutor(prewarm=False).run(RunSpec(ws.root, ws.state / "runs" / "1-0", timeout=60, fingerprint=""))
    assert "val.bin is truncated or damaged" in outcome.reason
    assert "`autoresearch prepare --dataset python-source --root DIR --preset tiny" in outcome.hint
    assert f"--cache-dir {tmp_path / 'cache'}`" in outcome.hint


def test_a_fifo_named_as_text_in_a_local_corpus_is_refused_not_waited_on(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some text\n" * 50_000)
    fifo = corpus / "b.txt"
    os.mkfifo(fifo)
    failed: list[BaseException] = []

    def check() -> None:
        try:
            make_source(f"local:{corpus}", get_preset("tiny"))
        except BaseException as exc:
            failed.append(exc)

    reader = threading.Thread(target=check, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # it waits on the FIFO for a writer: give it one, with nothing to say
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
        pytest.fail("reading the corpus waited on a FIFO")
    assert len(failed) == 1 and isinstance(failed[0], DataError)
    assert "b.txt is not a regular file" in str(failed[0]) and "remove it" in failed[0].hint


def test_a_prepare_waiting_for_another_to_finish_says_so(tiny_prepared, corpus_dir, cache_dir):
    told = io.StringIO()
    done = threading.Event()

    def second() -> None:
        prepare("python-source", get_preset("tiny"), cache_dir, root=corpus_dir, console=Console(file=told, width=300))
        done.set()

    with (tiny_prepared / ".lock").open("r") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the first prepare, at work
        waiter = threading.Thread(target=second, daemon=True)
        waiter.start()
        time.sleep(0.3)
        assert not done.is_set()
        assert f"waiting for another prepare of {tiny_prepared} to finish" in told.getvalue()
    waiter.join(10)
    assert done.is_set() and "already prepared" in told.getvalue()


def test_prepare_force_that_cannot_fetch_the_data_leaves_the_prepared_data_whole(
    fake_hub, tmp_path, monkeypatch, mini_preset
):
    rng = random.Random(2)  # text varied enough to learn the mini preset's 300 tokens from
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(400)]
    for name in ("data/train-00.parquet", "data/val.parquet"):
        fake_hub.add(REPO, name, parquet_bytes([" ".join(rng.choice(words) for _ in range(300)) for _ in range(8)]))
    monkeypatch.setitem(
        HUB_DATASETS, "tiny", HubDataset("tiny", REPO, "data/train-{:02d}.parquet", "data/val.parquet", 1, 1)
    )
    prepared = prepare("tiny", mini_preset, tmp_path / "cache", console=Console(file=io.StringIO()))
    before = {p.name: p.read_bytes() for p in prepared.iterdir()}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and another cache, which does not hold the files
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match="offline mode is on"):
        prepare("tiny", mini_preset, tmp_path / "cache", force=True, console=Console(file=io.StringIO()))
    assert {p.name: p.read_bytes() for p in prepared.iterdir()} == before


def test_the_hint_to_prepare_a_hub_datasets_data_again_names_its_shard_count(tmp_path):
    data = tmp_path / "cache" / "data" / "climbmix" / "tiny"
    data.mkdir(parents=True)
    (data / "manifest.json").write_text(json.dumps({"dataset": {"request": {"dataset": "climbmix", "shards": 2}}}))
    a = Apparatus(preset="tiny", dataset="climbmix", budget_seconds=5.0, data_dir=str(data))
    hint = prepare_again_hint(a)  # a shard damaged: the manifest is there
    assert (
        f"`autoresearch prepare --dataset climbmix --shards 2 --preset tiny --cache-dir {tmp_path / 'cache'}`" in hint
    )
    (data / "manifest.json").unlink()  # the data deleted
    hint = prepare_again_hint(a)
    assert "--dataset climbmix --shards N --preset tiny" in hint and "`init --shards N`, or 10" in hint, hint


def test_preparing_more_shards_of_a_hub_dataset_says_the_workspaces_on_fewer_stop(
    fake_hub, tmp_path, monkeypatch, mini_preset
):
    rng = random.Random(3)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(400)]
    for name in ("data/train-00.parquet", "data/train-01.parquet", "data/val.parquet"):
        fake_hub.add(REPO, name, parquet_bytes([" ".join(rng.choice(words) for _ in range(300)) for _ in range(8)]))
    monkeypatch.setitem(
        HUB_DATASETS, "tiny", HubDataset("tiny", REPO, "data/train-{:02d}.parquet", "data/val.parquet", 1, 2)
    )
    prepare("tiny", mini_preset, tmp_path / "cache", console=Console(file=io.StringIO()))  # a workspace's data
    told = io.StringIO()
    prepare("tiny", mini_preset, tmp_path / "cache", shards=2, console=Console(file=told, width=400))  # another's
    assert "holds the data prepared with --shards 1: this replaces it" in told.getvalue()
    assert "the apparatus changed" in told.getvalue()


def test_the_hint_to_prepare_again_quotes_a_corpus_or_cache_named_with_a_space(tmp_path):
    cache = tmp_path / "my cache"
    data = cache / "data" / "local-my corpus-47262c82" / "tiny"
    a = Apparatus(preset="tiny", dataset=f"local:{tmp_path}/my corpus", budget_seconds=5.0, data_dir=str(data))
    command = prepare_again_hint(a).split("`")[1]
    assert shlex.split(command)[1:] == [
        "prepare",
        "--dataset",
        a.dataset,
        "--preset",
        "tiny",
        "--cache-dir",
        str(cache),
    ]


def test_a_hub_file_without_a_text_column_is_not_called_a_damaged_copy_to_download_again(fake_hub, monkeypatch):
    other = io.BytesIO()
    pq.write_table(pa.table({"content": ["a b c"] * 4}), other)
    fake_hub.add(REPO, "data/train-00.parquet", other.getvalue())
    fake_hub.add(REPO, "data/val.parquet", parquet_bytes(["x y z"] * 4))
    source = HubSource(HubDataset("tiny", REPO, "data/train-{:02d}.parquet", "data/val.parquet", 1, 1), None)
    source.fetch()
    with pytest.raises(DataError, match="has no 'text' column") as err:
        list(source.parts()[0].documents())
    assert "damaged" not in err.value.hint and "HF_ENDPOINT" in err.value.hint and fake_hub.endpoint in err.value.hint


@pytest.mark.slow  # a copy of the prepared data, a workspace and the loop's start: a second
def test_a_garbled_manifest_stops_the_loop_with_the_prepare_command_that_repairs_it(tmp_path, tiny_prepared):
    data = tmp_path / "cache" / "data" / tiny_prepared.parent.name / "tiny"
    shutil.copytree(tiny_prepared, data)
    ws = make_workspace(tmp_path / "ws", data)
    (data / "manifest.json").write_text("garbage")
    with pytest.raises(LoopError, match=r"cannot read .*manifest\.json") as err:
        make_loop(ws, FakeExecutor(lambda source: 1.0))
    assert "`autoresearch prepare --dataset python-source --root DIR --preset tiny" in err.value.hint


def test_a_cache_or_corpus_in_the_home_of_no_such_user_is_an_error_not_a_traceback(monkeypatch):
    """`--cache-dir ~data/x` (for ~/data/x), `$AUTORESEARCH_CACHE` so, or `--dataset local:~data/x`: a traceback,
    RuntimeError: Could not determine home directory."""
    with pytest.raises(ConfigError, match="no user is named 'no-such-user-h152'") as err:
        cache_root("~no-such-user-h152/cache")
    assert "--cache-dir" in err.value.hint
    monkeypatch.setenv("AUTORESEARCH_CACHE", "~no-such-user-h152/cache")
    with pytest.raises(ConfigError):
        cache_root()
    with pytest.raises(DataError, match="does not exist"):
        make_source("local:~no-such-user-h152/corpus", get_preset("tiny"))


@pytest.mark.slow  # git and the device check: a second
def test_a_workspace_on_a_corpus_named_relative_to_where_init_ran_records_its_full_path(
    tmp_path, monkeypatch, tiny_prepared
):
    """`init ws --dataset local:corpus` wrote "local:corpus" into autoresearch.json: the hint to prepare the data
    again, pasted in the workspace, said "local dataset corpus does not exist"; `status` named no folder."""
    (tmp_path / "corpus").mkdir()
    monkeypatch.chdir(tmp_path)
    create_workspace(tmp_path / "ws", get_preset("tiny"), "local:corpus", tiny_prepared, 5.0, tag="t")
    assert Apparatus.load(tmp_path / "ws" / "autoresearch.json").dataset == f"local:{tmp_path / 'corpus'}"


def test_a_local_corpus_with_no_file_it_reads_says_what_it_reads(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.py").write_text("print('hello')\n" * 50_000)
    with pytest.raises(DataError, match="parquet files under") as err:
        make_source(f"local:{tmp_path / 'code'}", get_preset("tiny"))
    assert err.value.hint and "--dataset python-source --root DIR" in err.value.hint


def test_a_linked_folder_in_a_local_corpus_that_is_not_read_is_told(tmp_path, caplog):
    """A corpus folder of links to folders of text (books -> /data/books): "corpus too small: 6 bytes in 1 file",
    with no word that the linked folders were not read."""
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text("some text\n" * 50_000)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "readme.md").write_text("hello\n")
    (tmp_path / "corpus" / "books").symlink_to(tmp_path / "books")
    with pytest.raises(DataError, match="corpus too small"):
        make_source(f"local:{tmp_path / 'corpus'}", get_preset("tiny"))
    assert "1 linked folder under" in caplog.text and "is not read" in caplog.text and ": books" in caplog.text


@pytest.mark.slow  # a prepare in a process of its own, in a mount namespace
def test_data_prepared_and_copied_without_its_lock_to_a_read_only_mount_is_used(
    tmp_path, tiny_prepared, corpus_dir, subprocess_env
):
    cache = tmp_path / "shared"
    data = cache / "data" / tiny_prepared.parent.name / "tiny"
    shutil.copytree(tiny_prepared, data, ignore=shutil.ignore_patterns(".lock"))  # `cp data/* ...`: no dot files
    cli = f"{sys.executable} -m autoresearch prepare --dataset python-source --root {corpus_dir} --preset tiny"
    said = on_a_read_only_mount(str(cache), f"{cli} --cache-dir {cache}; echo prepare=$?", subprocess_env)
    assert "already prepared" in said and "prepare=0" in said, said


def test_a_cached_hub_file_damaged_inside_is_downloaded_again_not_prepared_from(fake_hub, capfd):
    """Bytes flipped in the middle of a cached parquet file (the disk, a stray write): its footer was whole, so it was
    taken as it was, and `prepare --force` (or a damaged shard's rebuild) made other data of it, without a word:
    the workspaces on it then stopped ("the apparatus changed")."""
    fake_hub.add(REPO, "data/train-00.parquet", parquet_bytes([f"train document {i} " * 40 for i in range(60)]))
    fake_hub.add(REPO, "data/val.parquet", parquet_bytes(["val document " * 40] * 4))
    dataset = HubDataset("tiny", REPO, "data/train-{:02d}.parquet", "data/val.parquet", 1, 1)
    HubSource(dataset, None).fetch()
    (cached,) = Path(os.environ["HF_HUB_CACHE"]).glob(
        f"datasets--*/blobs/{fake_hub.etag(REPO, 'data/train-00.parquet')}"
    )
    data = bytearray(cached.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4] = b"XXXX"
    cached.write_bytes(bytes(data))
    gets = len(fake_hub.gets())
    HubSource(dataset, None).fetch()
    assert [r.filename for r in fake_hub.gets()[gets:]] == ["data/train-00.parquet"]
    assert "the cached data/train-00.parquet is damaged" in capfd.readouterr().err


def test_a_train_shard_damaged_stops_the_loop_not_records_each_experiment_a_crash(workspace):
    """A byte flipped in a train shard (its size whole, so the run's set-up passed): the evaluator hashed it while the
    run trained and would not score it, and the loop recorded the experiment as a crash of its own ("invalid result:
    a train shard is corrupt ..."), then the next, and the next: a night of proposals lost, agent turns paid for."""
    shard = "/c/data/x/tiny/train-00000.bin"
    why = f"a train shard is corrupt ({shard} does not match its SHA-256); {REPAIR_HINT}"

    class DamagedTrainShard(FakeExecutor):
        def run(self, spec):
            if constant(workspace.read_train_py(), "LR") == 0.2:
                result = replace(fake_result(1.0, spec.fingerprint), val_bpb=None, valid=False, invalid_reason=why)
                return outcome_of(0, result, "", "", 0.5, spec.fingerprint)
            return super().run(spec)

    loop = make_loop(workspace, DamagedTrainShard(score))
    loop.baseline()
    with pytest.raises(LoopError, match=r"a train shard is corrupt \(/c/data/x/tiny/train-00000\.bin") as err:
        loop.step(ScriptedAgent([set_lr(0.2)]))
    assert err.value.hint == REPAIR_HINT  # made the command by LocalExecutor (repair_hint), as for a damaged val shard
    stopped = Ledger(workspace.root).get(2)
    assert stopped.status == Status.RUNNING and stopped.attempts == 0
