"""The loop's guarantees, with a fake executor: judging against the noise, git and ledger bookkeeping."""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from loop_support import (
    BIGRAM_TRAIN_PY,
    FAKE_SETUP,
    GPU_SETUP,
    FakeExecutor,
    ScriptedAgent,
    constant,
    evaluators_with,
    fake_result,
    killed_loop,
    make_loop,
    make_workspace,
    pending_experiment,
    set_lr,
    with_constants,
)

from autoresearch.loop import evaluator_process
from autoresearch.loop import executor as executor_module
from autoresearch.loop.clock import sleep_awake
from autoresearch.loop.evaluator_process import UNSEEN, ForkRefused, ForkServer
from autoresearch.loop.executor import (
    EXPERIMENT_CRASHED,
    SETUP_FAILED,
    LocalExecutor,
    Outcome,
    RunSpec,
    outcome_of,
)
from autoresearch.loop.experiment import best_of
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.settings import LoopError
from autoresearch.loop.status import status_text
from autoresearch.report import render_report
from autoresearch.vocabulary import Kind, RunEnd, Status
from autoresearch.workspace.disk import DiskFullError

SEED_NOISE = {42: 0.0, 43: 0.002, 44: -0.002, 45: 0.001}


def score(source: str) -> float:
    """A fake val_bpb: best at LR = 0.2, plus a seed-dependent wobble of about 0.002."""
    return 1.0 + (constant(source, "LR") - 0.2) ** 2 + SEED_NOISE.get(constant(source, "SEED"), 0.0)


def test_baseline_trains_several_seeds_and_the_noise_is_their_spread(workspace):
    executor = FakeExecutor(score)
    loop = make_loop(workspace, executor)
    baseline = loop.baseline()
    assert [constant(s, "SEED") for s in executor.calls] == [42, 43, 44]
    assert baseline.status == Status.KEEP and len(baseline.run_values) == 3
    assert abs(loop.noise() - 0.002) < 1e-9  # std of (+0, +0.002, -0.002)
    assert workspace.read_train_py() == baseline.source  # the seed edits are undone


def test_the_baselines_row_is_the_committed_train_py_not_an_edit_left_in_the_working_tree(workspace):
    """With several workers fed by `submit`, the working tree may hold the submitter's next edit while the
    baseline is recorded: the baseline is the branch's commit, whatever the file says."""
    committed = workspace.read_train_py()
    workspace.write_train_py(with_constants(committed, LR=0.2))
    baseline = make_loop(workspace, FakeExecutor(score)).new_baseline()
    assert baseline.source == committed and baseline.commit == workspace.git.head()


def test_a_disk_that_fills_as_a_run_starts_stops_the_one_worker_loop_with_its_message_and_counts_no_attempt(workspace):
    """The run's folder, log or pid file found no space: the loop stops saying the disk is full (an OSError
    traceback before), and the experiment is left in flight with no attempt counted, to be trained again."""

    class FillsUp(FakeExecutor):
        def run(self, spec):
            if constant(workspace.read_train_py(), "LR") == 0.2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().run(spec)

    loop = make_loop(workspace, FillsUp(score))
    loop.baseline()
    with pytest.raises(DiskFullError, match="the disk is full"):
        loop.step(ScriptedAgent([set_lr(0.2)]))
    stopped = Ledger(workspace.root).get(2)
    assert stopped.status == Status.RUNNING and stopped.attempts == 0


def test_a_clear_win_advances_the_branch_and_a_loss_is_reset_but_kept_under_a_ref(workspace):
    loop = make_loop(workspace, FakeExecutor(score))
    baseline = loop.baseline()
    agent = ScriptedAgent([set_lr(0.2), set_lr(0.9)])
    win = loop.step(agent)
    assert win.status == Status.KEEP and workspace.git.head() == win.commit
    assert constant(workspace.read_train_py(), "LR") == 0.2
    loss = loop.step(agent)
    assert loss.status == Status.DISCARD
    assert workspace.git.head() == win.commit  # reset to the best
    assert constant(workspace.read_train_py(), "LR") == 0.2
    kept_ref = workspace.git("rev-parse", f"refs/autoresearch/discarded/{loss.id}").strip()
    assert kept_ref == loss.commit and "LR = 0.9" in workspace.git.show(kept_ref, "train.py")
    assert baseline.commit in workspace.git("rev-list", "HEAD")


def test_a_change_within_the_noise_is_not_kept(workspace):
    loop = make_loop(workspace, FakeExecutor(lambda s: score(s) - 0.003 if constant(s, "BATCH") == 9 else score(s)))
    loop.baseline()  # mean 1.0225, noise 0.002, margin 0.004
    exp = loop.step(ScriptedAgent([lambda ctx: ("batch 9", with_constants(ctx.train_py, BATCH=9))]))
    assert exp.status == Status.DISCARD and "noise" in exp.reason


def test_a_seed_only_change_is_rejected_before_it_runs(workspace):
    executor = FakeExecutor(score)
    loop = make_loop(workspace, executor)
    loop.baseline()
    runs = len(executor.calls)
    exp = loop.step(ScriptedAgent([lambda ctx: ("new seed", with_constants(ctx.train_py, SEED=44))]))
    assert exp.status == Status.CRASH and "seed" in exp.reason
    assert len(executor.calls) == runs  # nothing trained


@pytest.mark.parametrize(
    "seed", ['"42"', "42.0", "-1", "0x" + "7" * 3600, None], ids=["text", "float", "negative", "huge", "missing"]
)
def test_a_seed_the_loop_cannot_raise_is_refused_in_the_baseline_and_in_a_proposal(tmp_path, tiny_prepared, seed):
    """The noise is measured over SEED, SEED + 1, ...: a train.py whose SEED is no integer (or is gone) would
    train the same seed again and again, and make the noise look smaller than it is."""
    line = "SEED = 42  # initialisation seed\n"

    def spoil(source: str) -> str:
        return source.replace(line, f"SEED = {seed}\n" if seed else "")

    executor = FakeExecutor(score)
    workspace = make_workspace(tmp_path / "ws", tiny_prepared, train_py=spoil(BIGRAM_TRAIN_PY))
    with pytest.raises(LoopError, match=r"the loop trains the baseline with SEED, SEED \+ 1") as refused:
        make_loop(workspace, executor).run(ScriptedAgent([]), max_experiments=1)
    assert "SEED = 42" in refused.value.hint and executor.calls == [] and Ledger(workspace.root).all() == []

    workspace = make_workspace(tmp_path / "ws2", tiny_prepared)
    loop = make_loop(workspace, executor)
    loop.baseline()
    runs = len(executor.calls)
    exp = loop.step(ScriptedAgent([lambda ctx: ("LR 0.2", spoil(with_constants(ctx.train_py, LR=0.2)))]))
    assert exp.status == Status.CRASH and "keep it such an integer constant" in exp.reason
    assert len(executor.calls) == runs  # nothing trained


def test_a_marginal_win_is_trained_again_before_it_is_kept(workspace):
    # Baseline mean 1.0225 (LR 0.05), noise 0.002, margin 0.004; LR 0.05 -> 0.04 gains ~0.003-0.006.
    values = iter([1.0180, 1.0170])  # 1st run: a gain of 0.0045 (marginal); 2nd: confirms it
    executor = FakeExecutor(lambda s: next(values) if constant(s, "BATCH") == 16 else score(s))
    loop = make_loop(workspace, executor)
    loop.baseline()
    exp = loop.step(ScriptedAgent([lambda ctx: ("batch 16", with_constants(ctx.train_py, BATCH=16))]))
    assert len(exp.run_values) == 2 and exp.status == Status.KEEP
    assert constant(executor.calls[-1], "SEED") == 43  # the second run used another seed


def test_a_marginal_win_that_does_not_hold_up_is_discarded(workspace):
    values = iter([1.0180, 1.0230])
    executor = FakeExecutor(lambda s: next(values) if constant(s, "BATCH") == 16 else score(s))
    loop = make_loop(workspace, executor)
    loop.baseline()
    exp = loop.step(ScriptedAgent([lambda ctx: ("batch 16", with_constants(ctx.train_py, BATCH=16))]))
    assert len(exp.run_values) == 2 and exp.status == Status.DISCARD


def test_a_marginal_win_whose_runs_repeat_one_another_counts_as_one_run_and_measures_no_noise(workspace):
    """A train.py that seeds torch with a number of its own trains the same model whatever SEED the loop sets: a
    lucky first run's re-run repeats it (on a GPU to ~0.1 of the seeds' std) and would confirm it. Runs that agree
    that closely are run again with another seed, and five of them count as one run: a marginal win, discarded."""
    lucky = iter([1.0180, 1.01801, 1.01799, 1.01802, 1.01800])  # SEED 42..46, all the same model
    executor = FakeExecutor(lambda s: next(lucky) if constant(s, "BATCH") == 16 else score(s), setup=GPU_SETUP)
    loop = make_loop(workspace, executor)
    loop.baseline()
    noise = loop.noise()
    exp = loop.step(ScriptedAgent([lambda ctx: ("batch 16", with_constants(ctx.train_py, BATCH=16))]))
    assert exp.status == Status.DISCARD and len(exp.run_values) == 5
    assert [constant(s, "SEED") for s in executor.calls[-5:]] == [42, 43, 44, 45, 46]
    assert "seeded itself with something other than SEED" in exp.reason and "count as one run" in exp.reason
    assert loop.noise() == pytest.approx(noise)  # five copies measure no seed-to-seed noise


@pytest.mark.parametrize("runs", ["seeds that fit the same steps", "one run repeated"])
def test_on_the_cpu_clock_runs_are_copies_only_where_they_repeat_one_another(workspace, runs):
    """On the CPU clock the baseline's spread holds how many steps fit besides the seed's. BROKE, fixed (a user's walk
    through the README, a 5 s budget): the baseline's seeds trained 7, 8 and 7 steps (std 0.053), a change's 5 seeds
    all fit 8 and agreed within 0.2 x that, and a real win was discarded as copies of one run. Runs on the CPU clock
    are copies only where they agree within MIN_NOISE: a train.py that trains a fixed number of steps and ignores SEED
    repeats itself to the bit there (red team, helper 117: on the CPU clock no runs were taken for copies at all)."""
    baseline = {42: 1.00, 43: 1.05, 44: 1.10}  # std 0.05: a margin of 0.1
    change = {"seeds that fit the same steps": [0.930, 0.940], "one run repeated": [0.935] * 5}[runs]
    values = iter(change)
    executor = FakeExecutor(
        lambda s: next(values) if constant(s, "BATCH") == 16 else baseline[constant(s, "SEED")], setup=FAKE_SETUP
    )
    loop = make_loop(workspace, executor)
    loop.baseline()
    exp = loop.step(ScriptedAgent([lambda ctx: ("batch 16", with_constants(ctx.train_py, BATCH=16))]))
    assert exp.run_values == change  # a marginal win (0.115 under the best of 1.05), run again
    if runs == "one run repeated":
        assert exp.status == Status.DISCARD and "count as one run" in exp.reason
        assert loop.noise() == pytest.approx(0.05)  # and its runs are no seeds' spread
    else:
        assert exp.status == Status.KEEP and "mean of 2 runs" in exp.reason


