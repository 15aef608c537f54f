"""The training data as the evaluator serves it and the experiment receives it: the right shape and shift,
random tokens before the clock, train rows only after it and never validation, every row once per
epoch in a fixed order, nothing after the deadline. The harness's Run talks to a real evaluator
Session over a socket pair, in one process.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autoresearch.config.presets import PRESETS, Preset
from autoresearch.data.shards import MANIFEST_FORMAT, Manifest, ShardInfo, write_shard
from autoresearch.data.sources import TRAIN, VAL
from autoresearch.data.tokenizer import Tokenizer
from autoresearch.evaluator.clock import WallClock
from autoresearch.evaluator.feeder import Feeder, RowOrder
from autoresearch.evaluator.session import Session
from autoresearch.harness.run import Run, TrainingFailed
from autoresearch.wire import CHANNEL_ENV, Channel

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
    return handmade_dataset(tmp_path, preset, monkeypatch, train=[(1000, 7), (2000, 0), (3000, 5)])


def handmade_dataset(tmp_path: Path, preset: Preset, monkeypatch: pytest.MonkeyPatch, train) -> Path:
    out = tmp_path / "data"
    out.mkdir()
    singles = [bytes([b]) for b in range(256)]
    pairs = [bytes([a, b]) for a in range(256) for b in range(256)]
    tokenizer = Tokenizer([b"", *singles, *pairs[: preset.vocab_size - 257]])
    tokenizer.save(out / "tokenizer.json")
    infos = []
    for i, (first, n) in enumerate(train):
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


@contextlib.contextmanager
def served(dataset: Path, preset: Preset, budget: float = 30.0, clock=None, outcome: list | None = None):
    """A harness Run connected to an evaluator Session serving `dataset`, on `clock` (default: the wall
    clock); yields both. What `Session.serve` returned goes into `outcome`, once it has."""
    ours, theirs = socket.socketpair()
    manifest = Manifest.load(dataset / "manifest.json")
    feeder = Feeder(dataset, manifest, preset.vocab_size)
    constants = {
        "seq_len": preset.seq_len, "vocab_size": preset.vocab_size, "budget_seconds": budget,
        "untimed_steps": preset.untimed_steps, "train_rows": feeder.order.num_rows, "eval_batch_rows": 2,
    }  # fmt: skip
    session = Session(Channel(ours), feeder, constants, budget, clock or WallClock())
    outcome = [] if outcome is None else outcome
    thread = threading.Thread(target=lambda: outcome.append(session.serve()), daemon=True)
    thread.start()
    channel = Channel(theirs)
    assert channel.receive()[0] == {"op": "go", "payload": 0}
    hello, _ = channel.request({"op": "hello"})
    try:
        yield Run(channel, hello), session
    finally:
        theirs.close()
        thread.join(5)


def start_clock(run: Run) -> None:
    """Hand over a stand-in graph (the data service does not look at it) and start the clock."""
    run._channel.send({"op": "model"}, b"graph")
    run._exported = "graph"  # type: ignore[assignment]
    run._start_clock()


def train_steps(run: Run, batches, clock: HandClock, count: int, seconds: float, **report) -> None:
    """`count` steps of `seconds` each on the training clock (hardly any wall time passes), reported as the
    harness reports them (`report`: its loss, say)."""
    for _ in range(count):
        next(batches)
        clock.now += seconds
        run._channel.send({"op": "step", **report})


def test_batches_are_int64_of_batch_by_seq_len_and_targets_are_inputs_shifted_by_one(dataset, preset) -> None:
    with served(dataset, preset) as (run, _):
        batches = run.train_batches(4)
        start_clock(run)
        for _ in range(5):
            x, y = next(batches)
            assert x.shape == y.shape == (4, SEQ)
            assert x.dtype == y.dtype == torch.int64
            assert (x[:, 1:] == y[:, :-1]).all()
            assert (x[:, 0] == 0).all()  # rows are BOS-aligned
            rows = torch.cat([x, y[:, -1:]], dim=1)  # the whole stored row
            assert (rows[:, 1:] == rows[:, 1:2] + torch.arange(SEQ)).all()


def test_before_the_clock_starts_the_experiment_gets_random_tokens_not_training_rows(dataset, preset) -> None:
    with served(dataset, preset) as (run, session):
        batches = run.train_batches(4)
        for _ in range(10):
            x, y = next(batches)
            rows = torch.cat([x, y[:, -1:]], dim=1)
            assert not (rows[:, 1:] == rows[:, 1:2] + torch.arange(SEQ)).all(dim=1).any()  # no stored row
        assert session.timeline.timed_rows == 0 and session.feeder.rows_served == 0


def test_rows_come_only_from_the_train_shards_never_validation(dataset, preset) -> None:
    with served(dataset, preset) as (run, _):
        batches = run.train_batches(5)
        start_clock(run)
        seen = set()
        for _ in range(20):  # several epochs
            x, y = next(batches)
            assert int(x.max()) < VAL_TOKEN_BASE and int(y.max()) < VAL_TOKEN_BASE
            seen.update(row_ids(x))
        assert sorted(seen) == TRAIN_IDS


def test_one_epoch_visits_every_train_row_exactly_once(dataset, preset) -> None:
    with served(dataset, preset) as (run, session):
        batches = run.train_batches(4)  # 12 rows: 3 batches per epoch
        start_clock(run)
        epoch = [i for _ in range(3) for i in row_ids(next(batches)[0])]
        assert sorted(epoch) == TRAIN_IDS
        assert session.feeder.order.epoch == 1
        second = [i for _ in range(3) for i in row_ids(next(batches)[0])]
        assert sorted(second) == TRAIN_IDS
        assert second != epoch  # reshuffled each epoch
        assert batches.tokens_served == 6 * 4 * SEQ
        assert session.timeline.timed_rows == 24


def test_the_order_is_the_same_for_every_experiment_and_every_batch_size(dataset, preset) -> None:
    orders = []
    for size, count in ((4, 9), (4, 9), (3, 12)):
        with served(dataset, preset) as (run, _):
            batches = run.train_batches(size)
            start_clock(run)
            orders.append([i for _ in range(count) for i in row_ids(next(batches)[0])])
    assert orders[0] == orders[1] == orders[2]  # two experiments see the same data in the same order


def test_row_order_is_a_fixed_permutation_per_epoch() -> None:
    order = RowOrder(10)
    first = order.take(10)
    assert sorted(first.tolist()) == list(range(10))
    assert first.tolist() == RowOrder(10).take(10).tolist()
    assert first.tolist() != list(range(10))  # shuffled
    assert sorted(order.take(10).tolist()) == list(range(10))
    assert RowOrder(10, seed=1).take(10).tolist() != first.tolist()


def test_token_ids_above_32767_survive_the_uint16_rows(tmp_path, preset, monkeypatch) -> None:
    data = handmade_dataset(tmp_path, preset, monkeypatch, train=[(65_000, 3)])
    with served(data, preset) as (run, _):
        batches = run.train_batches(3)
        start_clock(run)
        x, y = next(batches)
        assert sorted(x[:, 1].tolist()) == [65_000, 65_001, 65_002]
        assert int(y.max()) == 65_002 + SEQ - 1


def test_train_batches_may_be_asked_for_once(dataset, preset) -> None:
    with served(dataset, preset) as (run, _):
        run.train_batches(2)
        with pytest.raises(RuntimeError, match="once"):
            run.train_batches(2)


def test_the_clock_does_not_start_before_the_model_is_handed_over(dataset, preset) -> None:
    with served(dataset, preset) as (run, session):
        run.train_batches(2)
        with pytest.raises(TrainingFailed, match="set_model"):
            run.step_done(torch.tensor(1.0))  # the preset's untimed steps are done: the clock would start
        run._exported = "graph"  # type: ignore[assignment]  # even an experiment that skips the harness's own check is refused
        with pytest.raises(TrainingFailed, match="set_model"):
            run._start_clock()
        assert session.timeline.clock is None


@pytest.mark.slow
def test_no_training_rows_are_served_past_the_deadline_and_a_late_stop_is_invalid(dataset, preset) -> None:
    with served(dataset, preset, budget=0.2) as (run, session):
        batches = run.train_batches(4)
        start_clock(run)
        time.sleep(1.5)  # past the 0.2 s budget and the 1 s grace of a run without steps
        served_before = session.feeder.rows_served
        for _ in range(3):
            next(batches)
        assert session.feeder.rows_served == served_before
        run._channel.send({"op": "stop"})
        run._channel.send({"op": "weights"}, b"w")
        time.sleep(0.2)
        assert "past the 0.2s budget" in session.late()


class HandClock:
    """A training clock the test moves by hand: what the experiment's CPU time would read."""

    kind, cores = "cpu", 2

    def __init__(self) -> None:
        self.now = 100.0

    def read(self) -> float:
        return self.now


