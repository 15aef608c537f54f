"""With several workers the loop combines the near-wins of the latest rounds (loop/combining.py)."""

from __future__ import annotations

import threading
import time

import pytest
from loop_support import BIGRAM_TRAIN_PY, ScriptedAgent, constant, make_workspace, set_lr, with_constants
from test_scheduler import SEED_NOISE, pairs, scheduler, wait_until

from autoresearch.loop.combining import COMBINER
from autoresearch.loop.executor import Outcome
from autoresearch.loop.judge import NEAR_WIN_SAID
from autoresearch.loop.ledger import Ledger
from autoresearch.vocabulary import RunEnd, Status


def near_wins(source: str) -> float:
    """LR 0.06 and BATCH 16 are each 0.0015 better: more than the noise (0.0014) over the baseline's two seeds,
    less than the margin (0.0028). Together they win by more than the margin."""
    lr, batch = constant(source, "LR"), constant(source, "BATCH")
    return (
        1.05
        - 0.0015 * (lr == 0.06)
        - 0.0015 * (batch == 16)
        + 0.02 * (lr >= 0.3)
        + SEED_NOISE[constant(source, "SEED")]
    )


def batch(value: int):
    return lambda ctx: (f"BATCH {value}", with_constants(ctx.train_py, BATCH=value))


def fillers(count: int) -> list:
    """Changes that lose (LR 0.3, 0.31, ...), each a train.py of its own."""
    return [set_lr(round(0.3 + i / 100, 2)) for i in range(count)]


def round_of_two(workspace):
    """The baseline's seeds, then exp 2 and 3, in pairs; a filler (LR >= 0.3) ends only after exp 2 and 3 were judged,
    so that it cannot take the place of the combination however the threads are scheduled."""
    paired = pairs(4)

    def gate(source: str) -> None:
        if constant(source, "LR") >= 0.3:
            ledger = Ledger(workspace.root)
            wait_until(lambda: all(ledger.get(i).status.final for i in (2, 3)))
        else:
            paired(source)

    return gate


@pytest.mark.slow  # over half a second
def test_two_near_wins_of_one_round_are_combined_by_the_loop_trained_and_kept(workspace):
    sched, fakes = scheduler(workspace, gate=round_of_two(workspace), score=near_wins)
    sched.run(ScriptedAgent([set_lr(0.06), batch(16), *fillers(2)]), max_experiments=5)
    rows = sched.loop.ledger.all()
    lr, bs = rows[1], rows[2]
    assert lr.status == bs.status == Status.DISCARD and lr.reason.startswith(NEAR_WIN_SAID)
    combined = [r for r in rows if r.agent == COMBINER]
    assert len(combined) == 1, [(r.id, r.description, r.reason) for r in rows]
    exp = combined[0]
    assert exp.description == "near-wins of exp 2, 3 combined: LR 0.05 -> 0.06, BATCH 8 -> 16"
    assert constant(exp.source, "LR") == 0.06 and constant(exp.source, "BATCH") == 16
    assert exp.parent == rows[0].commit and exp.status == Status.KEEP and exp.cost_usd == 0.0
    assert sched.loop.best().id == exp.id and sched.loop.git.head() == exp.commit
    trained = [
        s for fake in fakes.values() for _, _, s in fake.runs if s.replace("SEED = 43", "SEED = 42") == exp.source
    ]
    assert len(trained) == len(exp.run_values) >= 1  # trained itself, not kept on its parts' runs


@pytest.mark.slow
def test_changes_of_code_are_not_combined(workspace):
    def code(ctx):
        return "BATCH 16 and a comment", with_constants(ctx.train_py, BATCH=16) + "\n# a comment\n"

    sched, _ = scheduler(workspace, gate=round_of_two(workspace), score=near_wins)
    sched.run(ScriptedAgent([set_lr(0.06), code, *fillers(2)]), max_experiments=4)
    rows = sched.loop.ledger.all()
    assert rows[2].description == "BATCH 16 and a comment" and rows[2].status == Status.DISCARD  # a near-win too
    assert not [r for r in rows if r.agent == COMBINER]


def test_one_worker_does_not_combine(workspace):
    """One worker's agent has seen every result before its next proposal: it combines what it wants itself."""
    sched, _ = scheduler(workspace, gpus=None, workers=1, score=near_wins)
    sched.run(ScriptedAgent([set_lr(0.06), batch(16), *fillers(1)]), max_experiments=3)
    rows = sched.loop.ledger.all()
    assert [r.status for r in rows[1:3]] == [Status.DISCARD, Status.DISCARD]  # two near-wins
    assert not [r for r in rows if r.agent == COMBINER]


@pytest.mark.slow
def test_a_combination_that_crashed_is_not_combined_again(workspace):
    """A crash is not a measurement: a repeat of a crashed proposal may run. A combination is the loop's own
    proposal, though: made again after each crash, one that always crashes (too large a BATCH for the GPU, say)
    would take a worker for ever."""

    def crashing(source: str):
        if constant(source, "LR") == 0.06 and constant(source, "BATCH") == 16:
            return Outcome(RunEnd.CRASH, None, "CUDA out of memory", "", 1.0)
        return near_wins(source)

    sched, _ = scheduler(workspace, gate=round_of_two(workspace), score=crashing)
    sched.run(ScriptedAgent([set_lr(0.06), batch(16), *fillers(6)]), max_experiments=8)
    combined = [r for r in sched.loop.ledger.all() if r.agent == COMBINER]
    assert [r.status for r in combined] == [Status.CRASH]


