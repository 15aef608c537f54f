"""The loop with several workers, against fake executors: devices, parallel judging, retries, resuming, submit."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace

import psutil
import pytest
from loop_support import (
    FakeExecutor,
    ScriptedAgent,
    constant,
    fake_result,
    make_loop,
    pending_experiment,
    set_lr,
    with_constants,
)

from autoresearch.agents.base import Proposal, ProposalError, Usage
from autoresearch.agents.prompt import build_prompt, ledger_summary
from autoresearch.cli import main
from autoresearch.evaluator import cores, sandbox
from autoresearch.loop import asking
from autoresearch.loop.activity import SESSION_NAME, periods, spans_of
from autoresearch.loop.engine import LoopError
from autoresearch.loop.executor import LocalExecutor, Outcome, RunSpec
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.inbox import SUBMITTER, Inbox
from autoresearch.loop.judge import margin_of, measured_noise, noise_of
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.parallel import run_workers
from autoresearch.loop.ratchet import merge_constants
from autoresearch.loop.scheduler import Scheduler
from autoresearch.loop.settings import BASELINE_SEEDS_MAX
from autoresearch.loop.status import status_text
from autoresearch.loop.waiting import LOOP_STARTED, WaitError, loop_running, wait_for
from autoresearch.loop.workers import close_workers, devices, make_workers
from autoresearch.report import render_report
from autoresearch.vocabulary import Kind, RunEnd, Status

SEED_NOISE = {42: 0.0, 43: 0.002, 44: -0.002, 45: 0.001, 46: -0.001, 47: 0.0, 48: 0.001, 49: -0.001}
BETAS = "torch.optim.Adam(model.parameters(), lr=LR, betas=(0.8, 0.9))"


def score(source: str) -> float:
    """Best at LR 0.2 and with the betas edit; a seed wobble of 0.002 (noise 0.002, margin 0.004)."""
    lr, seed = constant(source, "LR"), constant(source, "SEED")
    return 1.0 + (lr - 0.2) ** 2 + (0 if BETAS in source else 0.05) + SEED_NOISE[seed]


def betas(ctx):
    return "Adam betas 0.8, 0.9", ctx.train_py.replace("torch.optim.Adam(model.parameters(), lr=LR)", BETAS)


def lr_and_betas(ctx):
    """LR 0.2 and the betas edit at once: holds the change of `set_lr(0.2)`, and more."""
    return "LR 0.2 and Adam betas 0.8, 0.9", with_constants(betas(ctx)[1], LR=0.2)


@dataclass
class Device:
    """A fake GPU: records what each run saw, optionally holds a run until `gate(source)` lets it end."""

    env: dict
    score: callable = score
    gate: callable = lambda source: None
    runs: list = field(default_factory=list)  # (CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS, source)
    fake: FakeExecutor = None

    def __post_init__(self):
        self.fake = FakeExecutor(self.score)

    def run(self, spec: RunSpec) -> Outcome:
        source = spec.source.read_text()
        self.runs.append((self.env.get("CUDA_VISIBLE_DEVICES"), self.env.get("OMP_NUM_THREADS"), source))
        self.gate(source)
        return self.fake.run(spec)

    def close(self) -> None:
        pass


def scheduler(
    workspace,
    gpus: str | None = "0,1",
    baseline_runs: int = 2,
    inbox: bool = False,
    workers=None,
    confirm_runs: int = 0,  # the best is not measured again but where a test says so: each counts its runs
    events: list[str] | None = None,
    **device_args,
):
    loop = make_loop(workspace, FakeExecutor(score), baseline_runs=baseline_runs, events=events)
    fakes: dict[str, Device] = {}

    def executor_for(device):
        fakes[device.label] = Device(device.env, **device_args)
        return fakes[device.label]

    found = make_workers(loop, devices(gpus, workers, cores=2), executor_for)
    return Scheduler(loop, found, Inbox(workspace.state) if inbox else None, confirm_runs=confirm_runs), fakes


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def pairs(count: int):
    """A gate under which each of the first `count` runs ends only once another run trains beside it."""
    both, started = threading.Barrier(2, timeout=10), []

    def gate(source: str) -> None:
        started.append(source)
        if len(started) <= count:
            both.wait()

    return gate


def test_two_workers_train_at_once_each_run_pinned_to_its_own_gpu(workspace):
    sched, fakes = scheduler(workspace, gate=pairs(4))  # the baseline's 2 seeds, then 2 experiments, in pairs
    sched.run(ScriptedAgent([set_lr(0.2), betas]), max_experiments=2)
    runs = {label: fake.runs for label, fake in fakes.items()}
    assert {(gpu, threads) for gpu, threads, _ in runs["gpu 0"]} == {("0", "1")}  # its GPU, one core of the two
    assert {(gpu, threads) for gpu, threads, _ in runs["gpu 1"]} == {("1", "1")}
    assert sorted(constant(r[0][2], "SEED") for r in runs.values()) == [42, 43]  # the baseline's seeds, at once
    rows = sched.loop.ledger.all()
    assert rows[0].kind == Kind.BASELINE and rows[0].status == Status.KEEP and len(rows[0].run_values) == 2
    assert {rows[1].description, rows[2].description} == {"LR 0.2", "Adam betas 0.8, 0.9"}
    assert all(r.status.final for r in rows) and sched.loop.git.head() == sched.loop.best().commit
    assert sched.loop.ws.git.changed_paths() == set()  # the workspace's train.py is the best's
    rate = next(line for line in status_text(sched.loop.ws).splitlines() if line.startswith("rate:"))
    assert "experiments per hour (gpu 0: " in rate and ", gpu 1: " in rate
    # Every run is in its experiment's row, on the worker that trained it, ended: what busy fractions are made of.
    spans = [s for r in rows for s in spans_of(r)]
    assert {label: sum(s.worker == label for s in spans) for label in runs} == {k: len(v) for k, v in runs.items()}
    assert {s.worker for s in spans if s.exp_id == 1} == {"gpu 0", "gpu 1"} and all(s.end >= s.start for s in spans)
    throughput = render_report(rows).split("## Throughput")[1]
    assert "| worker | experiments | per hour | runs | busy |" in throughput and "| gpu 0 | " in throughput
    assert not (workspace.state / SESSION_NAME).exists()  # the loop has ended: status shows no workers
    (ran,) = periods(workspace.state, rows)  # kept, for the report's rates over the time loops ran
    assert ran.workers == ("gpu 0", "gpu 1") and ran.start <= rows[0].started_at and ran.end >= rows[-1].finished_at


def after_the_first_keep(sched_box: list):
    """A gate that holds the second experiment until the first one was kept (another win lands meanwhile)."""

    def gate(source: str) -> None:
        if (BETAS in source and constant(source, "LR") != 0.2) or constant(source, "LR") == 0.15:
            loop = sched_box[0].loop
            wait_until(lambda: Ledger(loop.ws.root).get(2).status == Status.KEEP)

    return gate


@pytest.mark.slow
def test_the_loops_own_fork_server_serves_the_first_worker_or_is_gone_before_the_workers_start(workspace):
    """The loop's executor starts its fork server (importing torch) as the loop is made: one worker with the
    loop's environment takes it; workers pinned to their own share of the machine leave none of it running."""
    own = LocalExecutor()
    loop = make_loop(workspace, own)
    one = make_workers(loop, devices(None, None))
    assert one[0].executor is own
    close_workers(one)

    loop.executor = own = LocalExecutor()
    two = make_workers(loop, devices(None, 2, cores=2))
    try:
        servers = [p for p in psutil.Process().children(recursive=True) if "zygote" in " ".join(p.cmdline())]
        assert own not in [w.executor for w in two] and len(servers) == 2  # the workers' own two, nothing more
    finally:
        close_workers(two)


def test_a_win_on_a_stale_base_is_merged_onto_the_best_and_kept_only_once_revalidated(workspace):
    box: list = []
    sched, _ = scheduler(workspace, gate=after_the_first_keep(box))
    box.append(sched)
    sched.run(ScriptedAgent([set_lr(0.2), betas]), max_experiments=2)
    baseline, lr, stale, merged = sched.loop.ledger.all()
    assert lr.status == Status.KEEP and stale.parent == baseline.commit  # trained on the old best
    assert stale.status == Status.DISCARD and f"merged onto it as exp {merged.id}" in stale.reason
    assert f"exp {lr.id} was kept after it was made from exp {baseline.id}" in stale.reason
    assert merged.merged_from == stale.id and merged.parent == lr.commit and merged.status == Status.KEEP
    assert BETAS in merged.source and constant(merged.source, "LR") == 0.2  # both changes, trained again
    assert merged.val_bpb == score(merged.source) and "better" in merged.reason
    assert merged.cost_usd == 0.0  # the loop merged it, asking no agent: not a cost the report calls unknown
    git = sched.loop.git
    assert git.head() == merged.commit and git.parent(merged.commit) == lr.commit
    assert git.ref(f"refs/autoresearch/discarded/{stale.id}") == stale.commit


