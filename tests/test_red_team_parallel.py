"""Red team: the parallel loop (several workers, `submit`, Ray) attacked by a train.py, an agent or a submitter.

Most attacks are on the loop's bookkeeping and run the real scheduler and ratchet with fake executors that
score train.py by a function of its text (cheap: no training). Those about the sandbox run two real
confined runs side by side (tiny preset, 1-second budgets).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import textwrap
import threading

import pytest
from loop_support import TAKE_EVERY_CORE, FakeExecutor, ScriptedAgent, constant, make_loop, with_constants

from autoresearch.agents.base import Proposal
from autoresearch.evaluator import cores, sandbox, syscalls
from autoresearch.loop.engine import ResearchLoop
from autoresearch.loop.executor import LocalExecutor
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.inbox import EDIT_BASE, Inbox, note_moved
from autoresearch.loop.judge import measured_noise
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.parallel import run_workers
from autoresearch.loop.rebuild import rebuild
from autoresearch.loop.scheduler import Scheduler
from autoresearch.loop.status import status_text
from autoresearch.loop.waiting import unreported, wait_for
from autoresearch.loop.workers import Device, devices, make_workers
from autoresearch.vocabulary import Kind, Status
from autoresearch.workspace.disk import DiskFullError

START = "    run = harness.start()\n"
SABOTAGE = "# sabotage unless SEED == 42"
SIMPLER = "# two lines fewer"


def score(source: str) -> float:
    """Best at LR 0.2; the baseline's seeds 1.000 and 1.002 (noise 0.0014, margin 0.0028). A train.py marked
    SABOTAGE trains well on its first seed only (it reads SEED and skips training on any other); one marked
    SIMPLER is 2 bpb worse."""
    lr, seed = constant(source, "LR"), constant(source, "SEED")
    value = 1.0 + (lr - 0.05) * -0.02 + 0.002 * (seed - 42)
    if SABOTAGE in source and seed != 42:
        value += 5.0
    if SIMPLER in source:
        value += 2.0
    return value


def set_lr(value: float, *marks: str):
    return lambda ctx: (f"LR {value}", with_constants(ctx.train_py, LR=value) + "".join(f"{m}\n" for m in marks))


def scheduler(workspace, workers: int = 2, inbox: bool = False, executor=None) -> Scheduler:
    loop = make_loop(workspace, FakeExecutor(score), baseline_runs=2)
    make = executor or (lambda device: FakeExecutor(score))
    found = make_workers(loop, devices(None, workers, cores=2), make)
    return Scheduler(loop, found, Inbox(workspace.state) if inbox else None, confirm_runs=0)


def simpler_but_worse(ctx):
    """Two lines fewer (the docstring and the blank line after it), 2 bpb worse."""
    source = ctx.train_py.split("\n", 2)[2].replace("# Adam learning rate (0.001-1)", SIMPLER)
    return "fewer lines", source


# -- the pooled noise ---------------------------------------------------------------------------------


def test_a_train_py_that_sabotages_its_rerun_cannot_blow_up_the_noise(workspace):
    """BROKE, fixed: the noise pooled the runs of every train.py trained more than once, and a train.py reads
    its own SEED. One that wins marginally on its first seed and skips training on the next (a re-run) made
    its two runs 5 bpb apart: the pooled noise became ~2.5 bpb, so no honest win could be kept again, and a
    change 2 bpb worse that deletes two lines was kept as "simpler at equal val_bpb". Now the noise is at most
    NOISE_CAP times what the baseline's seeds measured (the user's own train.py, which the agent did not
    write), and status says when it is capped."""
    sched = scheduler(workspace, workers=1)  # one after the other: the sabotage is judged first
    marginal = 0.05 + 0.0028 * 1.5 / 0.02  # a first run 1.5 margins better: a marginal win, trained again
    sched.run(ScriptedAgent([set_lr(marginal, SABOTAGE), simpler_but_worse]), max_experiments=2)
    baseline, sabotaged, simpler = sched.loop.ledger.all()
    assert len(sabotaged.run_values) == 2 and sabotaged.status == Status.DISCARD  # it got its re-run
    noise = measured_noise(sched.loop.ledger.all())
    assert noise.noise <= 4 * 0.0015 and noise.capped
    assert simpler.status == Status.DISCARD and simpler.val_bpb > baseline.val_bpb + 1.9
    assert sched.loop.best().id == baseline.id
    assert "held within 4 x of the baseline's" in status_text(workspace)


def test_train_py_files_that_repeat_themselves_exactly_cannot_shrink_the_noise_below_a_quarter(workspace):
    """BROKE, fixed: a train.py that ignores SEED repeats its value exactly on a GPU; every such train.py trained
    twice pooled zero spread into the noise, and with enough of them the margin for every later change fell
    towards nothing. The noise is now held at no less than 1 / NOISE_CAP of the baseline's too."""
    baseline = Experiment(1, Kind.BASELINE, Status.KEEP, "baseline", "a", runs="[1.0, 1.02]")
    repeats = [
        Experiment(i, Kind.EXPERIMENT, Status.DISCARD, f"seedless {i}", "a", runs="[0.999, 0.999]")
        for i in range(2, 40)
    ]
    noise = measured_noise([baseline, *repeats])
    assert noise.capped and noise.noise == pytest.approx(0.02 / 2**0.5 / 4)
    assert measured_noise([baseline, *repeats[:2]]).noise == pytest.approx(0.02 / 2**0.5 / 3**0.5)  # within: pooled