def test_an_honest_marginal_win_whose_first_two_seeds_happen_to_agree_is_kept_on_a_third(workspace):
    values = iter([1.0180, 1.0181, 1.0150])  # two seeds 0.0001 apart (noise 0.002), the third as seeds differ
    executor = FakeExecutor(lambda s: next(values) if constant(s, "BATCH") == 16 else score(s), setup=GPU_SETUP)
    loop = make_loop(workspace, executor)
    loop.baseline()
    exp = loop.step(ScriptedAgent([lambda ctx: ("batch 16", with_constants(ctx.train_py, BATCH=16))]))
    assert exp.status == Status.KEEP and len(exp.run_values) == 3 and "mean of 3 runs" in exp.reason


@pytest.mark.slow
def test_every_train_py_trained_more_than_once_pools_into_the_noise(workspace):
    values = iter([1.0180, 1.0230])  # a marginal win run again: 0.005 apart
    executor = FakeExecutor(lambda s: next(values) if constant(s, "BATCH") == 16 else score(s))
    loop = make_loop(workspace, executor)
    loop.baseline()
    assert loop.noise() == pytest.approx(0.002)  # the baseline's seeds: +0, +0.002, -0.002
    loop.step(ScriptedAgent([lambda ctx: ("batch 16", with_constants(ctx.train_py, BATCH=16))]))
    # Pooled: (2 x 0.002^2 + 1 x 0.0025^2 x 2) / 3 degrees of freedom, each group around its own mean.
    assert loop.noise() == pytest.approx(((2 * 0.002**2 + 0.005**2 / 2) / 3) ** 0.5)
    loop.step(ScriptedAgent([set_lr(0.9)]))  # trained once: measures nothing about the noise
    assert loop.noise() == pytest.approx(((2 * 0.002**2 + 0.005**2 / 2) / 3) ** 0.5)
    assert "pooled std of 5 runs of 2 train.py files" in status_text(workspace)


def test_simpler_code_at_equal_val_bpb_is_kept(workspace):
    loop = make_loop(workspace, FakeExecutor(score))
    loop.baseline()
    simpler = ScriptedAgent([lambda ctx: ("drop the docstring", ctx.train_py.split("\n", 2)[2])])
    exp = loop.step(simpler)
    assert exp.status == Status.KEEP and "simpler" in exp.reason and exp.lines_removed > exp.lines_added


def test_simpler_changes_each_a_little_worse_cannot_add_up_past_the_margin(workspace):
    """Each deletion of a line of code costs 0.003 (margin 0.004): the first is simpler at equal val_bpb; the second
    is within the margin of the best it was made from, but 0.006 above the lowest val_bpb kept, so not kept. Else a
    train.py could get worse by most of a margin per step, each step "simpler"."""
    original = BIGRAM_TRAIN_PY.count("\n")
    loop = make_loop(workspace, FakeExecutor(lambda s: score(s) + 0.003 * (original - s.count("\n"))))
    loop.baseline()

    def drop(line: str) -> ScriptedAgent:
        return ScriptedAgent([lambda ctx: (f"drop {line}", ctx.train_py.replace(line + "\n", ""))])

    first = loop.step(drop("import torch.nn as nn"))
    assert first.status == Status.KEEP and "simpler at equal val_bpb" in first.reason
    second = loop.step(drop("import torch.nn.functional as F"))
    assert second.status == Status.DISCARD and "above the lowest val_bpb kept, 1.022500" in second.reason
    assert loop.best().id == first.id
    assert "simpler, but +0.006000 above the lowest val_bpb kept" in render_report(Ledger(workspace.root).all())


def test_deleting_a_comment_beside_a_worse_change_does_not_make_it_simpler(tmp_path, tiny_prepared):
    comment = "# the initialisation's seed; the loop raises it per run\n"
    commented = BIGRAM_TRAIN_PY.replace("SEED = 42", comment + "SEED = 42")
    workspace = make_workspace(tmp_path / "ws", tiny_prepared, train_py=commented)
    loop = make_loop(workspace, FakeExecutor(score))
    loop.baseline()
    worse = with_constants(commented, LR=0.045).replace(comment, "")
    exp = loop.step(ScriptedAgent([lambda ctx: ("LR 0.045, one line fewer", worse)]))
    assert exp.lines_removed > exp.lines_added  # fewer lines, but no fewer lines of code
    assert exp.status == Status.DISCARD and "not better by more than the noise" in exp.reason


def test_an_invalid_result_is_never_kept(workspace):
    def executor_score(source):
        if constant(source, "LR") == 0.2:
            return Outcome(RunEnd.INVALID, None, "invalid result: causality probe: the model sees the future", "", 1.0)
        return score(source)

    loop = make_loop(workspace, FakeExecutor(executor_score))
    loop.baseline()
    exp = loop.step(ScriptedAgent([set_lr(0.2)]))
    assert exp.status == Status.CRASH and "causality" in exp.reason
    assert loop.best().id == 1


def test_a_crash_is_recorded_with_its_log_and_shown_to_the_next_proposal(workspace):
    crash = Outcome(RunEnd.CRASH, None, "exit code 1: ZeroDivisionError", "Traceback ...\nZeroDivisionError", 1.0)
    loop = make_loop(workspace, FakeExecutor(lambda s: crash if constant(s, "LR") == 0.3 else score(s)))
    loop.baseline()
    agent = ScriptedAgent([set_lr(0.3), set_lr(0.2)])
    first = loop.step(agent)
    assert first.status == Status.CRASH and "ZeroDivisionError" in first.log_tail
    loop.step(agent)
    assert "ZeroDivisionError" in agent.seen[1].last_crash


@pytest.mark.slow  # ~1 s: the fast subset stays under a minute
def test_after_three_crashes_in_a_row_the_crash_log_is_no_longer_shown(workspace):
    crash = Outcome(RunEnd.CRASH, None, "exit code 1", "boom", 1.0)
    loop = make_loop(workspace, FakeExecutor(lambda s: crash if constant(s, "LR") > 0.25 else score(s)))
    loop.baseline()
    agent = ScriptedAgent([set_lr(0.3), set_lr(0.31), set_lr(0.32), set_lr(0.2)])
    for _ in range(4):
        loop.step(agent)
    assert agent.seen[1].last_crash and agent.seen[2].last_crash
    assert agent.seen[3].last_crash is None


def test_an_edit_to_another_file_is_rejected_before_anything_runs(workspace):
    executor = FakeExecutor(score)
    loop = make_loop(workspace, executor)
    loop.baseline()
    config_before = workspace.config_path.read_text()

    def sneaky(ctx):
        workspace.config_path.write_text(config_before.replace('"budget_seconds": 1.0', '"budget_seconds": 99.0'))
        (workspace.root / "notes.txt").write_text("scratch")
        return "longer budget", with_constants(ctx.train_py, LR=0.2)

    runs = len(executor.calls)
    exp = loop.step(ScriptedAgent([sneaky]))
    assert exp.status == Status.CRASH and "autoresearch.json" in exp.reason
    assert len(executor.calls) == runs
    assert workspace.config_path.read_text() == config_before
    assert not (workspace.root / "notes.txt").exists()


def test_human_edits_to_program_md_survive_a_discard(workspace):
    loop = make_loop(workspace, FakeExecutor(score))
    loop.baseline()
    (workspace.root / "program.md").write_text("focus on the learning rate\n")
    exp = loop.step(ScriptedAgent([set_lr(0.9)]))
    assert exp.status == Status.DISCARD
    assert (workspace.root / "program.md").read_text() == "focus on the learning rate\n"


@pytest.mark.parametrize("put", ["not-utf8", "folder", "fifo"])
def test_a_program_md_that_cannot_be_read_as_text_is_an_error_naming_it_not_a_traceback(workspace, put):
    """BROKE, fixed: `run` read program.md for the agent's prompt as it came: bytes that are no UTF-8 were a
    UnicodeDecodeError traceback, a folder an IsADirectoryError one, and a FIFO a wait for ever."""
    from autoresearch.errors import ConfigError

    path = workspace.root / "program.md"
    path.unlink()
    if put == "not-utf8":
        path.write_bytes(b"\xff\xfe focus on the learning rate")
    elif put == "folder":
        path.mkdir()
    else:
        os.mkfifo(path)
    raised: list[BaseException] = []
    reading = threading.Thread(target=lambda: raised.extend(_raised(workspace.program)), daemon=True)
    reading.start()
    reading.join(30)
    assert not reading.is_alive(), "it waits on the FIFO"
    assert len(raised) == 1 and isinstance(raised[0], ConfigError), raised
    assert f"cannot read {path}" in str(raised[0]) and "git checkout program.md" in str(raised[0])


def test_a_program_md_that_is_a_link_the_person_made_is_read_and_a_missing_one_is_none(workspace, tmp_path):
    shared = tmp_path / "shared-program.md"
    shared.write_bytes(b"focus on the learning rate\r\n")
    (workspace.root / "program.md").unlink()
    assert workspace.program() == ""
    (workspace.root / "program.md").symlink_to(shared)
    assert workspace.program() == "focus on the learning rate\n"


def _raised(call) -> list[BaseException]:
    try:
        call()
    except BaseException as exc:
        return [exc]
    return []