def test_the_budget_is_counted_on_the_training_clock_not_the_wall_clock(dataset, preset) -> None:
    clock = HandClock()
    with served(dataset, preset, budget=5.0, clock=clock) as (run, session):
        assert run._cpu_cores == 2  # the harness reads its own CPU time the same way (schedules, time_up)
        batches = run.train_batches(4)
        start_clock(run)
        train_steps(run, batches, clock, 4, 1.0, loss=3.0)
        served_before = session.feeder.rows_served
        next(batches)  # 4 s of 5: still training rows, whatever the wall clock says
        assert session.feeder.rows_served > served_before
        assert session.progress("training") | {"reported_loss": None} == {
            "phase": "training", "step": 4, "training_seconds": 4.0, "budget_seconds": 5.0,
            "training_clock": "CPU time / 2 cores", "tokens_per_second": round(5 * 4 * SEQ / 4.0, 1),
            "reported_loss": None,
        }  # fmt: skip
        clock.now += 1.0 + 1.5 * 1.0 + 0.25 + 0.15  # the budget, then the grace: 1.5 typical steps and 0.25 s
        served_before = session.feeder.rows_served
        next(batches)
        assert session.feeder.rows_served == served_before  # time is up on the training clock
        run._channel.send({"op": "stop"})
        run._channel.send({"op": "weights"}, b"w")
        time.sleep(0.2)
        assert session.late() == (  # where the time went, for a user whose honest run the machine stalled
            "trained 6.9s, past the 5s budget (its last step took 1.00s, a typical one 1.00s, and 2.90s passed from "
            "it to `stop`; the grace past the budget was 1.75s)"
        )