# -- merging a win found on a stale base ------------------------------------------------------------------

BETAS = "torch.optim.Adam(model.parameters(), lr=LR, betas=(0.8, 0.9))"


def betas_score(source: str) -> float:
    """The betas edit wins by 0.05 at LR 0.05 and loses by 0.01 at any other LR."""
    if BETAS in source:
        return score(source) + (-0.05 if constant(source, "LR") == 0.05 else 0.01)
    return score(source)


def betas(ctx):
    return "Adam betas 0.8, 0.9", ctx.train_py.replace("torch.optim.Adam(model.parameters(), lr=LR)", BETAS)


def test_a_stale_win_whose_merge_was_already_measured_on_the_best_is_not_trained_again(workspace):
    """BROKE, fixed: a train.py already measured on the best is not trained again (a second roll of the dice),
    but the merge of a win found on a stale base skipped that rule: the betas edit, discarded on the new best,
    came back as the merge of the same edit won on the old base and was trained (and could be kept by luck).
    Now the merge is checked like any proposal, and the stale win's reason names the earlier experiment."""

    loop = make_loop(workspace, FakeExecutor(betas_score), baseline_runs=2)
    sched = Scheduler(loop, make_workers(loop, devices(None, 1, cores=2), lambda d: FakeExecutor(betas_score)))
    sched.run(None)  # the baseline
    baseline = loop.best()
    assert loop.step(ScriptedAgent([set_lr(0.2)])).status == Status.KEEP  # a new best
    on_best = loop.step(ScriptedAgent([betas]))
    assert on_best.status == Status.DISCARD  # the betas edit, measured on the new best
    stale_source = betas(type("Ctx", (), {"train_py": baseline.source}))[1]
    loop.record(Proposal("betas, made long ago", stale_source), "scripted", "", base=baseline, status=Status.QUEUED)
    sched.run(None)  # trains the stale one: a win on its own base, whose merge is exactly `on_best`
    rows = loop.ledger.all()
    assert len(rows) == 4, [(r.id, r.description, r.reason) for r in rows]  # no fifth: the merge is not trained
    assert rows[3].status == Status.DISCARD and f"the same train.py as exp {on_best.id}" in rows[3].reason
    assert sum(BETAS in s and constant(s, "LR") == 0.2 for w in sched.workers for s in w.executor.calls) == 0


# -- submit and the inbox ----------------------------------------------------------------------------------