def test_results_tsv_has_the_reference_columns_and_a_row_per_experiment(workspace):
    loop = make_loop(workspace, FakeExecutor(score))
    loop.baseline()
    loop.step(ScriptedAgent([set_lr(0.2)]))
    lines = (workspace.root / "results.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert [line.split("\t")[3] for line in lines[1:]] == ["keep", "keep"]
    assert lines[2].split("\t")[0] == workspace.git.head()[:7]
    ignored = subprocess.run(["git", "check-ignore", "results.tsv"], cwd=workspace.root)
    assert ignored.returncode == 0


def test_recovery_finishes_an_experiment_interrupted_after_its_row_was_written(workspace):
    """Simulates a kill between writing the ledger row and committing: the restart runs it, once."""
    executor = FakeExecutor(score)
    loop = make_loop(workspace, executor)
    loop.baseline()
    ledger = Ledger(workspace.root)
    from autoresearch.loop.experiment import Experiment

    source = with_constants(workspace.read_train_py(), LR=0.2)
    ledger.insert(
        Experiment(
            id=2,
            kind="experiment",
            status=Status.RUNNING,
            description="LR 0.2",
            parent=workspace.git.head(),
            source=source,
        )
    )
    workspace.write_train_py(source)  # killed after writing train.py, before the commit
    pending = make_loop(workspace, executor).recover()
    assert pending.id == 2 and pending.commit == workspace.git.head()
    finished = make_loop(workspace, executor)._evaluate(pending)
    assert finished.status == Status.KEEP
    assert [e.id for e in Ledger(workspace.root).all()] == [1, 2]


def loop_recording_waits(workspace) -> tuple:
    """A loop after its baseline whose back-off waits are recorded (seconds, in a list), not slept."""
    from autoresearch.loop.engine import LoopConfig, ResearchLoop
    from autoresearch.loop.environment import Environment
    from autoresearch.loop.reporter import PlainReporter

    waits: list[float] = []
    loop = ResearchLoop(
        workspace, FakeExecutor(score), PlainReporter(lambda _: None), LoopConfig(), waits.append, Environment(())
    )
    loop.baseline()
    return loop, waits


def test_failed_proposals_are_recorded_with_their_cost_and_the_loop_backs_off(workspace):
    from autoresearch.agents.base import ProposalError, Usage

    loop, waits = loop_recording_waits(workspace)

    def rate_limited(ctx):
        raise ProposalError("openai kept rate-limiting (HTTP 429)", usage=Usage(50, 0, 0.0001))

    agent = ScriptedAgent([rate_limited, rate_limited, rate_limited, set_lr(0.2)])
    rows = [loop.step(agent) for _ in range(4)]
    assert [r.status for r in rows] == [Status.CRASH, Status.CRASH, Status.CRASH, Status.KEEP]
    assert rows[0].input_tokens == 50 and "429" in rows[0].reason
    assert waits == [30.0, 60.0]  # after the 2nd and 3rd failure in a row, none once it works


@pytest.mark.slow
def test_a_loop_at_its_limit_stops_at_once_after_failures_rather_than_back_off_first(workspace):
    """`run --max-experiments 2` whose agent failed twice waited 30 s (then 60 s, ...) before it stopped."""
    from autoresearch.agents.base import ProposalError

    loop, waits = loop_recording_waits(workspace)

    def unreachable(ctx):
        raise ProposalError("could not reach OpenAI API at http://127.0.0.1:9/v1/")

    loop.run(ScriptedAgent([unreachable] * 2), max_experiments=2)
    assert waits == []
    loop.run(ScriptedAgent([unreachable] * 2 + [set_lr(0.2)]), max_experiments=3)
    assert waits == [60.0, 120.0]  # 4 and 5 failures in a row before the 2nd and 3rd asks; none after the win
    assert Ledger(workspace.root).all()[-1].status == Status.KEEP


@pytest.mark.slow  # a second: the fast subset stays under a minute
def test_a_run_whose_every_ask_failed_ends_with_an_error_naming_the_last_failure(workspace):
    """BROKE, fixed: `run --max-experiments 2` whose agent failed both times (an API down) exited 0, as a night's
    work, which a script (`run ... && report`) took for one. A start with one proposal, or one rejected for what it
    was (only the seed changed), is the agent at work: it ends as before."""
    import argparse

    from autoresearch.agents.base import ProposalError
    from autoresearch.cli.commands import drive
    from autoresearch.loop.workers import devices

    def unreachable(ctx):
        raise ProposalError("could not reach OpenAI API at http://127.0.0.1:9/v1/")

    def seed(ctx):
        return "another seed", ctx.train_py.replace("SEED = 42", "SEED = 7")

    args = argparse.Namespace(
        ray=None, gpus=None, workers=None, timeout=None, accelerator=None, max_experiments=2, hours=None, linger=0.0
    )
    with pytest.raises(LoopError, match=r"none of the 2 asks .*nothing was tried; the last \(exp 3\): could not"):
        drive(loop_recording_waits(workspace)[0], ScriptedAgent([unreachable] * 2), devices(None, None), args)
    for agent in ([unreachable, set_lr(0.2)], [unreachable, seed]):
        drive(loop_recording_waits(workspace)[0], ScriptedAgent(agent), devices(None, None), args)
    rows = [r for r in Ledger(workspace.root).all() if r.kind != Kind.BASELINE]
    assert [r.status for r in rows] == [Status.CRASH] * 3 + [Status.KEEP, Status.CRASH, Status.CRASH]
    assert "only the random seed changed" in rows[-1].reason


def test_a_fatal_agent_error_stops_the_loop(workspace):
    import pytest

    from autoresearch.agents.base import ProposalError
    from autoresearch.loop.engine import LoopError

    loop = make_loop(workspace, FakeExecutor(score))
    loop.baseline()

    def bad_key(ctx):
        raise ProposalError("anthropic rejected the API key (HTTP 401)", hint="check ANTHROPIC_API_KEY", fatal=True)

    with pytest.raises(LoopError, match="ANTHROPIC_API_KEY"):
        loop.run(ScriptedAgent([bad_key]), max_experiments=5)
    assert Ledger(workspace.root).all()[-1].status == Status.CRASH


def test_a_run_that_kills_the_loop_is_retried_once_on_the_next_start_then_is_a_crash(workspace):
    attempts_seen = []

    def watching(source: str) -> float:
        attempts_seen.append(Ledger(workspace.root).get(2).attempts if Ledger(workspace.root).get(2) else None)
        return score(source)

    loop = make_loop(workspace, FakeExecutor(watching))
    loop.baseline()
    source = with_constants(workspace.read_train_py(), LR=0.2)
    pending_experiment(workspace, loop, attempts=1, source=source)  # the loop died once while it trained
    again = make_loop(workspace, FakeExecutor(watching))
    assert again.recover().id == 2  # tried once more
    assert again._evaluate(again.ledger.get(2)).status == Status.KEEP
    assert attempts_seen[-1] == 2  # the killed start and this one, counted while it ran

    best = again.best()
    source = with_constants(source, LR=0.25)
    pending_experiment(workspace, again, attempts=2, source=source, exp_id=3)  # another, that died twice
    third = make_loop(workspace, FakeExecutor(watching))
    runs = len(attempts_seen)
    assert third.recover() is None and len(attempts_seen) == runs  # not run a third time
    exp = third.ledger.get(3)
    assert exp.status == Status.CRASH and "died 2 times" in exp.reason
    assert workspace.git.head() == best.commit and third.best().id == best.id


def test_a_baseline_the_loop_was_killed_in_twice_says_so_and_the_next_start_measures_it_anew(workspace):
    """BROKE, fixed: two kills of the loop while the user's own baseline trained (the machine out of memory, say)
    stopped the next start with "the baseline train.py failed ... fix train.py", blaming a train.py that is fine."""
    loop = make_loop(workspace, FakeExecutor(score))
    baseline = loop.new_baseline()
    loop.ledger.update(baseline.id, attempts=2)  # as two kills in its runs leave it
    with pytest.raises(LoopError) as stopped:
        make_loop(workspace, FakeExecutor(score)).recover()
    said = str(stopped.value) + stopped.value.hint
    assert "killed 2 times while the baseline (exp 1) trained" in said and "run again to measure the baseline" in said
    assert "failed" not in said and "fix train.py" not in said
    again = make_loop(workspace, FakeExecutor(score))
    assert again.recover() is None and again.baseline().status == Status.KEEP  # as the error says
    assert [e.status for e in again.ledger.all()] == [Status.CRASH, Status.KEEP]


@pytest.mark.parametrize("committed", [True, False])
def test_a_commit_made_by_hand_while_an_experiment_is_in_flight_is_not_reset_away(workspace, committed):
    """Stopped while it trained experiment 2 (committed or not yet), then a person commits on the branch: the
    next start refuses, as for any branch moved by hand, rather than reset the person's commit away unsaid."""
    loop = make_loop(workspace, FakeExecutor(score))
    loop.baseline()
    pending = pending_experiment(workspace, loop, attempts=1, source=with_constants(workspace.read_train_py(), LR=0.2))
    if not committed:
        workspace.git.move_to(pending.parent, "train.py")
        Ledger(workspace.root).update(2, commit=None)
    workspace.write_train_py(with_constants(workspace.read_train_py(), LR=0.3))
    mine = workspace.git.commit("my own change", "train.py")
    with pytest.raises(LoopError, match="moved the branch by hand"):
        make_loop(workspace, FakeExecutor(score)).recover()
    assert workspace.git.head() == mine


def test_a_try_killed_and_tried_again_is_judged_once(workspace):
    from autoresearch.loop.trying import try_working_tree

    loop = make_loop(workspace, FakeExecutor(score))
    loop.baseline()
    source = with_constants(workspace.read_train_py(), LR=0.2)
    pending_experiment(workspace, loop, attempts=1, source=source)  # `try -m "LR 0.2"` was killed
    workspace.write_train_py(source)  # the same working tree, the same `try` again
    exp = try_working_tree(make_loop(workspace, FakeExecutor(score)), "an edit")
    assert exp.id == 2 and exp.status == Status.KEEP
    assert [e.id for e in Ledger(workspace.root).all()] == [1, 2]


def test_a_try_on_another_setup_than_the_baselines_keeps_the_edit_and_judges_it_once_back_on_it(workspace):
    """A baseline measured by `run --workers 2` on 2 cores counts 1 core per run; `try` trains on both."""
    from autoresearch.loop.trying import try_working_tree

    executor = FakeExecutor(score, setup="AMD EPYC; CPU time / 1 cores")
    make_loop(workspace, executor).baseline()
    executor.setup = "AMD EPYC; CPU time / 2 cores"
    for lr in (0.2, 0.21):  # a coding agent tries, is stopped, edits and tries again
        edited = with_constants(workspace.read_train_py(), LR=lr)
        workspace.write_train_py(edited)
        with pytest.raises(LoopError, match="CPU time / 2 cores, the baseline's runs on") as stopped:
            try_working_tree(make_loop(workspace, executor), f"LR {lr}")
        assert "`submit` and `wait`" in stopped.value.hint
        assert workspace.read_train_py() == edited  # the edit is where the agent left it
    with pytest.raises(LoopError, match=r"train\.py holds an edit, and experiment 2 is in flight") as refused:
        make_loop(workspace, executor).run(ScriptedAgent([]), max_experiments=0)  # `run` would check exp 2 out
    assert "`autoresearch try" in refused.value.hint and workspace.read_train_py() == edited
    executor.setup = "AMD EPYC; CPU time / 1 cores"  # as the baseline's runs were measured
    exp = try_working_tree(make_loop(workspace, executor), "LR 0.21")
    rows = Ledger(workspace.root).all()
    assert [(e.id, e.description, e.status.final) for e in rows] == [
        (1, "baseline", True),
        (2, "LR 0.2", True),
        (3, "LR 0.21", True),
    ]
    assert exp.id == 3 and len(executor.calls) == 3 + 2 + 2  # the baseline, each stopped run, then one run of each


def test_a_try_stopped_while_the_baseline_trains_keeps_the_edit_it_was_given(workspace):
    """`try` on a fresh workspace trains the committed train.py first; a Ctrl-C then leaves the edit in place."""
    from autoresearch.loop.trying import try_working_tree

    def interrupted(source: str) -> float:
        if constant(source, "SEED") == 43:  # the baseline's second seed
            raise KeyboardInterrupt
        return score(source)

    edited = with_constants(workspace.read_train_py(), LR=0.2)
    workspace.write_train_py(edited)
    with pytest.raises(KeyboardInterrupt):
        try_working_tree(make_loop(workspace, FakeExecutor(interrupted)), "LR 0.2")
    assert workspace.read_train_py() == edited


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_a_try_killed_while_the_baseline_trains_loses_not_the_edit_it_was_given(workspace):
    """SIGKILL, not Ctrl-C: no `finally` puts the edit back. It waited in the state folder; the next start finds it."""
    from autoresearch.loop.trying import try_working_tree

    edited = with_constants(workspace.read_train_py(), LR=0.2)
    workspace.write_train_py(edited)
    killed_loop(
        workspace,
        """
        from autoresearch.loop.trying import try_working_tree
        def score(source):
            if constant(source, "SEED") == 43:  # the baseline's second seed
                kill()
            return 1.0 + (constant(source, "LR") - 0.2) ** 2
        try_working_tree(make_loop(ws, FakeExecutor(score)), "LR 0.2")
        """,
    )
    assert constant(workspace.read_train_py(), "SEED") == 43  # the baseline's run it died in
    events = []
    with pytest.raises(LoopError, match=r"train\.py holds an edit, and experiment 1 is in flight"):
        make_loop(workspace, FakeExecutor(score), events=events).run(ScriptedAgent([]), max_experiments=0)
    assert workspace.read_train_py() == edited and any("`try` that was stopped" in e for e in events)
    exp = try_working_tree(make_loop(workspace, FakeExecutor(score)), "LR 0.2")  # as the hint says
    assert (exp.id, exp.source, exp.status) == (2, edited, Status.KEEP)
    assert not (workspace.state / "held-train.py").exists()


@pytest.mark.slow  # ~1 s: the fast subset stays under a minute
def test_a_try_killed_while_the_baseline_trains_then_a_new_edit_keeps_both(workspace):
    """The edit held for a killed `try`, and another made since: the loop does not choose between them."""
    from autoresearch.loop.trying import try_working_tree

    first, second = (with_constants(workspace.read_train_py(), LR=lr) for lr in (0.2, 0.3))
    workspace.write_train_py(first)
    killed_loop(
        workspace,
        """
        from autoresearch.loop.trying import try_working_tree
        def score(source):
            if constant(source, "SEED") == 43:
                kill()
            return 1.0
        try_working_tree(make_loop(ws, FakeExecutor(score)), "LR 0.2")
        """,
    )
    workspace.write_train_py(second)
    for start in (
        lambda: try_working_tree(make_loop(workspace, FakeExecutor(score)), "LR 0.3"),
        lambda: make_loop(workspace, FakeExecutor(score)).run(ScriptedAgent([]), max_experiments=0),
    ):
        with pytest.raises(LoopError, match=r"held-train\.py in \.autoresearch") as refused:
            start()
        assert "mv .autoresearch/held-train.py train.py" in refused.value.hint
        assert workspace.read_train_py() == second
        assert (workspace.state / "held-train.py").read_text() == first


def test_the_same_try_after_a_kill_during_its_second_run_is_judged_once(workspace):
    """Killed while the re-run of a marginal win trained, `try` left that run's train.py (SEED + 1): the same
    `try` again is that experiment, not a new one that changes only the seed."""
    from autoresearch.loop.recovery import seeded
    from autoresearch.loop.trying import try_working_tree

    loop = make_loop(workspace, FakeExecutor(score))
    loop.baseline()
    source = with_constants(workspace.read_train_py(), LR=0.2)
    pending_experiment(workspace, loop, attempts=1, source=source)
    workspace.write_train_py(seeded(source, 1))  # as the kill left it
    exp = try_working_tree(make_loop(workspace, FakeExecutor(score)), "LR 0.2")
    assert (exp.id, exp.source, exp.status) == (2, source, Status.KEEP)
    assert [e.id for e in Ledger(workspace.root).all()] == [1, 2] and workspace.read_train_py() == source


@pytest.mark.parametrize("content", ["", "null", '{"refs": {}'])
def test_a_turn_snapshot_that_cannot_be_read_stops_the_loop_with_what_to_check(workspace, content):
    """Only a hand (or an agent that also killed the loop) breaks it: nothing can be put back, so nothing is."""
    make_loop(workspace, FakeExecutor(score)).baseline()
    (workspace.state / "turn.json").write_text(content)
    with pytest.raises(LoopError, match=r"what the turn began from cannot be read \(\.autoresearch/turn\.json\)") as e:
        make_loop(workspace, FakeExecutor(score)).run(ScriptedAgent([]), max_experiments=0)
    assert "git log --all" in e.value.hint and (workspace.state / "turn.json").exists()


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_a_loop_killed_between_the_agents_turn_and_its_row_goes_on_at_the_next_start(workspace):
    """The turn was checked, its proposal not yet recorded: the next start puts it aside, as a turn cut short."""
    make_loop(workspace, FakeExecutor(score)).baseline()
    edit = (
        "import re, pathlib; p = pathlib.Path('train.py'); p.write_text(re.sub('LR = 0.05', 'LR = 0.2', p.read_text()))"
    )
    agent = f"{shlex.quote(sys.executable)} -c {shlex.quote(edit)} && echo LR 0.2"  # a coding agent's edit
    killed_loop(
        workspace,
        f"""
        from autoresearch.agents.command_agent import CommandAgent
        from autoresearch.loop import guard
        guard.rejection = lambda old, new: kill()  # the first thing after the turn's check
        make_loop(ws, FakeExecutor(lambda source: 1.0)).run(CommandAgent({agent!r}), max_experiments=1)
        """,
    )
    assert constant(workspace.read_train_py(), "LR") == 0.2 and (workspace.state / "turn.json").exists()
    events = []
    loop = make_loop(workspace, FakeExecutor(score), events=events)
    loop.run(ScriptedAgent([set_lr(0.3)]), max_experiments=1)
    assert any("put back train.py (its unfinished edit, or yours since)" in e for e in events)
    assert [(e.id, constant(e.source, "LR")) for e in Ledger(workspace.root).all()] == [(1, 0.05), (2, 0.3)]
    # It may be yours, edited after the kill: however the quarantine is emptied, it stays (red team, helper 150)
    from autoresearch.workspace import quarantine

    parent = workspace.state / quarantine.FOLDER
    kept = [f for f in parent.iterdir() if f.name.endswith(quarantine.YOURS) and (f / "train.py").is_file()]
    assert len(kept) == 1
    quarantine.prune(parent, quarantine.fresh_folder(parent, "later"), 0)
    assert constant((kept[0] / "train.py").read_text(), "LR") == 0.2


def test_a_persons_copy_of_an_older_experiments_train_py_is_an_edit_like_any_other(workspace):
    """Only what a kill can have left is put back by itself (an experiment then in flight, a run's of it); a
    discarded experiment's train.py written back on purpose is the person's, and the loop refuses to go over it."""
    loop = make_loop(workspace, FakeExecutor(score))
    loop.run(ScriptedAgent([set_lr(0.9)]), max_experiments=1)
    discarded = Ledger(workspace.root).get(2)
    assert discarded.status == Status.DISCARD
    workspace.write_train_py(discarded.source)
    with pytest.raises(LoopError, match="uncommitted changes"):
        make_loop(workspace, FakeExecutor(score)).run(ScriptedAgent([]), max_experiments=0)
    assert workspace.read_train_py() == discarded.source


def test_the_loops_own_seeded_train_py_is_known_however_seed_is_written():
    """A kill leaves a run's seeded train.py; the next start must know it for the loop's own, not an edit."""
    from autoresearch.loop.experiment import Experiment
    from autoresearch.loop.recovery import seeded, written_for

    for spelling in ("X = 1; SEED = 42", "(SEED) = 42", "SEED=42"):
        source = BIGRAM_TRAIN_PY.replace("SEED = 42  # initialisation seed", spelling)
        exp = Experiment(id=2, kind="experiment", status=Status.RUNNING, description="", parent="", source=source)
        assert seeded(source, 1) != source, spelling
        assert written_for(seeded(source, 1), exp) and written_for(source, exp)
        assert not written_for(with_constants(seeded(source, 1), LR=0.3), exp)


def test_a_quarantine_that_is_no_folder_is_made_one_again(workspace):
    """The loop's own folder, in its private state: a file there is an agent's doing (test_red_team_agent.py)."""
    make_loop(workspace, FakeExecutor(score)).baseline()
    (workspace.state / "turn.json").write_text("{}")
    (workspace.state / "quarantine").write_text("not a folder")
    with pytest.raises(LoopError, match="what the turn began from cannot be read"):
        make_loop(workspace, FakeExecutor(score)).run(ScriptedAgent([]), max_experiments=0)
    assert (workspace.state / "quarantine").is_dir()


def test_a_train_py_committed_with_crlf_line_endings_is_no_edit(tmp_path, tiny_prepared):
    """The loop reads train.py as text and writes it back with LF: a CRLF commit is the same train.py."""
    workspace = make_workspace(tmp_path / "ws", tiny_prepared, train_py=BIGRAM_TRAIN_PY.replace("\n", "\r\n"))
    assert b"\r\n" in workspace.train_py.read_bytes() and workspace.git.status() == {}
    make_loop(workspace, FakeExecutor(score)).baseline()  # its seeds wrote train.py back with LF
    loop = make_loop(workspace, FakeExecutor(score))
    loop.run(ScriptedAgent([set_lr(0.2)]), max_experiments=1)  # the next start, then an experiment
    assert [e.status for e in Ledger(workspace.root).all()] == [Status.KEEP, Status.KEEP]
    workspace.write_train_py(with_constants(workspace.read_train_py(), LR=0.3))
    with pytest.raises(LoopError, match="uncommitted changes"):  # a real edit still is one
        make_loop(workspace, FakeExecutor(score)).run(ScriptedAgent([]), max_experiments=0)


def test_a_run_resumes_over_the_seeded_train_py_it_wrote_and_refuses_to_overwrite_an_edit(tmp_path, tiny_prepared):
    """Killed in the baseline's second seed, the loop left `SEED = 1025` in train.py (a SIGKILL skips its
    restore): its own, however the user spelled 1024. An edit there instead is refused, even for an experiment
    whose attempts are used up (recording its crash would check its parent out)."""
    from autoresearch.loop.recovery import seeded

    source = BIGRAM_TRAIN_PY.replace("SEED = 42", "SEED = 1024")
    workspace = make_workspace(tmp_path / "ws", tiny_prepared, train_py=source)

    def killed(text: str) -> float:
        if constant(text, "SEED") == 1025:
            raise KeyboardInterrupt
        return score(text)

    with pytest.raises(KeyboardInterrupt):
        make_loop(workspace, FakeExecutor(killed)).baseline()
    workspace.write_train_py(seeded(source, 1))  # `SEED = 1025`, as the run it died in had it
    make_loop(workspace, FakeExecutor(score)).run(ScriptedAgent([]), max_experiments=0)
    assert Ledger(workspace.root).get(1).status == Status.KEEP and workspace.read_train_py() == source

    loop = make_loop(workspace, FakeExecutor(score))
    pending_experiment(workspace, loop, attempts=2, source=with_constants(source, LR=0.2))  # died in it twice
    edit = with_constants(source, LR=0.3)
    workspace.write_train_py(edit)
    with pytest.raises(LoopError, match=r"train\.py holds an edit, and experiment 2 is in flight"):
        make_loop(workspace, FakeExecutor(score)).run(ScriptedAgent([]), max_experiments=0)
    assert workspace.read_train_py() == edit and not Ledger(workspace.root).get(2).status.final


def test_a_full_disk_never_leaves_half_a_train_py(workspace, monkeypatch):
    """What a start after freeing space resumes is the loop's own train.py, not a cut one it would call an edit."""
    import errno
    from pathlib import Path

    from autoresearch.workspace.disk import DiskFullError

    before, real_write = workspace.read_train_py(), Path.write_text

    def fills_up(path, text, *args, **kwargs):
        real_write(path, text[:100])  # as much as fitted
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", fills_up)
    with pytest.raises(DiskFullError):
        workspace.write_train_py(with_constants(before, LR=0.2))
    monkeypatch.undo()
    assert workspace.read_train_py() == before and not (workspace.state / "train.py.tmp").exists()


@pytest.mark.parametrize("damage", ["deleted", "emptied", "corrupt"])
@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_a_lost_or_corrupt_ledger_is_an_error_and_rebuild_ledger_brings_every_experiment_back(workspace, damage):
    from autoresearch.loop.ledger import LedgerError
    from autoresearch.loop.rebuild import rebuild

    loop = make_loop(workspace, FakeExecutor(score))
    loop.baseline()
    loop.step(ScriptedAgent([set_lr(0.2), set_lr(0.9)]))
    loop.step(ScriptedAgent([set_lr(0.9)]))
    before, noise, next_id = loop.ledger.all(), loop.noise(), loop.ledger.next_id()
    loop.ledger.close()
    db = workspace.state / "ledger.sqlite"
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    if damage == "deleted":
        db.unlink()
    elif damage == "emptied":
        db.write_bytes(b"")
    else:
        db.write_bytes(b"not a database" * 100)
    with pytest.raises(LedgerError, match="rebuild-ledger"):
        Ledger(workspace.root)  # never a silent fresh start that would count from 1 again

    rows, moved, skipped = rebuild(workspace.root, workspace.git)
    after = Ledger(workspace.root).all()
    assert rows == len(before) == 3 and (moved is not None) == (damage != "deleted") and skipped == []
    for old, new in zip(before, after, strict=True):
        assert (new.id, new.kind, new.status, new.commit, new.source) == (
            old.id,
            old.kind,
            old.status,
            old.commit,
            old.source,
        )
        assert new.val_bpb == pytest.approx(old.val_bpb, abs=1e-6)
        # as the last run recorded them (results.tsv rounds the memory to 0.1 GB; show gives the seconds)
        assert (new.memory_gb, new.training_seconds, new.total_seconds) == (
            old.memory_gb, old.training_seconds, old.total_seconds
        )  # fmt: skip
        # what later runs are checked against: the apparatus and the setup of its runs
        assert new.recorded["harness_fingerprint"] == old.recorded["harness_fingerprint"]
        assert new.recorded["setup"] == old.recorded["setup"] == "AMD EPYC; CPU time / 2 cores"
    again = make_loop(workspace, FakeExecutor(score))
    assert again.noise() == pytest.approx(noise) and again.ledger.next_id() == next_id
    assert again.step(ScriptedAgent([set_lr(0.21)])).id == next_id  # and the loop goes on
    elsewhere = make_loop(workspace, FakeExecutor(score, setup="AMD EPYC; CPU time / 1 cores"))
    with pytest.raises(LoopError, match="CPU time / 1 cores, the baseline's runs on AMD EPYC; CPU time / 2 cores"):
        elsewhere.step(ScriptedAgent([set_lr(0.22)]))


@pytest.mark.slow
def test_rebuild_ledger_places_each_results_line_by_its_commit_never_by_its_position(workspace):
    """A junk line and a line overwritten in results.tsv must not shift the lines after them onto other
    experiments' ids: a crash row would carry another's value, and the branch would move to an unmeasured commit."""
    from autoresearch.loop.rebuild import rebuild

    loop = make_loop(workspace, FakeExecutor(score))
    loop.baseline()
    for value in (0.2, 0.9, 0.9, 0.3):  # exp 2 kept, 3 and 5 discarded, 4 a duplicate of 3: a row, no commit
        loop.step(ScriptedAgent([set_lr(value)]))
    before = {e.id: e for e in loop.ledger.all()}
    assert before[4].commit is None and len(before) == 5
    loop.ledger.close()
    tsv = workspace.root / "results.tsv"
    lines = tsv.read_text().splitlines(keepends=True)  # the header, then exps 1-5
    lines[3] = "garbage\twith\ttoo\n"  # exp 3's line overwritten
    lines.insert(3, "a line someone pasted\n")
    tsv.write_text("".join(lines))
    for path in workspace.state.glob("ledger.sqlite*"):
        path.unlink()
    for result in workspace.state.glob("runs/*/result.json"):  # as if the night had been an hour ago
        os.utime(result, (result.stat().st_mtime - 3600,) * 2)

    rows, _, skipped = rebuild(workspace.root, workspace.git)
    assert rows == 5 and skipped == [4, 5]  # the pasted line and the overwritten one, by their line numbers
    after = {e.id: e for e in Ledger(workspace.root).all()}
    for exp_id, exp in after.items():
        assert (exp.commit, exp.status, exp.description) == (
            before[exp_id].commit, before[exp_id].status, before[exp_id].description
        ), exp_id  # fmt: skip
        if exp.commit and exp_id > 1:  # the baseline's is the workspace's own commit
            assert workspace.git.exp_number(exp.commit) == exp_id
    assert "results.tsv did not have it" in after[3].reason  # from git, and its value from its runs' results
    assert after[3].val_bpb == pytest.approx(before[3].val_bpb)
    assert after[5].val_bpb == pytest.approx(before[5].val_bpb)
    # Dated by their runs' result files (a rejected proposal by the row before it): the rate stays a rate.
    assert all(abs(after[i].finished_at - (before[i].finished_at - 3600)) < 5 for i in after)
    assert after[1].started_at <= after[4].started_at <= after[5].finished_at
    again = make_loop(workspace, FakeExecutor(score))
    assert again.best().id == 2 and again.ledger.next_id() == 6


def _keep_line_for_a_discard(ws, before):
    lines = (ws.root / "results.tsv").read_text().splitlines(keepends=True)
    lines[5] = lines[5].replace("\tdiscard\t", "\tkeep\t")  # exp 5 (discarded) says keep
    (ws.root / "results.tsv").write_text("".join(lines))


def _baseline_named_twice(ws, before):
    with (ws.root / "results.tsv").open("a") as tsv:
        tsv.write(f"{before[1].commit[:7]}\t0.500000\t0.0\tkeep\tforged\nHEAD~3\t0.100000\t0.0\tkeep\tforged\n")


def _infinite_best_and_a_crash_with_a_value(ws, before):
    lines = (ws.root / "results.tsv").read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace(lines[2].split("\t")[1], "inf")
    lines[3] = lines[3].replace("\tdiscard\t", "\tcrash\t")
    (ws.root / "results.tsv").write_text("".join(lines))


def _a_folder_not_the_loops(ws, before):
    shutil.copytree(ws.state / "runs" / "2-0", ws.state / "runs" / "2-0.bak")


def _in_flight_on_the_branch(ws, before):  # one worker trains exp 6, committed on the branch
    ws.write_train_py(with_constants(before[2].source, LR=0.95))
    ws.git.commit("exp 6: LR 0.95", "train.py")


def test_rebuild_ledger_keeps_each_old_ledger_whole_beside_its_write_ahead_log(workspace, monkeypatch):
    """BROKE, fixed: the old ledger was moved aside under a name of the second, so a second rebuild in the same
    second replaced the first one's file (or stopped with an IsADirectoryError where that was a folder), and its
    -wal, which holds the latest rows SQLite has not yet moved into the file, was deleted (a folder in its place was
    an IsADirectoryError traceback)."""
    from autoresearch.loop.rebuild import rebuild

    monkeypatch.setattr(time, "strftime", lambda fmt, *args: "20260101-000000")  # the same second, both times
    loop = make_loop(workspace, FakeExecutor(score))
    loop.baseline()
    loop.ledger.close()
    db = workspace.state / "ledger.sqlite"
    first = db.read_bytes()
    (workspace.state / "ledger.sqlite-wal").write_bytes(b"the latest rows")
    (workspace.state / "ledger.sqlite-shm").mkdir()
    rows, moved, _ = rebuild(workspace.root, workspace.git)
    assert rows == 1 and moved == workspace.state / "ledger.sqlite.replaced-20260101-000000"
    assert moved.read_bytes() == first and Path(f"{moved}-wal").read_bytes() == b"the latest rows"
    assert Path(f"{moved}-shm").is_dir()
    _, again, _ = rebuild(workspace.root, workspace.git)
    assert again == workspace.state / "ledger.sqlite.replaced-20260101-000000-2" and again.is_file()
    assert moved.read_bytes() == first  # the first one's left as it was
    assert [e.id for e in Ledger(workspace.root).all()] == [1]


def _in_flight_on_a_worktree(ws, before):  # exp 6 trained on a worker's worktree: only its run folders are left
    shutil.copytree(ws.state / "runs" / "5-0", ws.state / "runs" / "6-0")


def _results_tsv_lost_too(ws, before):
    (ws.root / "results.tsv").unlink()


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage",
    [
        _keep_line_for_a_discard,
        _baseline_named_twice,
        _infinite_best_and_a_crash_with_a_value,
        _a_folder_not_the_loops,
        _in_flight_on_the_branch,
        _in_flight_on_a_worktree,
        _results_tsv_lost_too,
    ],
)
def test_rebuild_ledger_from_damaged_records_keeps_the_true_best_and_the_loop_goes_on(workspace, damage):
    from autoresearch.loop.rebuild import rebuild

    loop = make_loop(workspace, FakeExecutor(score))
    loop.baseline()
    for value in (0.2, 0.9, 0.9, 0.3):  # exp 2 kept, 3 and 5 discarded, 4 a duplicate of 3: a row, no commit
        loop.step(ScriptedAgent([set_lr(value)]))
    before = {e.id: e for e in loop.ledger.all()}
    loop.ledger.close()
    for path in workspace.state.glob("ledger.sqlite*"):
        path.unlink()
    damage(workspace, before)

    rebuild(workspace.root, workspace.git)
    rows = {e.id: e for e in Ledger(workspace.root).all()}
    assert all(e.val_bpb is None for e in rows.values() if e.status == Status.CRASH)
    again = make_loop(workspace, FakeExecutor(score))
    best = again.best()
    assert best.id == 2 and best.val_bpb == pytest.approx(before[2].val_bpb) and best.commit == before[2].commit
    ran = {int(p.name.split("-")[0]) for p in workspace.state.glob("runs/*-*") if p.name.split("-")[1].isdigit()}
    again.run(ScriptedAgent([set_lr(0.97)]), max_experiments=1)  # resumes what was in flight, then one more
    last = again.ledger.all()[-1]
    assert last.description == "LR 0.97" and last.status == Status.DISCARD  # far worse
    assert last.id > max(ran)  # no id whose runs are on disk is given again
    assert again.best().id == 2 and workspace.git.head() == before[2].commit
    assert all(e.status.final for e in again.ledger.all())