def test_a_last_step_that_ends_within_one_typical_step_past_the_budget_counts(dataset, preset) -> None:
    clock = HandClock()
    with served(dataset, preset, budget=50.0, clock=clock) as (run, session):  # steps of 2 % of the budget
        batches = run.train_batches(4)
        start_clock(run)
        train_steps(run, batches, clock, 50, 1.0)
        next(batches)  # the last step starts at the budget, and takes as long as the others (and a bit)
        clock.now += 1.3
        run._channel.send({"op": "stop"})
        run._channel.send({"op": "weights"}, b"w")
        time.sleep(0.2)
        assert session.late() is None
        assert session.elapsed() == pytest.approx(51.3)


def test_weights_that_come_past_the_budget_its_grace_and_the_hand_over_are_invalid(dataset, preset) -> None:
    """The hand-over is on the training clock: training on after `stop` (in the time a padded model's size once
    bought, tests/test_red_team_clock.py) ends no later than any other training."""
    clock = HandClock()
    with served(dataset, preset, budget=50.0, clock=clock) as (run, session):
        batches = run.train_batches(4)
        start_clock(run)
        train_steps(run, batches, clock, 50, 1.0)
        run._channel.send({"op": "stop"})
        run._channel.request({"op": "hello"})  # `stop` is in
        clock.now += 1.5 * 1.0 + 0.25 + 0.5 + 0.1  # past the grace (1.5 typical steps and 0.25 s) and the 0.5 s
        run._channel.send({"op": "weights"}, b"w")
        time.sleep(0.2)
        assert "the weights came 52.3s after the clock started (at most 52.2s" in session.late()