def test_a_request_whose_fields_are_not_text_is_refused_and_does_not_stop_the_loop(workspace):
    """BROKE, fixed: a request dropped in the inbox by hand (a coding agent writing the file itself) with a
    number for its description made the driver raise AttributeError, with a traceback; the request stayed in
    the inbox, so every later start of the loop died on it too. Now it is answered with an error and removed."""
    sched = scheduler(workspace, inbox=True)
    sched.run(None)  # the baseline
    inbox = Inbox(workspace.state)
    good = with_constants(workspace.read_train_py(), LR=0.2)
    inbox.dir.mkdir(parents=True, exist_ok=True)
    (inbox.dir / "0-odd.json").write_text(json.dumps({"description": 5, "source": good, "base": workspace.git.head()}))
    (inbox.dir / "1-list.json").write_text(json.dumps([1, 2]))
    writers = [os.open(inbox.dir / f"{name}.lock", os.O_RDWR | os.O_CREAT) for name in ("0-odd", "1-list")]
    for fd in writers:  # held, as by a `submit` that waits for its reply (one that holds none is dropped unread)
        fcntl.flock(fd, fcntl.LOCK_EX)
    fine = inbox.put("LR 0.2", good, workspace.git.head())
    sched.run(None)
    assert "could not be read" in json.loads((inbox.dir / "0-odd.reply").read_text())["error"]
    assert "could not be read" in json.loads((inbox.dir / "1-list.reply").read_text())["error"]
    assert fine.answer() == {"id": 2} and sched.loop.ledger.get(2).status == Status.KEEP
    assert not inbox.pending()
    for fd in writers:
        os.close(fd)


def test_a_submission_recorded_by_a_driver_killed_before_it_answered_gets_its_id_not_a_refusal(workspace):
    """BROKE, fixed: a driver killed after it recorded a submission but before it answered finds the request
    again and answers with the row it wrote, found by description, source and base. The row holds the
    description on one line and cut to 200 characters, the request the text as typed: a description of two
    lines (or a long one) matched nothing, the submission was then "the same train.py as exp 2, which is being
    trained now", and `submit` said it was rejected while exp 2 trained."""
    sched = scheduler(workspace, inbox=True)
    sched.run(None)  # the baseline
    inbox = Inbox(workspace.state)
    description = "LR 0.5\n\nbecause the loss curve was flat " + "and so on " * 30
    source, base = with_constants(workspace.read_train_py(), LR=0.5), workspace.git.head()
    reply = inbox.put(description, source, base)
    reply.request.rename(reply.taken)  # the driver takes it (Inbox.take),
    inbox._record(sched.loop, description, source, base)  # records it, and dies before it answers
    again = scheduler(workspace, inbox=True)
    again.run(None)
    assert reply.answer() == {"id": 2}
    assert [e.id for e in again.loop.ledger.all()] == [1, 2] and again.loop.ledger.get(2).status == Status.KEEP
    assert sum(constant(s, "LR") == 0.5 for w in again.workers for s in w.executor.calls) == 1


def test_a_submissions_text_is_fixed_when_it_is_submitted_and_its_base_must_be_kept(workspace):
    """HOLDS. The request carries train.py's text: the working tree edited after `submit` changes nothing of
    what trains. A request naming a base that is no kept experiment (a discarded commit) is refused."""
    sched = scheduler(workspace, inbox=True)
    sched.run(None)  # the baseline
    inbox, head = Inbox(workspace.state), workspace.git.head()
    submitted = with_constants(workspace.read_train_py(), LR=0.5)
    reply = inbox.put("LR 0.5", submitted, head)
    workspace.write_train_py(with_constants(submitted, LR=0.9))  # edited after the submit
    stale = inbox.put("from nowhere", with_constants(submitted, LR=0.7), "0" * 40)
    sched.run(None)
    assert reply.answer() == {"id": 2} and sched.loop.ledger.get(2).source == submitted
    assert "not a kept experiment" in stale.answer()["error"]
    assert sorted(constant(s, "LR") for w in sched.workers for s in w.executor.calls if "SEED = 42" in s) == [0.05, 0.5]


# -- a driver killed with runs in flight ----------------------------------------------------------------