def test_a_full_disk_stops_the_loop_with_a_clear_error_and_the_next_start_finishes_the_experiment(workspace):
    import sqlite3

    from autoresearch.workspace.disk import DiskFullError

    class FullDisk:
        """The ledger's connection on a disk that fills up once the experiment has trained."""

        def __init__(self, db):
            self.db, self.full = db, False

        def execute(self, sql, *args):
            if self.full and sql.startswith("UPDATE"):
                raise sqlite3.OperationalError("database or disk is full")
            return self.db.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.db, name)

    def fills_the_disk(source: str) -> float:
        if constant(source, "LR") == 0.2:
            disk.full = True
        return score(source)

    loop = make_loop(workspace, FakeExecutor(fills_the_disk))
    loop.baseline()
    disk = loop.ledger._db = FullDisk(loop.ledger._db)
    with pytest.raises(DiskFullError, match="the disk is full: free space, then run again; nothing was lost"):
        loop.step(ScriptedAgent([set_lr(0.2)]))
    again = make_loop(workspace, FakeExecutor(score))  # space freed: run again
    pending = again.recover()
    assert pending is not None and pending.description == "LR 0.2"
    assert again._evaluate(pending).status == Status.KEEP
    assert [e.id for e in Ledger(workspace.root).all()] == [1, 2]