class SlowToRead(HandClock):
    """A hand clock whose reader, once `slow`, is kept waiting for a CPU for a moment before it reads."""

    slow = False

    def read(self) -> float:
        if self.slow:
            time.sleep(0.3)
        return self.now


@pytest.mark.slow  # over a second: the fast subset stays under a minute
def test_what_the_experiment_does_after_stop_is_not_training_however_late_the_evaluator_reads(dataset, preset):
    """Was a flake of the Ray test under CI load: an honest run of a 1 s budget "trained 1.4 s". The evaluator
    reads the clock when `stop` reaches it; kept waiting for a CPU meanwhile, it counted on a CPU clock what the
    experiment did after `stop` (exporting the weights, tearing down). Now it answers `stop` once it has read the
    clock, and the harness hands the weights over only then."""
    clock = SlowToRead()

    class Exported:
        def weights(self) -> bytes:
            clock.now += 0.3  # the CPU time an export takes
            return b"w"

    with served(dataset, preset, budget=50.0, clock=clock) as (run, session):
        batches = run.train_batches(4)
        start_clock(run)
        train_steps(run, batches, clock, 50, 1.0)
        run._exported = Exported()  # type: ignore[assignment]
        clock.slow = True
        run.finish()
        time.sleep(0.5)
        assert session.timeline.trained == 50.0 and session.timeline.handed_over == pytest.approx(50.3)
        assert session.late() is None


def test_the_harness_says_training_is_done_before_the_weights_go(dataset, preset, capsys) -> None:
    """Was a CI failure: the line came after the weights, and the evaluator, once they were in, stopped train.py
    before it printed: the run's log lacked how many steps it trained."""
    printed_before = []

    class Exported:
        def weights(self) -> bytes:
            printed_before.append(capsys.readouterr().out)
            return b"w"

    clock = HandClock()
    with served(dataset, preset, budget=5.0, clock=clock) as (run, _session):
        batches = run.train_batches(4)
        start_clock(run)
        train_steps(run, batches, clock, 5, 1.0)
        run._exported = Exported()  # type: ignore[assignment]
        run.finish()
    assert printed_before and "training done: " in printed_before[0]


@pytest.mark.slow
def test_weights_may_take_one_typical_step_longer_on_a_slowed_machine(dataset, preset) -> None:
    """Was a break on two H200s: a CPU hog beside a GPU run slowed its hand-over to 0.9 s of the 0.8 s allowed,
    and an honest run was invalid. Its steps were slowed too: the weights may take one typical step longer."""
    clock = HandClock()
    with served(dataset, preset, budget=5.0, clock=clock) as (run, session):
        batches = run.train_batches(4)
        start_clock(run)
        train_steps(run, batches, clock, 5, 0.6)  # slow steps
        run._channel.send({"op": "stop"})
        time.sleep(0.8)  # past the 0.5 s for a few bytes, within one step more
        run._channel.send({"op": "weights"}, b"w")
        time.sleep(0.2)
        assert session.late() is None