def test_a_win_on_a_stale_base_that_conflicts_with_the_best_is_discarded_and_the_agent_sees_why(workspace):
    box: list = []
    sched, _ = scheduler(workspace, gate=after_the_first_keep(box))
    box.append(sched)
    # LR 0.2 with the betas is kept while LR 0.15 trains: both set LR, and the kept one changed the code too.
    sched.run(ScriptedAgent([lr_and_betas, set_lr(0.15)]), max_experiments=2)
    rows = sched.loop.ledger.all()
    assert [r.status for r in rows] == [Status.KEEP, Status.KEEP, Status.DISCARD]  # nothing merged, nothing lost
    assert "conflicts with exp 2's in train.py" in rows[2].reason and "against its base exp 1" in rows[2].reason
    seen = {e.id: e.reason for e in sched.loop.context().history}
    assert "conflicts" in seen[3]
    assert sched.loop.git.head() == rows[1].commit


def test_a_stale_win_that_holds_the_change_kept_meanwhile_is_judged_on_the_best_without_training_again(workspace):
    box: list = []

    def gate(source: str) -> None:
        if BETAS in source:  # LR 0.2 with the betas: trains until LR 0.2 alone was kept
            wait_until(lambda: Ledger(box[0].loop.ws.root).get(2).status == Status.KEEP)

    sched, fakes = scheduler(workspace, gate=gate)
    box.append(sched)
    sched.run(ScriptedAgent([set_lr(0.2), lr_and_betas]), max_experiments=2)
    rows = sched.loop.ledger.all()
    assert len(rows) == 3, [r.reason for r in rows]  # no merge to re-validate: it measured that very train.py
    _, lr, stale = rows
    assert BETAS in stale.source and constant(stale.source, "LR") == 0.2
    assert lr.status == Status.KEEP and stale.status == Status.KEEP and stale.val_bpb == score(stale.source)
    assert "judged against exp 2" in stale.reason and "trained on exp 1" in stale.reason
    assert stale.parent == lr.commit and "LR = " not in stale.diff and "betas" in stale.diff  # its change of the best
    trained = [source for fake in fakes.values() for _, _, source in fake.runs if BETAS in source]
    assert len(trained) == 1  # one run, on its old base, and none again
    git = sched.loop.git
    assert git.head() == stale.commit and git.parent(stale.commit) == lr.commit  # the history holds both keeps
    assert git.show(stale.commit, "train.py") == stale.source and sched.loop.ws.git.changed_paths() == set()


def test_a_stale_win_that_set_the_kept_changes_constants_its_own_way_is_judged_against_it_without_a_run(workspace):
    """LR 0.1 is kept while LR 0.2, made on the same base, trains: LR 0.2 is then a change of LR 0.1 that its run
    measured already, and a better one."""
    box: list = []

    def gate(source: str) -> None:
        if constant(source, "LR") == 0.2:
            wait_until(lambda: Ledger(box[0].loop.ws.root).get(2).status == Status.KEEP)

    sched, fakes = scheduler(workspace, gate=gate)
    box.append(sched)
    sched.run(ScriptedAgent([set_lr(0.1), set_lr(0.2)]), max_experiments=2)
    rows = sched.loop.ledger.all()
    assert len(rows) == 3, [r.reason for r in rows]  # no merge to train
    _, first, second = rows
    assert first.status == second.status == Status.KEEP and "judged against exp 2" in second.reason
    assert second.parent == first.commit and "-LR = 0.1" in second.diff and "+LR = 0.2" in second.diff
    assert [constant(s, "LR") for fake in fakes.values() for _, _, s in fake.runs].count(0.2) == 1
    assert sched.loop.git.head() == second.commit and sched.loop.best().id == second.id


def test_an_older_stale_win_that_set_the_kept_constant_its_own_way_is_trained_again_on_the_best(workspace):
    """The same, the other way round: LR 0.2 (exp 2) trains until LR 0.1 (exp 3) is kept. Judged with its own run it
    would become a best older than exp 3, so its train.py is trained on exp 3 as a merge is."""
    box: list = []

    def gate(source: str) -> None:
        if constant(source, "LR") == 0.2 and not Ledger(box[0].loop.ws.root).get(2).run_values:
            wait_until(lambda: (exp := Ledger(box[0].loop.ws.root).get(3)) is not None and exp.status == Status.KEEP)

    sched, fakes = scheduler(workspace, gate=gate)
    box.append(sched)
    sched.run(ScriptedAgent([set_lr(0.2), set_lr(0.1)]), max_experiments=2)
    rows = sched.loop.ledger.all()
    assert [(r.id, r.status) for r in rows[1:]] == [(2, Status.DISCARD), (3, Status.KEEP), (4, Status.KEEP)]
    assert "merged onto it as exp 4" in rows[1].reason and rows[3].merged_from == 2
    assert rows[3].parent == rows[2].commit and constant(rows[3].source, "LR") == 0.2
    assert [constant(s, "LR") for fake in fakes.values() for _, _, s in fake.runs].count(0.2) == 2
    assert sched.loop.best().id == 4


def test_a_marginal_win_on_a_stale_base_is_not_run_again_there_its_merge_is_judged_on_the_best(workspace):
    """BATCH 16 wins by 1-2 margins on the baseline while LR 0.2 is kept: run again there it could only be merged
    onto LR 0.2 and trained again, so it is merged at once, and the merge's runs on the best decide."""
    box: list = []

    def gate(source: str) -> None:
        if constant(source, "BATCH") == 16 and constant(source, "LR") != 0.2:
            wait_until(lambda: Ledger(box[0].loop.ws.root).get(2).status == Status.KEEP)

    def batch(ctx):
        return "BATCH 16", with_constants(ctx.train_py, BATCH=16)

    # The baseline's seeds 42 and 43: noise 0.0014, margin 0.0028; BATCH 16 is 0.004 better: a marginal win.
    sched, fakes = scheduler(
        workspace, gate=gate, score=lambda source: score(source) - 0.004 * (constant(source, "BATCH") == 16)
    )
    box.append(sched)
    sched.run(ScriptedAgent([set_lr(0.2), batch]), max_experiments=2)
    baseline, lr, stale, merged = sched.loop.ledger.all()
    assert lr.status == Status.KEEP and stale.parent == baseline.commit and len(stale.run_values) == 1
    assert stale.status == Status.DISCARD and stale.reason.startswith("marginal win: ")
    assert f"but exp {lr.id} was kept after it was made from exp {baseline.id}" in stale.reason
    assert f"merged onto it as exp {merged.id}" in stale.reason and merged.merged_from == stale.id
    assert merged.status == Status.KEEP and len(merged.run_values) == 2  # marginal on the best too: run again there
    trained = [s for fake in fakes.values() for _, _, s in fake.runs if constant(s, "BATCH") == 16]
    assert sorted(constant(s, "LR") for s in trained) == [0.05, 0.2, 0.2]  # once on its old base, twice merged
    assert sched.loop.best().id == merged.id and sched.loop.git.head() == merged.commit


def test_a_stale_win_that_is_the_change_kept_meanwhile_and_a_new_seed_is_not_kept(workspace):
    """Made on the old best it changed LR and the seed; on the best kept meanwhile (LR alone) only the seed."""
    box: list = []

    def gate(source: str) -> None:
        if constant(source, "SEED") >= 45:
            wait_until(lambda: Ledger(box[0].loop.ws.root).get(2).status == Status.KEEP)

    def lucky(ctx):
        return "LR 0.2, seed 45", with_constants(ctx.train_py, LR=0.2, SEED=45)

    sched, _ = scheduler(
        workspace, gate=gate, score=lambda source: score(source) - 0.5 * (constant(source, "SEED") >= 45)
    )
    box.append(sched)
    sched.run(ScriptedAgent([set_lr(0.2), lucky]), max_experiments=2)
    rows = sched.loop.ledger.all()
    assert [r.status for r in rows] == [Status.KEEP, Status.KEEP, Status.DISCARD]  # a seed 0.5 better: not kept
    assert "only the random seed changed" in rows[2].reason and sched.loop.git.head() == rows[1].commit


def test_a_run_killed_from_outside_is_tried_once_more_and_twice_killed_is_a_crash(workspace):
    calls: dict[float, int] = {}

    def killed(source: str):
        lr = constant(source, "LR")
        calls[lr] = calls.get(lr, 0) + 1
        if (lr == 0.2 and calls[lr] == 1) or lr == 0.3:
            return Outcome(RunEnd.LOST, None, "the run was killed from outside (signal 9)", "", 1.0)
        return score(source)

    sched, _ = scheduler(workspace, score=killed)
    sched.run(ScriptedAgent([set_lr(0.2), set_lr(0.3)]), max_experiments=2)
    _, retried, lost = sched.loop.ledger.all()
    assert retried.status == Status.KEEP and calls[0.2] == 2 and len(retried.run_values) == 1
    assert lost.status == Status.CRASH and calls[0.3] == 2 and "killed from outside" in lost.reason
    assert retried.attempts == lost.attempts == 0