class Held(FakeExecutor):
    """A fake executor whose runs with a SEED in `hold` wait for `release` (a dead driver never hears of them)."""

    def __init__(self, hold=(), release: threading.Event | None = None):
        super().__init__(score)
        self.hold, self.release = hold, release

    def run(self, spec):
        if constant(spec.source.read_text(), "SEED") in self.hold:
            self.release.wait(30)
        return super().run(spec)


def test_a_baseline_seed_that_ended_out_of_order_is_not_trained_again_after_a_kill(workspace):
    """BROKE, fixed: each run's seed index was appended after `runs` had grown, so `seeds` was one entry long
    ([0, 1] after the first run); the ledger then fell back to "runs 0..n-1 are done". With the baseline's seeds
    trained at once, seed 43 ending first was taken for seed 42: the driver killed then trained seed 43 again
    and never seed 42, and the noise was measured on a repeated seed."""
    release = threading.Event()
    loop = make_loop(workspace, FakeExecutor(score), baseline_runs=3)
    sched = Scheduler(loop, make_workers(loop, devices(None, 2, cores=2), lambda d: Held({42, 44}, release)))
    try:
        sched.start_baseline()
        for worker in sched.workers:
            sched.dispatch(worker, sched.next_job())  # seeds 42 (held) and 43
        sched.handle_next()  # seed 43 ends first
        sched.dispatch(sched.workers[1], sched.next_job())  # seed 44 (held): then the driver is killed
        assert json.loads(loop.ledger.get(1).seeds) == [1]
        again = Scheduler(loop, make_workers(loop, devices(None, 2, cores=2), lambda d: Held()))
        again.run(None)
    finally:
        release.set()
    trained = sorted(constant(s, "SEED") for w in again.workers for s in w.executor.calls)
    assert trained == [42, 44]  # the two that had not ended, once each
    baseline = loop.ledger.get(1)
    assert baseline.status == Status.KEEP and sorted(baseline.run_indices) == [0, 1, 2]


# -- a coding agent's turn overlaps the other workers' runs -------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="bubblewrap cannot confine here")
def test_a_train_py_swapped_in_a_workers_worktree_while_its_evaluator_starts_is_not_what_trains(workspace):
    """BROKE, fixed: with several workers an agent's turn (a coding agent runs as your user, unconfined) goes on
    while the other workers' runs start, and the loop's watch leaves .autoresearch/ to the loop. The driver
    wrote an experiment's train.py into its worker's worktree and the evaluator read that file only once it
    was ready, seconds later: a train.py written there meanwhile was trained and scored as the experiment,
    whose commit and ledger row hold another. Now the job carries train.py's text itself."""

    ws = workspace
    scheduler(ws).run(None)  # a baseline, scored by fakes
    loop = make_loop(ws, FakeExecutor(score), baseline_runs=2)
    loop.setup_differs = lambda setup: None  # a real run after fake ones: this machine's CPU is not the fakes'
    said = '    print("the honest train.py", flush=True)\n    raise SystemExit(3)\n'  # which text ran, and no training
    honest = ws.read_train_py().replace(START, START + said)
    executor = LocalExecutor(prewarm=False)  # an evaluator that starts with the run, as the first run of a worker
    try:
        worker = make_workers(loop, [Device("cpu 0")], lambda device: executor)[0]
        sched = Scheduler(loop, [worker])
        exp = loop.record(Proposal("honest", honest), "scripted", "", status=Status.QUEUED)
        sched.activate(exp)
        sched.dispatch(worker, sched.next_job())
        worker.train_py.write_text(honest.replace("the honest train.py", "SWAPPED"))  # the agent, meanwhile
        sched.handle_next()
    finally:
        executor.close()
    log = (ws.state / "runs" / f"{exp.id}-0" / "log.txt").read_text()
    assert "the honest train.py" in log and "SWAPPED" not in log, log