@pytest.mark.slow
def test_a_near_win_that_also_changed_the_seed_is_not_combined(workspace):
    """An agent that games the judge: BATCH 9 changes nothing, but with SEED 46 it scores 0.002 better, a near-win
    of seed luck (a change of the seed alone is refused). Combined, that seed would travel into the combination."""

    def lucky(ctx):
        return "BATCH 9, seed 46", with_constants(ctx.train_py, BATCH=9, SEED=46)

    sched, _ = scheduler(workspace, gate=round_of_two(workspace), score=near_wins)
    sched.run(ScriptedAgent([set_lr(0.06), lucky, *fillers(2)]), max_experiments=4)
    rows = sched.loop.ledger.all()
    assert rows[2].description == "BATCH 9, seed 46" and rows[2].val_bpb < rows[0].val_bpb - 0.0014  # a near-win
    assert rows[2].status == Status.DISCARD
    assert not [r for r in rows if r.agent == COMBINER]


@pytest.mark.slow  # over half a second
def test_a_combination_of_more_near_wins_starts_while_a_smaller_one_trains(tmp_path, tiny_prepared):
    """A near-win judged while a combination trains does not wait for it: the near-wins combined with it start
    beside it, setting more settings than it does."""
    train_py = BIGRAM_TRAIN_PY.replace("SEED = 42", "DECAY = 0.0  # (0-1)\nSEED = 42")
    workspace = make_workspace(tmp_path / "ws", tiny_prepared, train_py)
    paired = pairs(4)  # the baseline's seeds, then exp 2 and 3

    def combinations() -> list:  # read on the runs' threads too: a ledger of each thread's own
        return [e for e in Ledger(workspace.root).all() if e.agent == COMBINER]

    def gate(source: str) -> None:
        settings = (constant(source, "LR"), constant(source, "BATCH"), constant(source, "DECAY"))
        if settings == (0.06, 16, 0.0):
            deadline = time.monotonic() + 30  # the first combination trains until a second one is made, or 30 s
            while len(combinations()) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
        elif settings == (0.06, 16, 0.1):
            wait_until(lambda: combinations()[0].status.final)  # judged after the first, which is kept meanwhile
        elif constant(source, "DECAY") == 0.0 and constant(source, "LR") < 0.3:
            paired(source)

    def score(source: str) -> float:
        return near_wins(source) - 0.0015 * (constant(source, "DECAY") == 0.1)

    decay = lambda ctx: ("DECAY 0.1", with_constants(ctx.train_py, DECAY=0.1))
    sched, _ = scheduler(workspace, gate=gate, score=score)
    sched.run(ScriptedAgent([set_lr(0.06), batch(16), decay, *fillers(2)]), max_experiments=5)
    made = combinations()
    assert [e.description.split(" combined: ")[1] for e in made] == [
        "LR 0.05 -> 0.06, BATCH 8 -> 16",
        "LR 0.05 -> 0.06, BATCH 8 -> 16, DECAY 0.0 -> 0.1",
    ]  # the second, made after a keep of the first, would have been none: its best holds LR and BATCH already
    assert "trained on exp 1" in made[1].reason  # the baseline: made while the first trained


@pytest.mark.slow
def test_a_driver_killed_with_a_combination_in_flight_resumes_it_under_its_id_and_makes_no_second(workspace):
    """The combination is the loop's own row: taken up again as any row is, and not made again beside itself."""
    release, paired, combined_runs = threading.Event(), pairs(4), []

    def gate(source: str) -> None:  # the dead driver's run of the combination never reports to it
        if (constant(source, "LR"), constant(source, "BATCH")) == (0.06, 16):
            combined_runs.append(source)
            if len(combined_runs) == 1:
                release.wait(30)
        elif constant(source, "LR") < 0.3:
            paired(source)

    sched, _ = scheduler(workspace, gate=gate, score=near_wins)
    try:
        sched.run(ScriptedAgent([set_lr(0.06), batch(16)]), max_experiments=2)  # two near-wins, discarded
        assert sched.fill(ScriptedAgent([]), left=1) == 1  # the combination, on a worker, when the driver dies
        (flying,) = sched.loop.ledger.in_flight()
        assert flying.agent == COMBINER and flying.status == Status.RUNNING
        again, fakes = scheduler(workspace, gate=gate, score=near_wins)  # `autoresearch run` again
        again.run(ScriptedAgent(fillers(2)), max_experiments=2)
    finally:
        release.set()
    rows = again.loop.ledger.all()
    assert [r.id for r in rows] == [1, 2, 3, 4, 5, 6] and all(r.status.final for r in rows)
    assert [r.id for r in rows if r.agent == COMBINER] == [flying.id] == [4]
    assert rows[3].status == Status.KEEP and rows[3].commit == flying.commit and rows[3].attempts == 1
    assert [r.description for r in rows[4:]] == ["LR 0.3", "LR 0.31"]  # the agent's, not a second combination
    trained = [s for fake in fakes.values() for _, _, s in fake.runs if constant(s, "LR") == 0.06]
    assert len(trained) == len(rows[3].run_values)  # trained again once per run it kept, under its id
    assert again.loop.git.head() == again.loop.best().commit == rows[3].commit
    assert len((workspace.root / "results.tsv").read_text().splitlines()) == 1 + len(rows)