def late(source: str) -> Outcome:
    """A run scored invalid for its time: 1.5 s of training on a 1 s budget (a stall of the machine in its last step,
    if the run is honest; a CI machine's once stopped the loop at its baseline)."""
    why = "trained 1.5s, past the 1s budget"
    result = replace(fake_result(1.0, "f" * 16), val_bpb=None, valid=False, invalid_reason=why, late=True)
    return Outcome(RunEnd.INVALID, result, f"invalid result: {why}", "", 1.0)


def test_a_late_baseline_run_is_tried_once_more_and_a_late_change_is_a_crash_not_drawn_again(workspace):
    calls: dict[tuple[float, int], int] = {}

    def late_once(source: str):
        key = (constant(source, "LR"), constant(source, "SEED"))
        calls[key] = calls.get(key, 0) + 1
        if (key == (0.05, 43) and calls[key] == 1) or key[0] == 0.3:  # the baseline's second seed, once; LR 0.3, ever
            return late(source)
        return score(source)

    events: list[str] = []
    sched, _ = scheduler(workspace, score=late_once, events=events)
    sched.run(ScriptedAgent([set_lr(0.3)]), max_experiments=1)
    baseline, change = sched.loop.ledger.all()
    assert baseline.status == Status.KEEP and len(baseline.run_values) == 2 and calls[(0.05, 43)] == 2
    assert any("exp 1: invalid result: trained 1.5s" in e and "trying that run once more" in e for e in events)
    # A change may not draw again: one that overran when its own training loss looked poor would be measured twice.
    assert change.status == Status.CRASH and calls[(0.3, 42)] == 1 and "trained 1.5s" in change.reason


def test_a_run_that_crashes_by_itself_is_a_crash_and_not_retried(workspace):
    calls = []

    def crashes(source: str):
        calls.append(source)
        crash = Outcome(RunEnd.CRASH, None, "ZeroDivisionError", "Traceback", 1.0)
        return crash if "LR = 0.3" in source else score(source)

    sched, _ = scheduler(workspace, score=crashes)
    sched.run(ScriptedAgent([set_lr(0.3)]), max_experiments=1)
    assert sched.loop.ledger.get(2).status == Status.CRASH and sum("LR = 0.3" in c for c in calls) == 1


def test_a_proposal_identical_to_one_in_flight_or_measured_on_the_same_base_is_not_run_again(workspace):
    sched, fakes = scheduler(workspace, gate=pairs(2))
    sched.run(ScriptedAgent([set_lr(0.9), set_lr(0.9)]), max_experiments=2)  # the same, while the first trains
    rows = sched.loop.ledger.all()
    assert rows[2].kind == Kind.PROPOSAL and "exp 2, in flight (queued or training)" in rows[2].reason
    assert rows[1].status == Status.DISCARD
    again = sched.loop.step(ScriptedAgent([set_lr(0.9)]))  # and once measured on this best
    assert again.kind == Kind.PROPOSAL and "already measured on this best" in again.reason
    trained = [s for fake in fakes.values() for _, _, s in fake.runs] + sched.loop.executor.calls
    assert sum(constant(s, "LR") == 0.9 for s in trained) == 1


def test_the_agent_sees_the_experiments_in_flight(workspace):
    sched, _ = scheduler(workspace, gate=pairs(4))
    agent = ScriptedAgent([set_lr(0.2), betas])
    sched.run(agent, max_experiments=2)
    assert agent.seen[0].in_flight == []
    (running,) = agent.seen[1].in_flight
    assert running.description == "LR 0.2" and "+LR = 0.2" in running.diff


@pytest.mark.parametrize("ends_first", ["LR 0.2", "Adam betas"])
def test_a_driver_killed_with_two_runs_in_flight_resumes_them_and_loses_or_duplicates_nothing(workspace, ends_first):
    release = threading.Event()  # the runs the dead driver started never report to it
    sched, _ = scheduler(workspace, gate=lambda source: release.wait(30) if "LR = 0.05" not in source else None)
    sched.run(None)  # the baseline
    agent = ScriptedAgent([set_lr(0.2), betas])
    for worker in sched.workers:  # two proposals, each training on its GPU, when the driver is SIGKILLed
        sched.propose(agent)
        sched.dispatch(worker, sched.next_job())
    in_flight = sched.loop.ledger.in_flight()
    assert [(e.id, e.attempts, bool(e.commit)) for e in in_flight] == [(2, 1, True), (3, 1, True)]
    told = status_text(workspace)
    assert "interrupted: exp 2 (LR 0.2)" in told and "interrupted: exp 3 (Adam betas" in told
    assert [s.end for e in in_flight for s in spans_of(e)] == [None, None]  # training when the driver died

    # Resumed, the two train at once; whichever ends first is kept, and the other is merged onto it. (The order
    # was left to the threads once, and the test failed when the second GPU's run reported first.)
    first, second = (2, 3) if ends_first == "LR 0.2" else (3, 2)

    def resumed(source: str) -> int | None:
        """Which resumed experiment this train.py is: 2 (LR 0.2 alone), 3 (the betas alone), else None."""
        if BETAS in source:
            return 3 if constant(source, "LR") == 0.05 else None
        return 2 if constant(source, "LR") == 0.2 else None

    def in_order(source: str) -> None:  # the second's run ends once the first is judged
        if resumed(source) == second:
            wait_until(lambda: Ledger(workspace.root).get(first).status.final)

    again, fakes = scheduler(workspace, gate=in_order)  # `autoresearch run` again
    again.run(None)
    release.set()
    rows = again.loop.ledger.all()
    assert [r.id for r in rows] == [1, 2, 3, 4]  # the two, and the merge of the second onto the first
    statuses = {first: Status.KEEP, second: Status.DISCARD}
    assert [r.status for r in rows] == [Status.KEEP, statuses[2], statuses[3], Status.KEEP]
    assert rows[1].commit == in_flight[0].commit and rows[3].merged_from == second and rows[3].attempts == 0
    trained = [constant(s, "LR") for fake in fakes.values() for _, _, s in fake.runs]
    assert sorted(trained) == [0.05, 0.2, 0.2]  # each resumed once (0.05: exp 3, betas), then the merge
    assert again.loop.git.head() == again.loop.best().commit == rows[3].commit
    assert len((workspace.root / "results.tsv").read_text().splitlines()) == 1 + len(rows)
    assert all(s.end is not None for r in rows for s in spans_of(r))  # the dead driver's runs: their end unknown
    assert [len(spans_of(r)) for r in rows[1:3]] == [1, 1]  # dropped, not counted busy; each run trained again


def test_baseline_seeds_on_gpus_of_two_models_stop_the_loop_and_the_baseline_is_measured_on_one(workspace):
    """`--gpus all` on a machine with an RTX 4090 and an RTX 3090: a seed from each would be one noise estimate
    and one best, and every later comparison would be between models."""
    sched, fakes = scheduler(workspace, gate=pairs(2))  # the two seeds train at once
    fakes["gpu 0"].fake.setup = "NVIDIA GeForce RTX 4090; wall clock"
    fakes["gpu 1"].fake.setup = "NVIDIA GeForce RTX 3090; wall clock"
    mixed = r"measured on NVIDIA GeForce RTX \d090; wall clock, the baseline's runs on"
    with pytest.raises(LoopError, match=mixed) as err:
        sched.run(None)
    assert "4090" in str(err.value) and "3090" in str(err.value) and "--gpus" in err.value.hint
    baseline = Ledger(workspace.root).get(1)
    assert not baseline.status.final and len(baseline.run_values) == 1  # the seed that ended first, recorded
    first = json.loads(baseline.result)["setup"]
    again, fakes = scheduler(workspace)  # run again on GPUs of the model that measured the first seed
    for fake in fakes.values():
        fake.fake.setup = first
    again.run(None)
    kept = Ledger(workspace.root).get(1)
    assert kept.status == Status.KEEP and len(kept.run_values) == 2 and json.loads(kept.result)["setup"] == first