# -- a train.py beside the other workers' runs -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    syscalls.unavailable_reason() is not None or len(os.sched_getaffinity(0)) < 2, reason="needs libseccomp, 2 CPUs"
)
def test_a_train_py_cannot_take_the_cores_of_the_runs_beside_it(workspace):
    """BROKE, fixed: every run could use every core of the machine. On an H200 a run beside a train.py that kept
    them all busy (bench/neighbour_hog.py) took 180 steps in place of 189, and its weights came too late to count:
    a baseline's seeds so slowed are a bar that a change clears without being better. Now each worker's runs are
    pinned to CPUs of their own, and a run that asks for every core back is refused. BROKE too, fixed: pinned, a
    run could still keep another CPU busy with an io_uring polling thread bound to it, or, as root in a cgroup of
    root's, make a user namespace, mount the cgroup filesystem there and move into a cpuset of the other worker's
    CPUs (both now refused; that cgroup is not at hand here, so the first step is what is asserted)."""

    ws = workspace
    ws.train_py.write_text(ws.read_train_py().replace(START, textwrap.indent(TAKE_EVERY_CORE, "    ") + START))
    ws.git.commit("takes every core", "train.py")
    run_workers(make_loop(ws, FakeExecutor(score), baseline_runs=2), None, devices(None, 2), max_experiments=0)
    seen = []
    for run in range(2):  # the baseline's two seeds, one on each worker
        log = (ws.state / "runs" / f"1-{run}" / "log.txt").read_text()
        assert f"cores: refused {errno.EPERM}" in log and "widened" not in log, log
        assert f"io_uring: refused {errno.EPERM}" in log and f"user namespace: refused {errno.EPERM}" in log, log
        seen.append(re.search(r"cores: ([\d ]+)\n", log)[1])
    assert sorted(seen) == sorted(" ".join(map(str, cpus)) for cpus in cores.shares(2)), seen
    assert Ledger(ws.root).get(1).status == Status.KEEP


# -- a workspace changed by hand while the loop runs --------------------------------------------------------


def test_a_workers_worktree_deleted_by_hand_while_the_loop_runs_is_made_again(workspace):
    """BROKE, fixed: `.autoresearch/workers` deleted while the loop ran (a tidy-up by hand) stopped the loop at the
    next run with "git is not installed" (git was started in the worktree's folder, which had gone). Now a worker
    whose worktree has gone gets a new one when it takes its next run."""

    sched = scheduler(workspace, inbox=True)
    sched.run(None)  # the baseline
    shutil.rmtree(workspace.state / "workers")
    submission = Inbox(workspace.state).put(
        "LR 0.2", with_constants(workspace.read_train_py(), LR=0.2), workspace.git.head()
    )
    sched.run(None)  # the same workers, as a loop that lingers for submissions
    assert submission.answer() == {"id": 2} and sched.loop.ledger.get(2).status == Status.KEEP
    assert any((w.worktree / ".git").is_file() for w in sched.workers)  # the one that trained it
    assert workspace.git.head() == sched.loop.best().commit


def test_wait_alone_prints_the_verdict_of_a_submitted_stale_wins_merge_too(workspace):
    """BROKE, fixed: a submitted change that won on a stale base was discarded ("merged onto it as exp 4,
    re-validated there") and exp 4, its change on the best, was trained and judged; but only the original was
    left for `wait` with no ids, which printed its discard and returned. Whether the change was kept in the end
    never reached the agent that submitted it. The merge is now marked as the submitter's to wait for too."""

    loop = make_loop(workspace, FakeExecutor(betas_score), baseline_runs=2)
    one = make_workers(loop, devices(None, 1, cores=2), lambda device: FakeExecutor(betas_score))
    sched = Scheduler(loop, one, Inbox(workspace.state))
    sched.run(None)  # the baseline
    inbox, head, source = Inbox(workspace.state), workspace.git.head(), workspace.read_train_py()
    inbox.put("LR 0.2", with_constants(source, LR=0.2), head)  # kept first: the betas edit's base is stale then
    inbox.put("betas", betas(type("Ctx", (), {"train_py": source}))[1], head)
    sched.run(None)
    merged = loop.ledger.get(4)
    assert merged.merged_from == 3 and merged.status.final and "merged onto it as exp 4" in loop.ledger.get(3).reason
    assert unreported(workspace.state) == [2, 3, 4]