def test_the_clock_asked_for_after_stop_breaks_the_protocol(dataset, preset) -> None:
    """Red team (helper 122): a run that said `stop`, then started the clock and handed its weights over, was scored
    as valid, having trained on no row (none is served after `stop`)."""
    outcome: list = []
    with served(dataset, preset, outcome=outcome) as (run, session):
        run._channel.send({"op": "model"}, b"graph")
        run._channel.request({"op": "stop", "steps": 0})
        run._channel.send({"op": "clock"})
        time.sleep(0.3)
        assert session.timeline.clock is None
    assert outcome == ["the clock was asked for after `stop`"]


def test_a_model_handed_over_after_the_clock_started_breaks_the_protocol(dataset, preset) -> None:
    with served(dataset, preset) as (run, session):
        start_clock(run)
        run._channel.send({"op": "model"}, b"a graph trained on the clock")
        time.sleep(0.3)
        assert session.timeline.program == b"graph"  # the graph handed over before the clock stays the one scored


@pytest.mark.parametrize(
    ("op", "size"), [("hello", 1 << 30), ("batch", 1), ("model", 65), ("weights", 1 << 40), ("nonsense", 1)]
)
def test_a_payload_its_request_may_not_carry_is_refused_unread(dataset, preset, op, size) -> None:
    """What the experiment sends is read into the evaluator's memory, outside the run's share of it: a train.py
    made its evaluator hold 2.2 GiB beyond its 640 MiB with a `hello` of 1 GiB (red team). Only the graph and the
    weights carry bytes, each up to its most; a payload announced beyond that breaks the protocol, unread."""
    ours, theirs = socket.socketpair()
    session = Session(Channel(ours, payloads={"model": 64, "weights": 64}), None, {}, 30.0, WallClock())
    answered: list[str | None] = []
    thread = threading.Thread(target=lambda: answered.append(session.serve()), daemon=True)
    thread.start()
    channel = Channel(theirs)
    channel.receive()  # go
    header = json.dumps({"op": op, "payload": size}).encode()
    theirs.sendall(struct.pack(">I", len(header)) + header)  # and not one byte of it
    thread.join(5)
    most = {"model": 64, "weights": 64}.get(op, 0)
    assert answered == [f"a payload of {size:,} bytes for {op!r}, which may carry {most:,} at most"]
    theirs.close()


def test_the_weights_come_in_one_wait_while_another_thread_of_the_evaluator_holds_the_interpreter() -> None:
    """The evaluator compiles the handed-over graph in a thread of its own while the run trains (evaluator/ahead.py),
    which holds Python's interpreter lock most of the time. The channel read a payload one socket buffer (~200 KB) at
    a time, each read then waiting up to the switch interval (5 ms) for that thread: with a cold compile cache, the
    h100 preset's 200 MB of weights came 1.2-2.7 s late, and every honest run at a 5 s budget was judged late
    (BENCHMARKS.md). The sender is another process, as the experiment is."""
    ours, theirs = socket.socketpair()
    size = 96 << 20
    send = "from autoresearch.wire import Channel as C; c = C.from_env(); c.send({'op': 'ready'}); " + (
        f"c.send({{'op': 'weights'}}, bytes({size}))"
    )
    env = {**os.environ, CHANNEL_ENV: str(theirs.fileno())}
    sender = subprocess.Popen([sys.executable, "-c", send], pass_fds=[theirs.fileno()], env=env)
    theirs.close()
    channel = Channel(ours)
    assert channel.receive()[0]["op"] == "ready"
    busy = threading.Event()

    def hold_the_interpreter() -> None:  # pure Python: it lets go of the lock only when another thread asks
        while not busy.is_set():
            sum(range(1000))

    holder = threading.Thread(target=hold_the_interpreter, daemon=True)
    holder.start()
    try:
        started = time.monotonic()
        header, payload = channel.receive()
        took = time.monotonic() - started
    finally:
        busy.set()
        holder.join()
        sender.wait(10)
    assert header["op"] == "weights" and len(payload) == size
    assert took < 1.0, f"{size >> 20} MB took {took:.2f}s to read"  # 2.8 s when read a buffer at a time