def test_a_refused_seed_is_set_aside_and_rebuild_ledger_does_not_take_it_back(workspace):
    """Seed 2 on an A100 is refused; resumed on two H200s the baseline wants two seeds and never trains it again."""
    from autoresearch.loop.rebuild import rebuild

    def gate(source):
        if constant(source, "SEED") == 44:  # the A100's seed ends once an H200's has set the setup
            wait_until(lambda: Ledger(workspace.root).get(1).run_values)

    sched, fakes = scheduler(workspace, gpus="0,1,2", baseline_runs=3, gate=gate)
    fakes["gpu 2"].fake.setup = "NVIDIA A100-SXM4-80GB; wall clock"
    with pytest.raises(LoopError, match="A100"):
        sched.run(None)
    again, _ = scheduler(workspace, gpus="0,1")
    again.run(None)
    kept = Ledger(workspace.root).get(1)
    assert kept.status == Status.KEEP and len(kept.run_values) == 2
    assert not (workspace.state / "runs" / "1-2" / "result.json").exists()
    assert (workspace.state / "runs" / "1-2" / "result.refused.json").exists()  # kept to read, not as a run
    again.loop.ledger.close()
    (workspace.state / "ledger.sqlite").unlink()
    rebuild(workspace.root, workspace.git)
    rebuilt = Ledger(workspace.root).get(1)
    by_seed = dict(zip(kept.run_indices, kept.run_values, strict=True))  # the loop records runs as they end
    assert json.loads(rebuilt.seeds) == sorted(by_seed)  # read from the runs' folders, in run order
    assert dict(zip(rebuilt.run_indices, rebuilt.run_values, strict=True)) == by_seed
    assert rebuilt.recorded["setup"] == kept.recorded["setup"]


def test_a_try_stopped_on_another_setup_is_taken_up_by_run_with_the_baselines_workers(workspace):
    """As the hint says: `try` refused beside a baseline of two workers, then `run --workers 2` trains it."""
    from autoresearch.loop.trying import try_working_tree

    one_core = "AMD EPYC; CPU time / 1 cores"
    sched, fakes = scheduler(workspace, gpus=None, workers=2)
    for fake in fakes.values():
        fake.fake.setup = one_core
    sched.run(None)
    edited = with_constants(workspace.read_train_py(), LR=0.2)
    workspace.write_train_py(edited)
    # naming the workers' count (a user's walk: "the same --workers" did not say how many)
    measured = r"CPU time / 2 cores, the baseline's runs on .* by a loop of 2 workers \(`--workers 2` gives each run"
    with pytest.raises(LoopError, match=measured):
        try_working_tree(make_loop(workspace, FakeExecutor(score, setup="AMD EPYC; CPU time / 2 cores")), "LR 0.2")
    again, fakes = scheduler(workspace, gpus=None, workers=2)  # the branch is on exp 2's commit, in flight
    for fake in fakes.values():
        fake.fake.setup = one_core
    again.run(None)
    rows = Ledger(workspace.root).all()
    assert [(e.id, e.status) for e in rows] == [(1, Status.KEEP), (2, Status.KEEP)]
    assert again.loop.git.head() == rows[1].commit and workspace.read_train_py() == edited


def test_a_loop_given_another_share_of_the_cores_than_the_baselines_is_refused_before_anything_trains(
    workspace, monkeypatch
):
    """A user's walk: a baseline measured by `--workers 2` on two cores (one each), then `submit` without --workers.
    Its loop in the background gave its one worker both cores, trained the submission its whole budget, refused the
    result and stopped; `run` without --workers lost its first runs so. Now the loop is refused at its start, naming
    the count to give, and so is `try`, which trains on every core."""
    import argparse

    from autoresearch.cli.commands import drive
    from autoresearch.loop.trying import try_working_tree

    sched, fakes = scheduler(workspace, gpus=None, workers=2)
    for fake in fakes.values():
        fake.fake.setup = "AMD EPYC; CPU time / 1 cores"
    sched.run(None)
    monkeypatch.setenv("AUTORESEARCH_DEVICE", "cpu")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # torch's default: every CPU (or core) of this machine
    loop, ran = make_loop(workspace, FakeExecutor(score)), []
    loop.executor.measures_here = True  # as a LocalExecutor's runs are: measured on this machine
    loop.run = lambda *_: ran.append("one worker")
    refused = r"this loop's runs would count CPU time / \d+ cores, the baseline's runs CPU time / 1 cores in a loop"
    args = argparse.Namespace(
        ray=None, gpus=None, workers=None, timeout=None, accelerator=None, max_experiments=1, hours=None, linger=0.0
    )
    with pytest.raises(LoopError, match=refused) as stopped:
        drive(loop, None, devices(None, None), args)
    assert stopped.value.hint.startswith("give --workers 2 (to `run` and `submit` alike)")
    edited = with_constants(workspace.read_train_py(), LR=0.2)
    workspace.write_train_py(edited)
    with pytest.raises(LoopError, match=refused):
        try_working_tree(loop, "LR 0.2")
    assert ran == [] and loop.executor.calls == [] and len(Ledger(workspace.root).all()) == 1
    assert workspace.read_train_py() == edited  # the change is left where it was
    loop.check_share([{"OMP_NUM_THREADS": "1"}] * 2)  # a core each, as the baseline's workers had: taken
    with pytest.raises(LoopError, match=refused):  # two CPUs named as a kernel's list does (read as one, it was taken)
        loop.check_share([{cores.RUN_CPUS_ENV: "0-1", "OMP_NUM_THREADS": "2"}])


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_a_change_that_ends_before_the_baselines_first_seed_is_checked_once_that_is_known(workspace):
    """With more workers than baseline seeds, a change made from the baseline trains at once, and may end first:
    on a GPU of another model it is not judged (it was kept, once) but trained again where the baseline ran."""
    h200, a100 = "NVIDIA H200; wall clock", "NVIDIA A100-SXM4-80GB; wall clock"

    def gate(source):
        if constant(source, "LR") == 0.05:  # a baseline seed: ends only once the change has its run
            wait_until(lambda: (row := Ledger(workspace.root).get(2)) is not None and row.run_values)

    sched, fakes = scheduler(workspace, gpus=",".join(map(str, range(8))), gate=gate)  # 4 seeds, 4 workers left
    for label, fake in fakes.items():
        fake.fake.setup = a100 if label in ("gpu 4", "gpu 5", "gpu 6", "gpu 7") else h200
    with pytest.raises(LoopError, match=f"experiment 2 stopped: it was measured on {a100}, the baseline's runs on"):
        sched.run(ScriptedAgent([set_lr(0.2)]), max_experiments=1)
    baseline, change = Ledger(workspace.root).all()
    assert baseline.status == Status.KEEP and baseline.recorded["setup"] == h200
    assert not change.status.final and change.run_values == [] and change.recorded == {}  # no value kept
    again, fakes = scheduler(workspace, gpus="0,1")  # only the H200s
    for fake in fakes.values():
        fake.fake.setup = h200
    again.run(None)
    change = Ledger(workspace.root).get(2)
    assert change.status == Status.KEEP and change.recorded["setup"] == h200 and len(change.run_values) == 1


def test_submit_queues_a_train_py_with_the_running_loop_and_wait_prints_its_verdict(workspace):
    sched, _ = scheduler(workspace, inbox=True)
    sched.run(None)  # the baseline
    ws, inbox = workspace, Inbox(workspace.state)
    reply = inbox.put("LR 0.2", with_constants(ws.read_train_py(), LR=0.2), ws.git.head())
    same = inbox.put("LR 0.2 again", with_constants(ws.read_train_py(), LR=0.2), ws.git.head())
    sched.run(None)  # the running loop takes them, answers, trains and judges
    assert reply.answer() == {"id": 2}  # answered by the run above
    assert "in flight (queued or training)" in same.answer()["error"]
    (exp,) = wait_for(lambda: Ledger(ws.root), [2], driver_alive=lambda: False, poll=0.05)
    assert exp.status == Status.KEEP and exp.agent == "submit" and ws.git.head() == exp.commit
    assert not inbox.pending()