def test_a_verdict_recorded_by_a_driver_killed_before_results_tsv_followed_reaches_results_tsv(workspace, monkeypatch):
    """BROKE, fixed: the ledger takes a verdict before results.tsv is rewritten from it. A driver killed between
    the two left results.tsv without the verdict, and the next start (which moved the branch onto the kept
    experiment) never wrote it: with nothing else to judge, results.tsv disagreed with the ledger, status and
    report for good. Every start now writes results.tsv from the ledger before anything else."""

    sched = scheduler(workspace, inbox=True)
    sched.run(None)  # the baseline
    Inbox(workspace.state).put("LR 0.2", with_constants(workspace.read_train_py(), LR=0.2), workspace.git.head())

    def killed(self):
        if (exp := self.get(2)) is not None and exp.status.final:
            raise KeyboardInterrupt  # the driver dies after the verdict's row, before results.tsv

    with monkeypatch.context() as patch, contextlib.suppress(KeyboardInterrupt):
        patch.setattr(Ledger, "write_tsv", killed)
        sched.run(None)
    assert sched.loop.ledger.get(2).status == Status.KEEP
    again = scheduler(workspace, inbox=True)
    again.run(None)
    lines = (workspace.root / "results.tsv").read_text().splitlines()
    assert [line.split("\t")[3] for line in lines[1:]] == ["keep", "keep"]
    assert workspace.git.head() == again.loop.ledger.get(2).commit


def test_a_loop_that_ends_leaves_no_worktree_of_its_own_or_of_an_earlier_loop_with_more_workers(workspace):
    """BROKE, fixed: every worker's worktree stayed after the loop ended (in `.autoresearch/workers` and in `git
    worktree list`), and those of a loop with four workers stayed for good once the loop ran with two (a start
    makes again only its own). A loop that ends with nothing in flight now removes them all."""

    loop = make_loop(workspace, FakeExecutor(score), baseline_runs=2)
    run_workers(loop, None, devices(None, 2, cores=2), executor_for=lambda device: FakeExecutor(score))
    assert loop.best() is not None and not (workspace.state / "workers").exists()
    make_workers(loop, devices(None, 2, cores=2), lambda device: FakeExecutor(score))  # left by a loop killed
    agent = ScriptedAgent([set_lr(0.2)])
    run_workers(loop, agent, [Device("cpu 0")], max_experiments=1, executor_for=lambda device: FakeExecutor(score))
    assert loop.ledger.get(2).status == Status.KEEP and not (workspace.state / "workers").exists()
    assert workspace.git("worktree", "list").count("\n") == 1  # the workspace's own


def test_a_driver_killed_between_a_stale_wins_merge_and_its_verdict_trains_the_merge_once(workspace, monkeypatch):
    """HOLDS. The merge of a stale win is recorded before the win's discard that names it; a driver killed between
    the two finds both in flight. Run again, the win is discarded naming that merge (no second merge is made), the
    merge is trained once and judged, and both stay the submitter's to `wait` for."""

    def one_worker() -> Scheduler:
        loop = make_loop(workspace, FakeExecutor(betas_score), baseline_runs=2)
        found = make_workers(loop, devices(None, 1, cores=2), lambda device: FakeExecutor(betas_score))
        return Scheduler(loop, found, Inbox(workspace.state))

    one_worker().run(None)  # the baseline
    inbox, head, source = Inbox(workspace.state), workspace.git.head(), workspace.read_train_py()
    inbox.put("LR 0.2", with_constants(source, LR=0.2), head)
    inbox.put("betas", betas(type("Ctx", (), {"train_py": source}))[1], head)
    finish = ResearchLoop._finish

    def killed(self, exp, status, reason, *args, **kwargs):
        if "merged onto it as exp" in reason:
            raise KeyboardInterrupt  # the merge is recorded, the win's verdict not
        return finish(self, exp, status, reason, *args, **kwargs)

    with monkeypatch.context() as patch, contextlib.suppress(KeyboardInterrupt):
        patch.setattr(ResearchLoop, "_finish", killed)
        one_worker().run(None)
    again = one_worker()
    again.run(None)
    rows = again.loop.ledger.all()
    assert [(r.id, r.status, r.merged_from) for r in rows[2:]] == [(3, Status.DISCARD, 0), (4, Status.DISCARD, 3)]
    assert "merged onto it as exp 4" in rows[2].reason and unreported(workspace.state) == [2, 3, 4]
    assert [constant(s, "LR") for w in again.workers for s in w.executor.calls] == [0.2]  # the merge, once