def test_a_run_measured_on_another_kind_of_device_stops_the_loop_and_is_judged_back_where_the_baseline_ran(workspace):
    """A workspace moved to another GPU model, other cores or another --workers count: its scores are not
    comparable with the best's, so the loop stops, records no verdict, and the experiment waits for the next start."""
    executor = FakeExecutor(score, setup="NVIDIA H200; wall clock")
    loop = make_loop(workspace, executor)
    loop.baseline()
    executor.setup = "NVIDIA A100-SXM4-80GB; wall clock"
    with pytest.raises(LoopError) as stopped:
        loop.step(ScriptedAgent([set_lr(0.2)]))
    moved = "measured on NVIDIA A100-SXM4-80GB; wall clock, the baseline's runs on NVIDIA H200; wall clock"
    assert moved in str(stopped.value)
    assert "--accelerator" in stopped.value.hint and "autoresearch init" in stopped.value.hint
    pending = Ledger(workspace.root).get(2)
    assert not pending.status.final and pending.run_values == [] and pending.val_bpb is None
    executor.setup = "NVIDIA H200; wall clock"  # back on the baseline's machine
    again = make_loop(workspace, executor)
    resumed = again.recover()
    assert resumed.id == 2 and again._evaluate(resumed).status == Status.KEEP
    assert [e.id for e in Ledger(workspace.root).all()] == [1, 2]


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt, as in a command started in the foreground (a test run started in the
    background has it ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _ctrl_c_to_another_thread(after: float) -> None:
    """SIGINT to a thread that is not the main one, as the kernel may deliver a Ctrl-C (numpy's threads take
    signals too): Python's handler then only marks it, and the main thread acts on it when it next runs Python."""
    other = threading.Thread(target=time.sleep, args=(5,), daemon=True)
    other.start()
    threading.Timer(after, signal.pthread_kill, (other.ident, signal.SIGINT)).start()


def test_a_fork_server_never_asked_for_a_run_is_ended_at_once() -> None:
    """BROKE, fixed: `run` stopped by an error before its first run (train.py missing, say) took a second more to
    exit, waiting for the fork server to finish importing torch and read that the loop was gone."""
    server = ForkServer(sys.executable, {})
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 0.5 and server._proc.poll() is not None


@pytest.mark.slow  # ~1 s: the fast subset stays under a minute
def test_a_run_that_keeps_descriptors_in_flight_costs_the_loop_one_cold_evaluator_not_its_fork_server(
    tmp_path, monkeypatch
) -> None:
    """The kernel counts descriptors in flight in unix sockets by user, and refuses one more to a user past its
    RLIMIT_NOFILE (ETOOMANYREFS) without CAP_SYS_RESOURCE. Under a loop not run as root every run is the loop's user
    outside its namespace: one that kept 20,000 in flight had the fork server refused the next evaluator's stdin and
    log (socket.send_fds), and the loop gave its server up for the night, every later evaluator started cold. BROKE,
    fixed: that one evaluator is started as a new process, the server kept (red team; the refusal is the kernel's, here
    made by hand: a test as another user would need the loop's Python readable by it)."""
    ready = tmp_path / "ready-server"  # a fork server that says `ready` on its socket (its last argument), then waits
    ready.write_text(
        f"#!{sys.executable}\nimport os, sys, time\n"
        "os.write(int(sys.argv[-1]), b'{\"ready\": true}\\n')\ntime.sleep(60)\n"
    )
    ready.chmod(0o755)

    def refused(*args, **kwargs):
        raise OSError(errno.ETOOMANYREFS, os.strerror(errno.ETOOMANYREFS))

    monkeypatch.setattr(evaluator_process.socket, "send_fds", refused)
    executor = LocalExecutor(python=str(ready))
    try:
        server = executor._server
        assert server is not None
        with pytest.raises(ForkRefused):
            server.fork(tmp_path)
        with pytest.raises(ForkRefused) as caught:
            server.fork(tmp_path)  # nothing was sent: the server is still waiting for a request, in step
        executor._fork_failed(caught.value)
        assert executor._server is server and server._proc.poll() is None
    finally:
        executor.close()


# The fork server's first fork for an evaluator refused (EAGAIN), as a fork under your `ulimit -u` is while a run of
# a loop not run as root holds what is left of it; its test fork before (`_forks_can_compute`) and later ones pass.
REFUSED_ONCE = """\
import os
_fork, _forks = os.fork, []
def fork():
    _forks.append(1)
    if len(_forks) == 2:
        raise BlockingIOError(11, "Resource temporarily unavailable")
    return _fork()
os.fork = fork
"""


@pytest.mark.slow  # the fork server imports torch
def test_a_fork_the_kernel_refuses_the_fork_server_costs_one_cold_evaluator_not_the_server(tmp_path) -> None:
    """BROKE, fixed (red team): a fork refused to the fork server (EAGAIN) killed it, and the loop started every later
    evaluator cold, for the night; a run of a loop not run as root can hold all your `ulimit -u` leaves while the
    next run's evaluator is forked ahead."""
    server = ForkServer(sys.executable, evaluators_with(tmp_path, "sitecustomize", REFUSED_ONCE))
    try:
        with pytest.raises(ForkRefused, match=r"refused a fork: .*Resource temporarily unavailable"):
            server.fork(tmp_path)
        evaluator = server.fork(tmp_path)  # the next one is forked: not a workspace, so it ends at once
        assert evaluator.wait(60) not in (None, UNSEEN) and server._proc.poll() is None
    finally:
        server.close()


@pytest.mark.slow  # real runs, through the fork server (which imports torch)
def test_a_thread_the_kernel_refuses_the_loop_while_a_run_holds_what_is_left_costs_only_the_evaluator_ahead(
    workspace, monkeypatch
) -> None:
    """The thread that forks the next run's evaluator ahead refused, as the kernel refuses one ("can't start new
    thread") while a run of a loop not run as root holds what is left of your `ulimit -u` (its share at the floor,
    which `run` warns of). BROKE, fixed (red team, helper 115, reproduced end to end as another user): the loop died of
    it with the experiment in flight, and every start trained that experiment again and died again. Now the run ends
    as it would have, its evaluator started when it comes (refused here by hand: the loop's Python would need to be
    readable by another user)."""
    loop = make_loop(workspace, LocalExecutor(prewarm=True), baseline_runs=2)
    refusals = []

    def refused(self) -> None:
        refusals.append(self.directory)
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(executor_module.ForkAhead, "start", refused)
    try:  # the baseline's two runs: the second's evaluator is the one refused ahead (an edit's run after it was too)
        baseline = loop.baseline()
        assert baseline.status == Status.KEEP and len(baseline.run_values) == 2, baseline.reason
        assert refusals and loop.executor._server is not None and loop.executor.fork_failure is None
    finally:
        loop.executor.close()


@pytest.mark.slow
def test_a_ctrl_c_taken_by_another_thread_stops_the_wait_for_a_run(tmp_path, ctrl_c_raises):
    silent = tmp_path / "silent-server"  # a fork server that never says anything: a run that trains on
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(0o755)
    server = ForkServer(str(silent), {})
    _ctrl_c_to_another_thread(after=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            server.exit_code(12345, timeout=60)
    finally:
        server.close()
    assert time.monotonic() - started < 3


@pytest.mark.slow  # over half a second
def test_a_ctrl_c_taken_by_another_thread_stops_the_wait_for_a_run_whose_fork_server_died(tmp_path, ctrl_c_raises):
    gone = tmp_path / "gone-server"  # a fork server that ends at once; its evaluator trains on
    gone.write_text("#!/bin/sh\nexit 0\n")
    gone.chmod(0o755)
    server = ForkServer(str(gone), {})
    evaluator = subprocess.Popen(["sleep", "60"])
    _ctrl_c_to_another_thread(after=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            server.exit_code(evaluator.pid, timeout=60)
    finally:
        evaluator.kill()
        evaluator.wait()
        server.close()
    assert time.monotonic() - started < 3


def test_an_evaluator_whose_end_the_dead_fork_server_never_told_is_lost_and_tried_again_not_a_crash(tmp_path):
    """BROKE, fixed: with the fork server dead, every evaluator's end read as exit code 0, so one that stopped for a
    reason of the loop's (a promise it could not keep, a setup error), writing no result, was recorded as the
    experiment's crash. Its end is unseen now: with no result the run is lost and tried again, where a new process's
    exit code is seen; with a result, the result decides as before."""
    gone = tmp_path / "gone-server"  # a fork server that ends at once, before its evaluator
    gone.write_text("#!/bin/sh\nexit 0\n")
    gone.chmod(0o755)
    server = ForkServer(str(gone), {})
    evaluator = subprocess.Popen(["sh", "-c", "sleep 0.3; exit 3"])  # SETUP_FAILED, say, that no one reports
    try:
        assert server.exit_code(evaluator.pid, timeout=10) == UNSEEN
    finally:
        evaluator.wait()
        server.close()
    lost = outcome_of(UNSEEN, None, "", "", 1.0, "f" * 16)
    assert lost.status == RunEnd.LOST and "fork server exited" in lost.reason
    assert outcome_of(UNSEEN, fake_result(1.5, "f" * 16), "", "", 1.0, "f" * 16).status == RunEnd.OK


def test_a_run_whose_sealed_result_says_it_crashed_is_a_crash_where_its_evaluators_end_went_unseen() -> None:
    """BROKE, fixed: with the fork server dead, a result saying train.py crashed (no score, the reason quoting its last
    line) was read as exit code 0, and the run recorded as "invalid result: train.py ended (exit code 1) ...", as if
    it had been scored. A result without a score is the experiment's failure whichever code went unseen: a crash, in
    the evaluator's own words; a scored one that is invalid stays invalid."""
    fingerprint = "f" * 16
    why = 'train.py ended (exit code 1); the last line it printed (untrusted): "ZeroDivisionError: division by zero"'
    crashed = replace(fake_result(1.5, fingerprint), val_bpb=None, valid=False, invalid_reason=why)
    seen = outcome_of(EXPERIMENT_CRASHED, crashed, "", "", 1.0, fingerprint)
    unseen = outcome_of(UNSEEN, crashed, "", "", 1.0, fingerprint)
    assert (
        (unseen.status, unseen.reason, unseen.result)
        == (RunEnd.CRASH, why, crashed)
        == (seen.status, seen.reason, seen.result)
    )
    peeked = replace(fake_result(1.5, fingerprint), valid=False, invalid_reason="causality probe: it sees the future")
    invalid = outcome_of(UNSEEN, peeked, "", "", 1.0, fingerprint)
    assert invalid.status == RunEnd.INVALID and invalid.reason == "invalid result: causality probe: it sees the future"


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_the_driver_and_a_workers_thread_waiting_for_one_run_both_get_its_exit(tmp_path):
    """BROKE, fixed: Ctrl-C with --workers 2 hung the loop for good. The driver kills each worker's run and waits for
    its exit while the worker's thread waits for that run too: both read the fork server's socket, one took the
    message and the other blocked in recv() on data that was gone."""
    one_exit = tmp_path / "one-exit-server"  # a fork server that reports one evaluator's end, then idles
    one_exit.write_text(
        f"#!{sys.executable}\nimport os, sys, time\ntime.sleep(0.5)\n"
        'os.write(int(sys.argv[-1]), b\'{"pid": 4242, "exit": -9}\\n\')\ntime.sleep(60)\n'
    )
    one_exit.chmod(0o755)
    server = ForkServer(str(one_exit), {})
    codes: list[int | None] = []
    waiting = [threading.Thread(target=lambda: codes.append(server.exit_code(4242, 10)), daemon=True) for _ in "ab"]
    try:
        for thread in waiting:
            thread.start()
        for thread in waiting:
            thread.join(timeout=5)
        assert codes == [-9, -9]
    finally:
        server.close()


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_a_stop_while_the_fork_server_starts_up_ends_the_run_at_once_and_starts_nothing(tmp_path):
    """BROKE, fixed: Ctrl-C of `run --workers 2` in its first seconds (the fork server importing torch) took 37 s: each
    worker's thread waited for the server to get ready, where the driver's stop() found no run to kill, then trained
    its run while the driver waited 30 s for the thread."""
    silent = tmp_path / "silent-server"  # a fork server still importing: it never says `ready`
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(0o755)
    (tmp_path / "train.py").write_text("print('trained')\n")
    (tmp_path / "state").mkdir()
    executor = LocalExecutor(python=str(silent))
    spec = RunSpec(tmp_path, tmp_path / "state" / "runs" / "1-0", timeout=120, fingerprint="")
    try:
        worker, ended = run_in_thread(executor, spec)
        time.sleep(0.5)
        stopped = time.monotonic()
        executor.stop()
        worker.join(timeout=5)
        assert ended and time.monotonic() - stopped < 2
        assert executor.fork_failure is None  # no evaluator started as a new process instead
    finally:
        executor.close()


def run_in_thread(executor: LocalExecutor, spec: RunSpec) -> tuple[threading.Thread, list[object]]:
    """`executor.run(spec)` started in a worker's thread; the list gets what it returned or raised."""
    ended: list[object] = []

    def run() -> None:
        try:
            ended.append(executor.run(spec))
        except BaseException as exc:  # what the worker's thread reports
            ended.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker, ended


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow  # seconds: the fast subset stays under a minute
@pytest.mark.parametrize("answered", [False, True])
def test_a_fork_server_slow_to_fork_the_next_runs_evaluator_holds_back_no_runs_hard_timeout(tmp_path, answered):
    """BROKE, fixed: the next run's evaluator was forked ahead (prewarm) before the wait that enforces the current
    run's hard timeout, and a fork waits up to 60 s for the server's answer: a slow server let the run train that much
    past its timeout. The fork goes on beside the wait now; closed before its answer, the loop does not wait for it,
    and what it made, answered late, is killed with the rest."""
    trains = tmp_path / "trains.py"  # the run's evaluator: its run trains, and trains on
    trains.write_text(
        "import json, pathlib, sys, time\n"
        "job = json.loads(sys.stdin.readline())\n"
        "pathlib.Path(job['result']).with_name('progress.json').write_text(json.dumps({'phase': 'training'}))\n"
        "time.sleep(60)\n"
    )
    late = tmp_path / "late-pid"
    slow = tmp_path / "slow-server"  # forks the run's evaluator at once, the next one's 6 s after it is asked
    slow.write_text(
        f"#!{sys.executable}\nimport json, os, socket, subprocess, sys, threading, time\n"
        "sock, lock = socket.socket(fileno=int(sys.argv[-1])), threading.Lock()\n"
        "def say(message):\n"
        "    with lock:\n"
        "        sock.sendall(json.dumps(message).encode() + b'\\n')\n"
        "def fork(command, delay):\n"
        "    stdin = socket.recv_fds(sock, 1 << 16, 2)[1][0]\n"
        "    time.sleep(delay)\n"
        "    proc = subprocess.Popen(command, stdin=stdin, start_new_session=True)\n"
        "    say({'pid': proc.pid})\n"
        "    threading.Thread(target=lambda: say({'pid': proc.pid, 'exit': proc.wait()}), daemon=True).start()\n"
        "    return proc\n"
        "say({'ready': True})\n"
        f"fork([{sys.executable!r}, {str(trains)!r}], 0)\n"
        "pid = fork(['sleep', '60'], 6).pid\n"
        f"open({str(late) + '.part'!r}, 'w').write(str(pid))\n"
        f"os.rename({str(late) + '.part'!r}, {str(late)!r})\n"
        "time.sleep(60)\n"
    )
    slow.chmod(0o755)
    (tmp_path / "train.py").write_text("print('trained')\n")
    (tmp_path / "state").mkdir()
    executor = LocalExecutor(python=str(slow), prewarm=True)
    spec = RunSpec(tmp_path, tmp_path / "state" / "runs" / "1-0", timeout=2, fingerprint="")
    try:
        started = time.monotonic()
        outcome = executor.run(spec)
        ended = time.monotonic() - started
        assert outcome.status == RunEnd.TIMEOUT and "hard timeout of 2s" in outcome.reason
        assert ended < 4, f"the run ended {ended:.1f}s after it started, its hard timeout 2s"
        assert _gone(int((spec.run_dir / "pid").read_text().split()[0]))
        while answered and not late.exists():  # the next run's evaluator, answered once the run was over
            time.sleep(0.1)
        time.sleep(1 if answered else 0)  # and read by the fork waiting for it
    finally:
        closing = time.monotonic()
        executor.close()
    assert time.monotonic() - closing < 3  # a fork still waiting gives up: the server's 6 s are not waited for
    assert not answered or _gone(int(late.read_text()))


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_an_evaluator_given_the_pid_of_one_that_ended_earlier_is_not_taken_for_ended(tmp_path):
    """BROKE, fixed: pids wrap (pid_max is 32768 on many machines; this project's busy 2-core one went through them
    in under a minute), and an evaluator forked under the pid of one that had ended got that one's exit code at once:
    its run was over before it trained, a crash ("the evaluator wrote no result"), and the run was stopped."""
    reused = tmp_path / "reused-pid-server"  # forks every evaluator as pid 4242; the first one ends at once
    reused.write_text(
        f"#!{sys.executable}\nimport json, os, socket, sys, time\n"
        "sock = socket.socket(fileno=int(sys.argv[-1]))\n"
        "sock.sendall(b'{\"ready\": true}\\n')\n"
        "for n in range(2):\n"
        "    socket.recv_fds(sock, 1 << 16, 2)\n"
        '    sock.sendall(b\'{"pid": 4242}\\n\' + (b\'{"pid": 4242, "exit": 0}\\n\' if n == 0 else b""))\n'
        "time.sleep(60)\n"
    )
    reused.chmod(0o755)
    server = ForkServer(str(reused), {})
    try:
        first = server.fork(tmp_path)
        assert first.wait(10) == 0
        second = server.fork(tmp_path)  # the same pid, given again: this evaluator runs
        assert second.pid == first.pid and second.poll() is None
    finally:
        server.close()


@pytest.mark.slow  # over half a second
def test_a_ctrl_c_taken_by_another_thread_stops_the_loops_pause(ctrl_c_raises):
    _ctrl_c_to_another_thread(after=0.3)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        sleep_awake(60)  # the back-off after an agent's failures
    assert time.monotonic() - started < 3


def test_the_apparatus_fingerprint_covers_the_evaluator_the_wire_and_the_devices_code(monkeypatch):
    """device.py sets the precision a run trains in and the name its result's setup gives the device: a new
    version of it is a new apparatus, not a stop for "another device" on the same machine. So is a new anchor, the
    init of a run's sandbox, which reaps what the run leaves there (its CPU time then on the run's clock)."""
    from autoresearch.evaluator import fingerprint

    hashed = []
    monkeypatch.setattr(fingerprint, "sources_sha256", lambda paths, root: hashed.extend(paths) or "digest")
    fingerprint.code_digest()
    names = {path.relative_to(hashed[0].parents[1]).as_posix() for path in hashed}
    assert {"device.py", "wire.py", "anchor.py", "evaluator/referee.py", "evaluator/clock.py"} <= names
    assert "loop/engine.py" not in names  # the loop's code may change without a new apparatus


def test_deleted_data_names_the_cache_it_was_prepared_in(tmp_path, monkeypatch) -> None:
    cache = tmp_path / "old-cache"
    ws = make_workspace(tmp_path / "ws", cache / "data" / "python-source-0123abcd" / "tiny")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "another-cache"))  # prepare alone would write there
    with pytest.raises(LoopError, match="no prepared data") as err:
        make_loop(ws, FakeExecutor(lambda source: 1.0))
    assert (
        f"--cache-dir {cache.resolve()}`" in err.value.hint
        and "with the Python the workspace was made with" in err.value.hint
    )


def test_data_the_evaluator_finds_damaged_stops_the_loop_and_the_experiment_waits_in_flight(workspace):
    """The evaluator exits 2 with its error and hint when it cannot set a run up (a shard truncated): the proposal
    was a crash of its own before, its reason the hint alone, and every later one crashed the same way."""
    printed = "error: shard /c/train-00001.bin is truncated or damaged: 10 bytes, expected 20\n  hint: run prepare\n"

    class DamagedData(FakeExecutor):
        def run(self, spec):
            if constant(workspace.read_train_py(), "LR") == 0.2:
                return outcome_of(SETUP_FAILED, None, printed, "", 0.5, spec.fingerprint)
            return super().run(spec)

    loop = make_loop(workspace, DamagedData(score))
    loop.baseline()
    with pytest.raises(LoopError, match=r"train-00001\.bin is truncated or damaged") as err:
        loop.step(ScriptedAgent([set_lr(0.2)]))
    assert err.value.hint == "run prepare"
    stopped = Ledger(workspace.root).get(2)
    assert stopped.status == Status.RUNNING and stopped.attempts == 0


def test_a_detached_head_goes_back_on_the_branch_at_its_commit_and_elsewhere_stops_the_loop(workspace):
    """A person's `git checkout <commit>` left HEAD detached: the loop ran on, and a kept change moved no branch."""
    loop = make_loop(workspace, FakeExecutor(score))
    baseline = loop.baseline()
    workspace.git("checkout", "-q", "--detach", "HEAD")
    win = loop.run(ScriptedAgent([set_lr(0.2)]), max_experiments=1)
    assert win is None and workspace.git.branch() == "autoresearch/test"
    assert workspace.git("rev-parse", "autoresearch/test").strip() == Ledger(workspace.root).get(2).commit
    workspace.git("checkout", "-q", baseline.commit)  # detached at an older experiment
    with pytest.raises(LoopError, match="HEAD is detached") as err:
        make_loop(workspace, FakeExecutor(score)).run(ScriptedAgent([set_lr(0.3)]), max_experiments=1)
    assert "git checkout autoresearch/test" in err.value.hint
    assert len(Ledger(workspace.root).all()) == 2  # nothing was asked or trained meanwhile


@pytest.mark.parametrize("damage", ["rebase", "branch deleted", "HEAD names no branch"])
def test_a_workspace_git_cannot_keep_experiments_in_stops_the_loop_with_a_hint_that_works(workspace, damage):
    """BROKE, fixed (red team): in a rebase stopped at a conflict the hint was `git checkout autoresearch/test`, which
    git refuses there; with the branch deleted it was `git checkout autoresearch/<tag>`, literally; with HEAD naming
    a branch that does not exist, git's own "ambiguous argument 'HEAD'" and no hint. Each hint is followed here."""
    from autoresearch.workspace.git import IDENTITY

    loop = make_loop(workspace, FakeExecutor(score))
    baseline = loop.baseline()
    git = workspace.git
    if damage == "rebase":
        loop.step(ScriptedAgent([set_lr(0.2)]))  # kept: a commit on the branch that sets LR
        git("checkout", "-q", "-b", "other", baseline.commit)
        (workspace.root / "train.py").write_text(with_constants(baseline.source, LR=0.7))
        git(*IDENTITY, "commit", "-q", "-am", "other")
        git("checkout", "-q", "autoresearch/test")
        git(*IDENTITY, "rebase", "-q", "other", check=False)  # LR's line conflicts: the rebase stops there
        assert (git.git_dir / "rebase-merge").exists() or (git.git_dir / "rebase-apply").exists()
    elif damage == "branch deleted":
        git("checkout", "-q", "--detach", "HEAD")
        git("branch", "-q", "-D", "autoresearch/test")
    else:
        git("symbolic-ref", "HEAD", "refs/heads/nothere")
    with pytest.raises(LoopError) as err:
        make_loop(workspace, FakeExecutor(score)).run(ScriptedAgent([set_lr(0.3)]), max_experiments=1)
    command = err.value.hint.split("`")[1]
    assert "<" not in command and "BRANCH" not in command, err.value.hint
    git(*command.split()[1:])  # as the person would type it
    make_loop(workspace, FakeExecutor(score)).run(ScriptedAgent([set_lr(0.3)]), max_experiments=1)
    assert Ledger(workspace.root).all()[-1].description == "LR 0.3" and git.branch().startswith("autoresearch/")


def test_an_edited_budget_in_the_locked_config_says_to_check_it_out_again(workspace):
    """The hint was to make a new workspace, for what `git checkout autoresearch.json` undoes."""
    from autoresearch.workspace.workspace import Workspace

    make_loop(workspace, FakeExecutor(score)).baseline()
    config = workspace.root / "autoresearch.json"
    config.write_text(config.read_text().replace('"budget_seconds": 1.0', '"budget_seconds": 2.0'))
    with pytest.raises(LoopError, match="the apparatus changed") as err:
        make_loop(Workspace(workspace.root), FakeExecutor(score)).run(ScriptedAgent([]), max_experiments=0)
    assert "`git checkout autoresearch.json` to go on" in err.value.hint
    # Edited while a loop runs (a README walk-through): its next run is measured with another budget, and the loop
    # stopped saying to make a new workspace
    config.write_text(config.read_text().replace('"budget_seconds": 2.0', '"budget_seconds": 1.0'))
    loop = make_loop(Workspace(workspace.root), FakeExecutor(score))
    config.write_text(config.read_text().replace('"budget_seconds": 1.0', '"budget_seconds": 2.0'))
    measured = fake_result(0.9, "the fingerprint of a 2 s budget")
    loop.executor = FakeExecutor(lambda source: outcome_of(0, measured, "", "", 0.01, loop.fingerprint))
    with pytest.raises(LoopError, match=r"stopped: the apparatus .* changed") as err:
        loop.run(ScriptedAgent([set_lr(0.3)]), max_experiments=1)
    assert "`git checkout autoresearch.json` to go on" in err.value.hint


@pytest.mark.parametrize("confined", [True, False])
@pytest.mark.parametrize("person", ["edit", "git stash"])
def test_the_workspace_changed_beside_a_confined_run_is_the_persons_and_the_runs_score_stands(
    workspace, confined, person
):
    """An agent that sent `try` to the background and went on editing train.py: the experiment was a crash, "the
    run changed files outside train.py: changed train.py", though the sandbox hides the workspace from the run. And
    (BROKE, fixed: a user's walk through the README) a person's `git stash` in the workspace while a run trained:
    "the run changed files outside train.py: ..., added refs/stash", a crash, though the run could reach none of it."""
    from autoresearch.workspace.git import IDENTITY

    class EditedMeanwhile(FakeExecutor):
        def run(self, spec):
            outcome = super().run(spec)
            if constant(spec.source.read_text(), "LR") == 0.2:
                spec.source.write_text(with_constants(spec.source.read_text(), LR=0.3))  # the next idea, begun
                if person == "git stash":  # ... and set aside
                    workspace.git(*IDENTITY, "stash", "-q")
            return replace(outcome, result=replace(outcome.result, confined=confined)) if outcome.result else outcome

    events = []
    loop = make_loop(workspace, EditedMeanwhile(score), events=events)
    loop.baseline()
    exp = loop.step(ScriptedAgent([set_lr(0.2)]))
    (kept,) = (workspace.state / "quarantine").iterdir()
    if person == "edit":
        assert constant((kept / "train.py").read_text(), "LR") == 0.3  # the edit is not lost
    else:  # nor the stash: git's objects (its train.py among them) are kept with its ref's log
        blobs = [zlib.decompress(o.read_bytes()) for o in (kept / ".git" / "objects").glob("*/*")]
        assert any(b.startswith(b"blob") and b"LR = 0.3" in b for b in blobs)
    if confined:
        said = "train.py was edited" if person == "edit" else "the workspace changed (created refs/stash"
        assert exp.status == Status.KEEP and said in " ".join(events), "\n".join(events)
        assert "while experiment 2 trained (its run, confined, cannot reach it)" in " ".join(events)
    else:  # a run that could reach the workspace is not believed
        assert exp.status == Status.CRASH and "changed" in exp.reason and "outside train.py" in exp.reason
    assert workspace.git("status", "--porcelain").strip() == ""  # put back: the branch holds what was kept
    assert (workspace.root / "train.py").read_text() == best_of(Ledger(workspace.root).all()).source


def test_max_experiments_0_on_a_new_workspace_trains_no_baseline(workspace) -> None:
    """BROKE, fixed (red team): `run --max-experiments 0` ("finish what is in flight, start nothing") trained the
    baseline's three seeds on a workspace that had none; with several workers too."""
    from autoresearch.loop.parallel import run_workers
    from autoresearch.loop.workers import devices

    executor = FakeExecutor(score)
    events: list[str] = []
    make_loop(workspace, executor, events=events).run(ScriptedAgent([]), max_experiments=0)
    run_workers(make_loop(workspace, executor), ScriptedAgent([]), devices(None, 2, cores=2), max_experiments=0,
                executor_for=lambda _: executor)  # fmt: skip
    assert executor.calls == [] and Ledger(workspace.root).all() == []
    assert any("--max-experiments 0 starts nothing" in e for e in events)


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_before_a_run_starts_counts_no_attempt(workspace, monkeypatch, workers) -> None:
    """BROKE, fixed (red team): a Ctrl-C between counting a run's attempt and the run's start (the workspace's snapshot
    before it, a worker not yet holding it) left the attempt counted; two such Ctrl-Cs, and the next start crashed the
    baseline, "the loop was killed 2 times while the baseline (exp 1) trained"."""
    from autoresearch.loop.parallel import run_workers
    from autoresearch.loop.workers import devices

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def run(loop) -> None:
        if workers == 1:
            loop.run(ScriptedAgent([]), max_experiments=1)
        else:
            run_workers(
                loop, ScriptedAgent([]), devices(None, 2, cores=2), 1, executor_for=lambda _: FakeExecutor(score)
            )

    for _ in range(3):
        loop = make_loop(workspace, FakeExecutor(score))
        monkeypatch.setattr(*((loop, "_watch") if workers == 1 else (loop.reporter, "training")), interrupted)
        with pytest.raises(KeyboardInterrupt):
            run(loop)
        assert [e.attempts for e in Ledger(workspace.root).all()] == [0]
    run(make_loop(workspace, FakeExecutor(score)))
    assert Ledger(workspace.root).get(1).status == Status.KEEP


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_a_stop_before_the_next_runs_evaluator_is_forked_ahead_asks_the_fork_server_for_none(tmp_path):
    """BROKE, fixed: the next run's evaluator, forked ahead in a thread, was asked of the fork server even once the loop
    was stopping (stop() killed the run before it trained, and the wait for its training ended at once): the server
    started an evaluator for no run, where the fork made in the run's own thread had refused to (RunStopped)."""
    waits = tmp_path / "waits.py"  # the run's evaluator: takes its job, never trains
    waits.write_text(
        "import pathlib, sys, time\n"
        "sys.stdin.readline()\n"
        f"pathlib.Path({str(tmp_path / 'job-taken')!r}).touch()\n"
        "time.sleep(60)\n"
    )
    asked = tmp_path / "asked"  # one line per fork the server was asked for
    server = tmp_path / "server"
    server.write_text(
        f"#!{sys.executable}\nimport json, socket, subprocess, sys, threading\n"
        "sock, lock = socket.socket(fileno=int(sys.argv[-1])), threading.Lock()\n"
        "def say(message):\n"
        "    with lock:\n"
        "        sock.sendall(json.dumps(message).encode() + b'\\n')\n"
        "say({'ready': True})\n"
        "while True:\n"
        "    message, fds, _, _ = socket.recv_fds(sock, 1 << 16, 2)\n"
        "    if not message:\n"
        "        break\n"
        f"    proc = subprocess.Popen([{sys.executable!r}, {str(waits)!r}], stdin=fds[0], start_new_session=True)\n"
        f"    with open({str(asked)!r}, 'a') as f:\n"
        "        f.write(f'{proc.pid}\\n')\n"
        "    say({'pid': proc.pid})\n"
        "    threading.Thread(target=lambda p=proc: say({'pid': p.pid, 'exit': p.wait()}), daemon=True).start()\n"
    )
    server.chmod(0o755)
    (tmp_path / "train.py").write_text("print('trained')\n")
    (tmp_path / "state").mkdir()
    executor = LocalExecutor(python=str(server), prewarm=True)
    spec = RunSpec(tmp_path, tmp_path / "state" / "runs" / "1-0", timeout=30, fingerprint="")
    try:
        worker, ended = run_in_thread(executor, spec)
        deadline = time.monotonic() + 10
        while not (tmp_path / "job-taken").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        executor.stop()  # the run is killed before it trains: the wait for its training ends at once
        worker.join(timeout=5)
        assert ended
    finally:
        executor.close()
        time.sleep(0.5)  # what the server was asked for meanwhile is written down
        pids = [int(line) for line in asked.read_text().split()] if asked.exists() else []
        for pid in pids:
            if not _gone(pid):
                os.killpg(pid, signal.SIGKILL)
    assert len(pids) == 1, f"the fork server was asked for {len(pids)} evaluators, the loop stopping after the first"


def test_a_run_that_fails_before_its_job_is_sent_leaves_no_evaluator_running(tmp_path, monkeypatch):
    """BROKE, fixed: the run's evaluator was taken before the block that kills it on any error: a pid file that could
    not be written (a full disk), or a Ctrl-C there, left it running, waiting for a job, past close()."""
    from autoresearch.loop import executor as executor_module

    monkeypatch.setenv(executor_module.FORK_ENV, "0")  # a new process: no fork server to reap it
    waits = tmp_path / "waits"
    waits.write_text("#!/bin/sh\nexec sleep 60\n")
    waits.chmod(0o755)
    pids: list[int] = []

    def full(path, pid):
        pids.append(pid)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(executor_module, "write_pid_file", full)
    (tmp_path / "train.py").write_text("print('trained')\n")
    (tmp_path / "state").mkdir()
    executor = LocalExecutor(python=str(waits), prewarm=True)
    spec = RunSpec(tmp_path, tmp_path / "state" / "runs" / "1-0", timeout=30, fingerprint="")
    try:
        with pytest.raises(OSError):
            executor.run(spec)
    finally:
        executor.close()
    time.sleep(0.2)
    left = [pid for pid in pids if not _gone(pid)]
    for pid in left:
        os.killpg(pid, signal.SIGKILL)
    assert pids and not left, "the run's evaluator still runs after close()"


@pytest.mark.parametrize(
    ("direct_url", "says"),
    [
        ('{"url": "file:///home/me/autoresearch", "dir_info": {"editable": true}}', "if you edited"),
        ('{"url": "file:///home/me/autoresearch", "dir_info": {}}', "--no-deps file:///home/me/autoresearch)"),
        (None, "--no-deps autoresearch)"),  # from an index
        ("[1, 2]", "--no-deps autoresearch)"),  # unreadable: as from an index
    ],
)
def test_the_hint_after_the_packages_files_changed_fits_how_it_was_installed(monkeypatch, direct_url, says):
    """BROKE, fixed: the hint was `pip install --force-reinstall`, which names no package (pip refuses it), and an
    install from your checkout (pip install -e), whose files you edit yourself, needs none: run again."""
    from importlib import metadata

    from autoresearch.loop import watch

    class Installed:
        def read_text(self, name: str) -> str | None:
            return direct_url if name == "direct_url.json" else None

    monkeypatch.setattr(metadata, "distribution", lambda name: Installed())
    assert says in watch.package_hint()