@pytest.mark.slow  # seconds: processes of their own
def test_wait_on_a_loop_that_stops_while_it_waits_says_why(workspace):
    """BROKE, fixed: a loop lets go of the workspace before it writes the error it stopped with; a `wait` that was
    waiting then found no loop and no error yet, and said only that none ran (a README walk-through). It now waits
    for the loop's process to end first."""
    sched, _ = scheduler(workspace, inbox=True)
    sched.run(None)
    inbox = Inbox(workspace.state)
    inbox.put("LR 0.2", with_constants(workspace.read_train_py(), LR=0.2), workspace.git.head())
    assert [e.id for e in inbox.take(sched.loop)] == [2]  # queued; the loop below stops before judging it
    loop = f"""
import pathlib, time
from autoresearch.loop import activity
from autoresearch.workspace.workspace import Workspace
ws = Workspace(pathlib.Path({str(workspace.root)!r}))
with ws.lock(), activity.session(ws.state, ["cpu 0", "cpu 1"]):
    print("running", flush=True)
    time.sleep(1.0)
time.sleep(1.0)  # closing its evaluators, after it let go of the workspace
with open(ws.state / "driver.log", "a") as log:
    log.write("error: experiment 2 stopped: the disk is full\\n  hint: free some\\n")
"""
    process = subprocess.Popen([sys.executable, "-c", loop], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "running\n"
        running = loop_running(workspace.is_locked, workspace.state)
        log = workspace.state / "driver.log"
        with pytest.raises(WaitError, match="it stopped with error: experiment 2 stopped: the disk is full hint: free"):
            wait_for(lambda: Ledger(workspace.root), [2], running, poll=0.05, log=log)
    finally:
        process.kill()
        process.wait()


def test_wait_on_a_loop_that_stopped_says_why(workspace, capsys):
    """A coding agent that only sees `wait` learns what stopped the background loop, instead of submitting again."""
    sched, _ = scheduler(workspace, inbox=True)
    sched.run(None)
    inbox = Inbox(workspace.state)
    inbox.put("LR 0.2", with_constants(workspace.read_train_py(), LR=0.2), workspace.git.head())
    assert [e.id for e in inbox.take(sched.loop)] == [2]  # queued, and then the loop stopped
    log = workspace.state / "driver.log"
    log.write_text("exp 2 submitted: LR 0.2\nerror: experiment 2 stopped: it was measured on X, the baseline's runs "
                   "on Y\n  hint: run where it ran\n")  # fmt: skip
    with pytest.raises(WaitError, match="no loop is running; it stopped with error: experiment 2 stopped") as err:
        wait_for(lambda: Ledger(workspace.root), [1, 2], driver_alive=lambda: False, poll=0.05, log=log)
    assert "on Y hint: run where it ran" in str(err.value) and "once what stopped it is dealt with" in err.value.hint
    capsys.readouterr()
    assert main(["wait", "2", "--workspace", str(workspace.root)]) == 2  # the command: one line, then its hint
    said = capsys.readouterr().err.splitlines()
    assert said[0].startswith("error: experiment 2 is in flight") and said[0].endswith("hint: run where it ran")
    # The command that finishes it, with the workers the loop had: a count guessed wrong is refused (its CPU share)
    assert said[1].startswith("  hint: `autoresearch run --agent queue --gpus 0,1` finishes them") and len(said) == 2
    log.write_text("exp 2 submitted: LR 0.2\nerror: an old one\n  hint: x\nstarted\ntraining\nstill training\n")
    with pytest.raises(WaitError) as err:  # a log that does not end on an error says nothing of one
        wait_for(lambda: Ledger(workspace.root), [2], driver_alive=lambda: False, poll=0.05, log=log)
    assert "stopped with" not in str(err.value)
    # An error of an earlier loop, above the line `submit` writes before starting the next, which was then killed
    # outright, writing one line: not what stopped the latest (BROKE, fixed: it was repeated as that loop's).
    log.write_text(f"error: an old one\n  hint: x\n{LOOP_STARTED}, 2026-12-02 17:00:00: run\nexp 3 submitted\n")
    with pytest.raises(WaitError) as err:
        wait_for(lambda: Ledger(workspace.root), [2], driver_alive=lambda: False, poll=0.05, log=log)
    assert "stopped with" not in str(err.value)


def test_the_command_that_finishes_what_a_loop_left_names_the_workers_that_loop_had(tmp_path) -> None:
    """BROKE, fixed: the hint said "with your --gpus or --workers", and an agent that guessed the count wrong had its
    loop refused (a run's CPU share must be the baseline's)."""
    from autoresearch.loop import activity

    assert activity.run_command(tmp_path, "--agent queue") == (
        "`autoresearch run --agent queue` (with the --gpus or --workers it had)"  # no loop said which
    )
    for workers, options in [
        (["gpu 0", "gpu 3"], " --gpus 0,3"),
        (["cpu 0", "cpu 1", "cpu 2"], " --workers 3"),
        (["ray 0", "ray 1"], " --ray"),
        (["local"], ""),
    ]:
        activity.start_session(tmp_path, workers, time.time())  # the latest loop's, killed or ended
        assert activity.run_command(tmp_path) == f"`autoresearch run{options}`"
        activity.end_session(tmp_path)
        assert activity.run_command(tmp_path, "--agent queue") == f"`autoresearch run --agent queue{options}`"


@pytest.mark.parametrize(
    ("placement", "options"),
    [
        (
            ["--ray", "10.0.0.7:6379", "--accelerator", "H100", "--timeout", "600"],
            " --ray 10.0.0.7:6379 --accelerator H100 --timeout 600",
        ),
        (["--ray", "ray://[::1]:10001"], " --ray 'ray://[::1]:10001'"),
        (["--gpus", "all"], " --gpus all"),
        ([], ""),
        # Not options a loop records (a history written by hand): the workers' labels say what they can
        (["--ray", "$(reboot)"], " --ray"),
        (["--ray", "--agent", "x"], " --ray"),
        (["--timeout"], " --ray"),
    ],
)
def test_the_command_that_finishes_a_ray_loop_names_its_cluster_gpu_type_and_timeout(tmp_path, placement, options):
    """BROKE, fixed: after a loop on a Ray cluster (`run --ray 10.0.0.7:6379 --accelerator H100`), the hint said
    `--ray`, which starts a Ray of this machine's own: what the loop left in flight went to another place, or to no
    GPU. The loop records its options as given; a record of what a loop gives no such option is not shown."""
    from autoresearch.loop import activity

    activity.start_session(tmp_path, ["ray 0", "ray 1"], time.time(), placement=placement)
    activity.end_session(tmp_path)
    assert activity.run_command(tmp_path, "--agent queue") == f"`autoresearch run --agent queue{options}`"


@pytest.mark.slow  # a few seconds: the CLI's start, and a baseline of two fake runs
def test_a_loop_records_the_options_it_was_started_with_for_the_hint(workspace, monkeypatch, capsys) -> None:
    """`autoresearch run --workers 2 --timeout 300 --baseline-runs 2`: what finishes what it leaves in flight is that
    command again."""
    from autoresearch.cli import main
    from autoresearch.loop import activity, workers
    from autoresearch.loop import executor as executors

    class Local(FakeExecutor):  # each worker's LocalExecutor, as the CLI makes them
        def __init__(self, env=None):
            super().__init__(score)
            self.device_env = env

    monkeypatch.setattr(executors, "LocalExecutor", Local)
    monkeypatch.setattr(workers, "LocalExecutor", Local)
    args = ["run", "--agent", "queue", "--workers", "2", "--timeout", "300", "--baseline-runs", "2", "--plain"]
    assert main([*args, "--workspace", str(workspace.root)]) == 0, capsys.readouterr().err
    assert activity.run_command(workspace.state) == "`autoresearch run --workers 2 --timeout 300 --baseline-runs 2`"


def test_several_workers_refuse_to_start_where_runs_cannot_be_confined(workspace, monkeypatch) -> None:
    # One worker checks the workspace around each of its runs; several cannot while the others' runs go on.
    monkeypatch.setattr(sandbox, "unavailable_reason", lambda: "bubblewrap (bwrap) is not installed or not on PATH")
    loop = make_loop(workspace, FakeExecutor(score))
    with pytest.raises(LoopError, match=r"need confined runs.*bubblewrap") as raised:
        run_workers(loop, ScriptedAgent([set_lr(0.2)]), devices(None, 2, cores=2))
    assert "one worker" in raised.value.hint
    assert loop.ledger.all() == [] and not (workspace.state / "workers").exists()  # nothing started


def test_a_rejected_proposal_does_not_leave_a_worker_idle_nor_pause_the_agent(workspace):
    # Experiments train in pairs: while LR 0.9 trains, its repeat is rejected and the next proposal is asked
    # for at once, so the second GPU trains beside it (the pairs gate would time out otherwise).
    sched, fakes = scheduler(workspace, gate=pairs(4))
    sched.run(ScriptedAgent([set_lr(0.9), set_lr(0.9), set_lr(0.9), set_lr(0.2)]), max_experiments=4)
    rows = sched.loop.ledger.all()
    assert [r.kind for r in rows].count(Kind.PROPOSAL) == 2  # two repeats, rejected
    assert sched.loop.failure_pause(ScriptedAgent([])) == 0  # a rejection is no failure of the agent
    trained = [constant(s, "LR") for fake in fakes.values() for _, _, s in fake.runs]
    assert sorted(trained) == [0.05, 0.05, 0.2, 0.9]  # the baseline's seeds, then one of each


CONSTANTS = 'LR = 0.05  # rate\nBATCH = 8  # rows\nSEED = 42\n\nprint("train")\n'


def test_wins_on_adjacent_constants_merge_where_git_sees_a_conflict(workspace):
    win = CONSTANTS.replace("LR = 0.05", "LR = 0.2")
    best = CONSTANTS.replace("BATCH = 8", "BATCH = 16")
    assert workspace.git.merge_file(CONSTANTS, best, win)[1]  # git: adjacent lines conflict
    assert merge_constants(CONSTANTS, best, win) == CONSTANTS.replace("LR = 0.05", "LR = 0.2").replace(
        "BATCH = 8", "BATCH = 16"
    )
    assert merge_constants(CONSTANTS, CONSTANTS.replace("LR = 0.05", "LR = 0.1"), win) is None  # both set LR
    assert merge_constants(CONSTANTS, best, win.replace('"train"', '"go"')) is None  # not constants only
    # Both set BATCH to 16, the win LR too: its LR is what the best lacks.
    both = win.replace("BATCH = 8", "BATCH = 16")
    assert workspace.git.merge_file(CONSTANTS, best, both)[1]
    assert merge_constants(CONSTANTS, best, both) == both
    assert merge_constants(CONSTANTS, best.replace("BATCH = 16", "BATCH = 32"), both) is None  # BATCH 16 vs 32


# -- no worker waits for the baseline ----------------------------------------------------------------


def test_with_eight_workers_the_baseline_trains_four_seeds_at_once_and_the_noise_pools_them(workspace):
    together = threading.Barrier(4, timeout=10)  # a seed ends only once all four train at the same time
    sched, fakes = scheduler(workspace, gpus="0,1,2,3,4,5,6,7", baseline_runs=2, gate=lambda source: together.wait())
    sched.run(None)
    (baseline,) = sched.loop.ledger.all()
    assert baseline.status == Status.KEEP and sorted(baseline.run_indices) == list(range(4))
    assert "mean of 4 seeds" in baseline.reason
    seeds = [[constant(source, "SEED") for _, _, source in fake.runs] for fake in fakes.values()]
    assert sorted(seeds) == [[], [], [], [], [42], [43], [44], [45]]  # one seed per GPU, on half the GPUs
    noise = measured_noise(sched.loop.ledger.all())
    assert (noise.runs, noise.repeated) == (4, 1) and noise.noise == noise_of(baseline.run_values)
    # A seed on each of half the workers (of up to 4 below 8 workers), at least as configured, at most
    # BASELINE_SEEDS_MAX: the others train changes while the seeds train (the test below).
    seeds = {n: Scheduler(sched.loop, (sched.workers * 3)[:n]).baseline_seeds() for n in (1, 2, 3, 4, 6, 8, 12, 16, 24)}
    assert seeds == {1: 2, 2: 2, 3: 3, 4: 4, 6: 4, 8: 4, 12: 6, 16: 8, 24: 8} and BASELINE_SEEDS_MAX == 8
    # The cap is the scheduler's own (bench/simulate.py --baseline-seeds-max), never below the configured seeds.
    capped = {n: Scheduler(sched.loop, (sched.workers * 3)[:n], baseline_seeds_max=3).baseline_seeds() for n in (4, 16)}
    assert capped == {4: 3, 16: 3}
    assert Scheduler(sched.loop, sched.workers * 2, baseline_seeds_max=1).baseline_seeds() == 2


def measured_anew(loop) -> list[Experiment]:
    """The rows after the start that followed a crashed baseline (exp 1) and a change made from it (exp 2): both
    crashes, a new baseline kept, the branch on it."""
    rows = loop.ledger.all()
    assert [(e.id, e.kind, e.status) for e in rows] == [
        (1, Kind.BASELINE, Status.CRASH),
        (2, Kind.EXPERIMENT, Status.CRASH),
        (3, Kind.BASELINE, Status.KEEP),
    ]
    assert loop.git.head() == rows[2].commit == loop.best().commit
    return rows


def baseline_seed_42(source: str) -> bool:
    return constant(source, "SEED") == 42 and constant(source, "LR") == 0.05


def test_a_worker_the_baseline_leaves_idle_trains_a_change_of_its_commit_judged_once_the_baseline_is(workspace):
    # Four seeds on half of eight GPUs, a change on another from the start; the first seed ends only once it has.
    def gate(source: str) -> None:
        if baseline_seed_42(source):
            wait_until(lambda: (row := Ledger(workspace.root).get(2)) is not None and row.run_values)

    sched, _ = scheduler(workspace, gpus="0,1,2,3,4,5,6,7", gate=gate)
    agent = ScriptedAgent([set_lr(0.2)])
    sched.run(agent, max_experiments=1)
    baseline, change = sched.loop.ledger.all()
    assert agent.seen[0].best_bpb is None and agent.seen[0].noise is None  # asked while the baseline trained
    assert "the baseline is still being measured" in ledger_summary(agent.seen[0])
    assert change.parent == baseline.commit and change.status == Status.KEEP and len(change.run_values) == 1
    assert spans_of(change)[0].end <= max(s.end for s in spans_of(baseline))  # it ended first...
    assert change.finished_at >= baseline.finished_at  # ...and was judged after it, with its noise:
    margin = margin_of(noise_of(baseline.run_values))  # the noise of its four seeds
    assert f"vs best {baseline.val_bpb:.6f}" in change.reason and f"margin {margin:.6f}" in change.reason
    assert sched.loop.git.head() == change.commit and not sched.held


def test_a_change_held_beside_a_baseline_that_crashes_on_a_seed_is_never_judged_against_the_seeds_that_ended(workspace):
    """Red team: on 8 GPUs a change trains beside the baseline's 4 seeds from the start, and is held once it ends. A
    train.py that crashes on one seed (45) is no baseline: the loop stops on it, the held change far better than
    the 3 seeds that ended is not judged against them, and the next start crashes it, to be proposed again."""
    baseline_seed = lambda source: constant(source, "LR") == 0.05

    def crashes(source: str):
        if baseline_seed(source) and constant(source, "SEED") == 45:
            wait_until(lambda: (row := Ledger(workspace.root).get(2)) is not None and row.run_values)  # held by now
            return Outcome(RunEnd.CRASH, None, "RuntimeError: CUDA error", "Traceback", 1.0)
        return score(source)

    sched, _ = scheduler(workspace, gpus=",".join(map(str, range(8))), score=crashes)
    with pytest.raises(LoopError, match=r"the baseline train\.py failed"):
        sched.run(ScriptedAgent([set_lr(0.2)]), max_experiments=1)
    baseline, change = Ledger(workspace.root).all()
    assert baseline.status == Status.CRASH and baseline.val_bpb is None
    assert not change.status.final and change.run_values == [1.05]  # held, not judged: no verdict on 3 seeds
    assert workspace.git.head() == baseline.commit  # nothing kept
    again, _ = scheduler(workspace, gpus=",".join(map(str, range(8))))  # the crash gone (a flaky seed)
    again.run(None)
    rows = measured_anew(again.loop)
    assert "made from the baseline exp 1, which crashed" in rows[1].reason and "proposed again" in rows[1].reason
    assert len(rows[2].run_values) == 4


def test_a_change_held_for_the_baselines_verdict_when_the_driver_dies_is_judged_once_after_the_restart(workspace):
    release = threading.Event()  # the baseline's first seed never reports to the dead driver
    gate = lambda source: baseline_seed_42(source) and release.wait(30)
    sched, _ = scheduler(workspace, gpus="0,1,2", baseline_runs=3, gate=gate)
    try:
        sched.start_baseline()
        for worker in sched.workers:
            sched.dispatch(worker, sched.next_job())  # seeds 42 (held), 43 and 44
        sched.handle_next()
        sched.handle_next()
        sched.propose(ScriptedAgent([set_lr(0.2)]))  # made from the baseline's commit while seed 42 trains
        sched.dispatch(next(w for w in sched.workers if w.job is None), sched.next_job())
        sched.handle_next()  # its run ends: held, in flight, when the driver is SIGKILLed
        assert list(sched.held) == [2] and sched.loop.ledger.get(2).status == Status.RUNNING
        again, fakes = scheduler(workspace, gpus="0,1,2", baseline_runs=3)  # `autoresearch run` again
        again.run(None)
    finally:
        release.set()
    baseline, change = again.loop.ledger.all()
    assert baseline.status == Status.KEEP and sorted(baseline.run_indices) == [0, 1, 2]
    assert change.status == Status.KEEP and change.parent == baseline.commit and len(change.run_values) == 1
    trained = [constant(source, "SEED") for fake in fakes.values() for _, _, source in fake.runs]
    assert trained == [42]  # the seed that had not ended; the change's run was adopted, not trained again
    assert again.loop.git.head() == change.commit
    assert (baseline.attempts, change.attempts) == (1, 0)  # seed 42 was interrupted once; the change was not


@dataclass
class AnsweringAgent(ScriptedAgent):
    """An agent that only answers (as the API agents do), after `think` seconds: asked on threads, several at once."""

    answers_only = True
    think: float = 0.0
    hold: callable = lambda description: None  # called on the ask's thread with the edit's description
    at_once: list = field(default_factory=lambda: [0, 0])  # [asks now, most at once]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def propose(self, context):
        with self.lock:
            self.at_once[0] += 1
            self.at_once[1] = max(self.at_once)
        try:
            time.sleep(self.think)
            proposal = super().propose(context)
            self.hold(proposal.description)
            return proposal
        finally:
            with self.lock:
                self.at_once[0] -= 1


@pytest.mark.slow
def test_an_agent_that_only_answers_is_asked_once_per_idle_worker_at_once(workspace):
    together, seeds = threading.Barrier(4, timeout=10), []

    def gate(source: str) -> None:  # the baseline's 4 seeds end together: then 4 workers are idle at once
        seeds.append(source)
        if len(seeds) <= 4:
            together.wait()

    sched, fakes = scheduler(workspace, gpus="0,1,2,3", baseline_runs=4, gate=gate)
    agent = AnsweringAgent([set_lr(0.1), set_lr(0.15), set_lr(0.2), set_lr(0.3)], think=1.0)
    sched.run(agent, max_experiments=4)
    assert agent.at_once[1] == 4  # four asks in flight together, not one after the other
    # Each is told how many others are being written at that moment, and asked for a less obvious idea.
    assert sorted(c.unseen for c in agent.seen) == [0, 1, 2, 3]
    task = build_prompt(next(c for c in agent.seen if c.unseen == 2)).task
    assert "2 other proposals are being written at this moment" in task and "unlikely to be one of theirs" in task
    rows = sched.loop.ledger.all()
    assert sorted(r.description for r in rows[1:]) == ["LR 0.1", "LR 0.15", "LR 0.2", "LR 0.3"]
    assert all(r.status.final and r.kind == Kind.EXPERIMENT for r in rows[1:]) and len(agent.seen) == 4
    trained = sorted(constant(s, "LR") for fake in fakes.values() for _, _, s in fake.runs)
    assert trained == [0.05] * 4 + [0.1, 0.15, 0.2, 0.3]
    assert sched.loop.best().id > 1 and sched.loop.ws.git.changed_paths() == set()  # a win kept, train.py the best's


def test_an_answer_that_arrives_after_another_win_was_kept_is_made_on_that_best_before_it_trains(workspace):
    def hold(description: str) -> None:  # these answers come back only once LR 0.2 was kept
        if not description.startswith("LR 0.2"):
            wait_until(lambda: any(r.status == Status.KEEP for r in Ledger(workspace.root).all()[1:]))

    def clash(ctx):  # LR's line rewritten, comment and all: no constant merge can make it on LR 0.2
        line = "LR = 0.05  # Adam learning rate (0.001-1)"
        return "LR 0.15", ctx.train_py.replace(line, "LR = 0.15  # Adam learning rate, lower (0.001-1)")

    sched, _ = scheduler(workspace, gpus="0,1,2")  # three asks at once once the baseline's 3 seeds are judged
    sched.run(AnsweringAgent([set_lr(0.2), betas, clash], hold=hold), max_experiments=3)
    rows = {r.description: r for r in sched.loop.ledger.all()}
    lr, late, clash = rows["LR 0.2"], rows["Adam betas 0.8, 0.9"], rows["LR 0.15"]
    assert lr.status == Status.KEEP and late.parent == lr.commit  # not trained on the best it was asked on
    assert "asked on exp 1, made on exp 2 to train" in late.reason and late.merged_from == 0
    assert BETAS in late.source and constant(late.source, "LR") == 0.2 and late.status == Status.KEEP
    # A change that cannot be made on the new best trains on its own base, and is judged as a stale win.
    assert clash.parent == rows["baseline"].commit and clash.status == Status.DISCARD
    assert "conflicts with exp" in clash.reason and "against its base exp 1" in clash.reason
    assert sched.loop.git.head() == late.commit and sched.loop.ws.git.changed_paths() == set()


def test_an_ask_on_a_thread_that_fails_is_recorded_and_a_bug_in_the_agent_stops_the_loop(workspace):
    sched, _ = scheduler(workspace)
    sched.run(AnsweringAgent([set_lr(0.2)]), max_experiments=2)  # the second ask: "script exhausted"
    rows = sched.loop.ledger.all()
    failed = next(r for r in rows if r.kind == Kind.PROPOSAL)
    assert failed.status == Status.CRASH and "script exhausted" in failed.reason
    assert any(r.description == "LR 0.2" and r.status == Status.KEEP for r in rows)

    def broken(context):
        raise KeyError("a bug in the agent")

    with pytest.raises(KeyError, match="a bug in the agent"):
        sched.run(AnsweringAgent([broken]), max_experiments=1)


@pytest.mark.parametrize("gpus", ["0,1", "0"])
@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_a_worker_about_to_be_free_is_asked_for_ahead_with_several_workers_only(workspace, gpus: str):
    # Runs take 0.3 s, the agent 0.1 s: once both are known, a worker's next proposal is asked for ~0.1 s
    # before its run ends, so that it is there when the worker is free. One worker is never asked for ahead.
    sched, _ = scheduler(workspace, gpus=gpus, gate=lambda source: time.sleep(0.3))
    asked: list[int] = []
    agent = AnsweringAgent([set_lr(v) for v in (0.1, 0.15, 0.2, 0.25, 0.3)], think=0.1)
    real_propose = agent.propose

    def propose(context):
        asked.append(sum(w.job is not None for w in sched.workers))  # the workers training as the ask starts
        return real_propose(context)

    agent.propose = propose
    sched.run(agent, max_experiments=5)
    rows = sched.loop.ledger.all()
    assert len([r for r in rows if r.kind == Kind.EXPERIMENT]) == 5 and all(r.status.final for r in rows)
    workers = len(sched.workers)
    assert (max(asked) == workers) == (workers > 1)  # asked while every worker trained: ahead, with two only


def test_a_fatal_answer_after_another_keep_stops_the_loop_with_the_best_in_the_workspace(workspace):
    def revoked(context):  # the key stops working while LR 0.2 trains and is kept
        wait_until(lambda: any(r.status == Status.KEEP for r in Ledger(workspace.root).all()[1:]))
        raise ProposalError("the API key was revoked", fatal=True)

    sched, _ = scheduler(workspace)
    with pytest.raises(LoopError, match="cannot work: the API key was revoked"):
        sched.run(AnsweringAgent([set_lr(0.2), revoked]), max_experiments=2)
    assert sched.loop.best().description == "LR 0.2"
    assert sched.loop.ws.git.changed_paths() == set()  # train.py is the best's, not the one the ask was made on


def test_asks_that_fail_together_count_as_one_failure_for_the_back_off(workspace):
    def down(context):
        raise ProposalError("the server is down")

    sched, _ = scheduler(workspace, gpus="0,1,2,3")
    sched.run(AnsweringAgent([down] * 4, think=0.3), max_experiments=4)  # four asks out at once, all failing
    rows = [r for r in sched.loop.ledger.all() if r.kind == Kind.PROPOSAL]
    assert len(rows) == 4 and all("the server is down" in r.reason for r in rows)
    assert sched.answers.failures == 1 and sched.propose_after == 0.0  # one round: asked again at once


def test_a_waiting_answer_is_not_made_on_a_best_newer_than_itself(workspace):
    # One worker: the answer (exp 2) waits while a merge's re-validation (exp 3, queued first) trains and is
    # kept. Made on exp 3 and kept, exp 2 would sit on top of a best with a higher id: the best is the newest
    # kept row, so the branch and the best would part, and a restart would refuse.
    sched, _ = scheduler(workspace, gpus="0")
    sched.run(None)  # the baseline
    loop, base = sched.loop, sched.loop.best()
    answer = loop.record(Proposal("Adam betas", betas(loop.context())[1]), "a", "m", base=base)
    sched.asked.add(answer.id)
    sched.activate(answer)
    merged = loop.record(Proposal("merged: LR 0.2", with_constants(base.source, LR=0.2)), "a", "m", base=base)
    sched.activate(merged, front=True)
    sched.run(None)
    rows = {e.id: e for e in loop.ledger.all()}
    assert rows[merged.id].status == Status.KEEP and rows[answer.id].parent == base.commit  # trained on its base
    assert loop.git.head() == loop.best().commit
    scheduler(workspace, gpus="0")[0].loop.recover_branch()  # a restart finds the branch where the best is


@pytest.mark.slow
def test_an_idle_worker_is_asked_again_when_the_agents_pause_ends_not_when_a_run_does(workspace, monkeypatch):
    monkeypatch.setattr(asking, "PAUSE_FIRST_S", 0.15)
    long_run_ended, asked = [], []

    def gate(source: str) -> None:
        if constant(source, "LR") == 0.3:  # the other worker's run: 2 s
            time.sleep(2.0)
            long_run_ended.append(time.monotonic())

    def down(context):
        time.sleep(0.1)
        raise ProposalError("the server is down")

    def after_the_pause(context):
        asked.append(time.monotonic())
        return set_lr(0.15)(context)

    sched, _ = scheduler(workspace, gate=gate)
    sched.run(AnsweringAgent([set_lr(0.3), down, down, down, down, after_the_pause]), max_experiments=6)
    assert asked and asked[0] < long_run_ended[0] - 0.5  # asked once the pause ended, not once the 2 s run did


def test_an_edit_held_for_a_stopped_try_is_not_lost_to_the_agents_of_several_workers(workspace):
    """`try` was killed while it trained something else first; the edit it held comes back to train.py, which an
    agent's turns would overwrite: with an agent, several workers refuse to start over it, as one worker does.
    Submissions leave train.py alone: with them the loop goes on."""
    sched, _ = scheduler(workspace)
    sched.run(None)  # the baseline
    edit = with_constants(workspace.read_train_py(), LR=0.2)
    (workspace.state / "held-train.py").write_text(edit)  # as the kill left it
    with pytest.raises(LoopError, match=r"train\.py has uncommitted changes"):
        scheduler(workspace)[0].run(ScriptedAgent([set_lr(0.3)]), max_experiments=1)
    assert workspace.read_train_py() == edit and len(Ledger(workspace.root).all()) == 1
    scheduler(workspace)[0].run(None)
    assert workspace.read_train_py() == edit


def test_a_train_py_the_loop_wrote_and_a_kill_left_is_put_back_before_an_agent_works(workspace):
    """An agent's turn edits the workspace's train.py, so it must start from the best, not from what a kill left
    there: a seeded run's train.py of an experiment the start crashes (a one-worker loop killed twice in its
    re-run), or the old best's where the branch had moved on (a kill between the two steps of moving it)."""
    from autoresearch.loop.recovery import seeded

    sched, _ = scheduler(workspace)
    sched.run(None)  # the baseline
    source = with_constants(workspace.read_train_py(), LR=0.9)
    baseline = pending_experiment(workspace, sched.loop, attempts=2, source=source).parent
    workspace.write_train_py(seeded(source, 1))
    scheduler(workspace)[0].run(ScriptedAgent([set_lr(0.2)]), max_experiments=1)
    rows = Ledger(workspace.root).all()
    assert [(e.id, e.status) for e in rows] == [(1, Status.KEEP), (2, Status.CRASH), (3, Status.KEEP)]
    assert workspace.read_train_py() == rows[2].source and workspace.git.status() == {}
    workspace.write_train_py(workspace.git.show(baseline, "train.py"))  # the branch on exp 3, train.py the baseline's
    scheduler(workspace)[0].run(ScriptedAgent([]), max_experiments=0)
    assert workspace.read_train_py() == rows[2].source


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_stopping_kills_every_workers_run_at_once_not_one_after_the_other(workspace):
    """Ctrl-C with a run on each of 8 GPUs: each kill waits for its evaluator's end (seconds on a GPU), and the
    workers were stopped one after the other, so the waits added up past the 10 s a Ctrl-C should take."""
    sched, _ = scheduler(workspace, gpus="0,1,2,3,4,5,6,7")
    ended: list[float] = []

    def slow_stop() -> None:
        time.sleep(0.5)  # the evaluator's end
        ended.append(time.monotonic())

    for worker in sched.workers:
        worker.stop = slow_stop
    start = time.monotonic()
    sched.stop_all()
    assert len(ended) == 8 and max(ended) - start < 2.0  # one after the other: 4 s


def test_a_ray_run_stopped_before_its_task_is_sent_is_cancelled_as_it_is_sent(monkeypatch):
    """Ctrl-C while a Ray run's request was made (its data shipped, seconds): stop() found no task to cancel, and the
    task then trained its whole budget while the loop waited to stop."""
    from autoresearch.loop import ray_executor

    class FakeRay:  # ray itself, and the task a RayExecutor sends
        def __init__(self):
            self.cancelled: list[str] = []

        def remote(self, spec, request):
            return "task 1"

        def cancel(self, ref, force=False):
            self.cancelled.append(ref)

        def wait(self, refs, timeout):  # a task ends once cancelled, else trains on
            return (refs, []) if set(refs) <= set(self.cancelled) else ([], refs)

        def get(self, ref):
            return "cancelled" if ref in self.cancelled else "trained"

    fake = FakeRay()
    monkeypatch.setattr(ray_executor, "ray_module", lambda: fake)
    monkeypatch.setattr(ray_executor.RayExecutor, "__init__", lambda self: None)
    executor = ray_executor.RayExecutor()
    executor._task, executor._stopped = fake, threading.Event()
    executor.stop()  # nothing sent yet
    assert executor._ask(None, None) == "cancelled" and fake.cancelled == ["task 1"]


def test_with_workers_a_baseline_the_loop_was_killed_in_twice_says_so_and_blames_no_train_py(workspace):
    sched, _ = scheduler(workspace)
    sched.loop.ledger.update(sched.loop.new_baseline().id, attempts=2)  # as two kills in its seeds' runs leave it
    with pytest.raises(LoopError) as stopped:
        sched.run(ScriptedAgent([set_lr(0.2)]), max_experiments=1)
    said = str(stopped.value) + stopped.value.hint
    assert "killed 2 times while the baseline (exp 1) trained" in said and "fix train.py" not in said
    assert sched.loop.ledger.get(1).status == Status.CRASH


def test_a_start_says_it_takes_up_a_queued_experiment_the_killed_loop_left_as_it_resumes_a_running_one(workspace):
    """BROKE, fixed (a README walk-through): killed with two experiments in flight, a submission queued and one
    training, the next start said only "resuming experiment" of the one training, though both were trained."""
    sched, _ = scheduler(workspace, inbox=True)
    sched.run(None)  # the baseline
    loop, best = sched.loop, sched.loop.best()
    for lr, status in ((0.2, Status.RUNNING), (0.4, Status.QUEUED)):
        source = with_constants(workspace.read_train_py(), LR=lr)
        loop.record(Proposal(f"LR {lr}", source, Usage()), SUBMITTER, "", base=best, status=status)
    events: list[str] = []
    again, _ = scheduler(workspace, inbox=True, events=events)
    again.run(None)
    assert "resuming experiment 2: LR 0.2" in events
    assert "taking up experiment 3, queued, not started: LR 0.4" in events
    assert all(row.status.final for row in again.loop.ledger.all())


def test_a_submission_made_from_a_baseline_that_crashed_is_a_crash_to_submit_again_not_kept_behind_the_next(workspace):
    """A submission queued while the baseline trained, which the loop was then killed in twice (bench/kill_fuzz.py
    --submit found it): the next start measures a new baseline, a later row. Judged against it and kept, the older
    row was no best (the newest kept row is), and the branch was left on its commit: the start after refused, "the
    branch is at ..., but the best experiment is ...". It is a crash whose reason says to submit it again."""
    sched, _ = scheduler(workspace, inbox=True)
    loop = sched.loop
    baseline = loop.new_baseline()
    source = with_constants(workspace.read_train_py(), LR=0.2)  # better than the baseline by far
    loop.record(Proposal("LR 0.2", source, Usage()), SUBMITTER, "", base=baseline, status=Status.QUEUED)
    loop.ledger.update(baseline.id, attempts=2)  # as two kills in its seeds' runs leave it
    with pytest.raises(LoopError, match="killed 2 times while the baseline"):
        sched.run(None)
    again, _ = scheduler(workspace, inbox=True)
    again.run(None)
    rows = measured_anew(again.loop)
    assert "baseline exp 1" in rows[1].reason and "submit it again" in rows[1].reason
    third, _ = scheduler(workspace, inbox=True)
    third.run(None)  # starts: the branch is where the best is


@pytest.mark.slow  # over half a second
def test_a_ledger_rebuilt_without_the_baselines_runs_measures_it_again_before_the_workers_judge(workspace):
    """`rm -rf .autoresearch`, then `rebuild-ledger`: the baseline's seeds are gone. Several workers stopped at their
    first verdict ("no noise measured yet", helper 128); the scheduler trains the baseline's seeds again first."""
    import shutil

    from autoresearch.loop.rebuild import rebuild

    sched, _ = scheduler(workspace)
    sched.run(ScriptedAgent([set_lr(0.2)]), max_experiments=1)
    sched.loop.ledger.close()
    shutil.rmtree(workspace.state)
    rebuild(workspace.root, workspace.git)
    sched, _ = scheduler(workspace)
    sched.run(ScriptedAgent([set_lr(0.3)]), max_experiments=1)
    rows = sched.loop.ledger.all()
    assert len(rows[0].run_values) == 2 and "measured again" in rows[0].reason, rows[0]
    assert rows[-1].description == "LR 0.3" and rows[-1].status in (Status.KEEP, Status.DISCARD), rows[-1].reason
    assert sched.loop.ws.git.changed_paths() == set()