def test_a_ledger_rebuilt_while_a_submission_was_queued_never_gives_its_id_again(workspace):
    """BROKE, fixed: a submission recorded and queued, not yet trained, has no commit and no run folder; a ledger
    lost then and rebuilt had no row for it and gave its id to the next experiment. `wait` (its mark was still
    there) said "no experiment 2 in the ledger" on every call, then printed the next experiment's verdict as the
    submission's. Its id now comes back as a crash that says to submit it again."""

    sched = scheduler(workspace, inbox=True)
    sched.run(None)  # the baseline
    Inbox(workspace.state).put("LR 0.2", with_constants(workspace.read_train_py(), LR=0.2), workspace.git.head())
    sched.take_submissions()  # exp 2, queued: then the driver dies, and the ledger is lost
    sched.loop.ledger.close()
    (workspace.state / "ledger.sqlite").unlink()
    rebuild(workspace.root, workspace.git)
    told = []
    wait_for(lambda: Ledger(workspace.root), unreported(workspace.state), lambda: False, poll=0.01, judged=told.append)
    assert [(e.id, e.status) for e in told] == [(2, Status.CRASH)] and "submit it again" in told[0].reason
    ledger = Ledger(workspace.root)
    try:
        assert ledger.next_id() == 3
    finally:
        ledger.close()


def test_a_disk_that_fills_during_a_run_stops_the_loop_with_a_message_and_the_run_is_trained_again(workspace):
    """BROKE, fixed: an executor that failed for lack of space (its run's folder, log or pid file) raised OSError
    on the driver's thread: a traceback, and the attempt counted against the experiment as if train.py had killed
    the loop (twice, and it would be a crash). Now the loop stops with the full disk's message and hint, and the
    next start trains the experiment again, no attempt counted."""

    full = threading.Event()
    full.set()

    class FillsUp(FakeExecutor):
        def run(self, spec):
            if full.is_set() and constant(spec.source.read_text(), "LR") == 0.2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().run(spec)

    sched = scheduler(workspace, inbox=True, executor=lambda device: FillsUp(score))
    sched.run(None)  # the baseline
    Inbox(workspace.state).put("LR 0.2", with_constants(workspace.read_train_py(), LR=0.2), workspace.git.head())
    with pytest.raises(DiskFullError, match="the disk is full"):
        sched.run(None)
    stopped = sched.loop.ledger.get(2)
    assert stopped.status == Status.RUNNING and stopped.attempts == 0
    full.clear()  # space freed
    scheduler(workspace, inbox=True, executor=lambda device: FillsUp(score)).run(None)
    assert sched.loop.ledger.get(2).status == Status.KEEP


def test_a_keep_while_the_agent_has_deleted_train_py_notes_no_edit_and_raises_nothing(workspace):
    """BROKE, fixed: the driver, moving the branch onto a win, read train.py to tell whether it held the submitter's
    next edit; an agent that had deleted it at that moment raised FileNotFoundError out of the loop."""

    before = workspace.git.head()
    win = workspace.git.commit_onto(before, "train.py", with_constants(workspace.read_train_py(), LR=0.2), "exp 2")
    workspace.train_py.unlink()
    workspace.git("reset", "-q", "--mixed", win)
    note_moved(workspace, before)
    assert not (workspace.state / EDIT_BASE).exists()
