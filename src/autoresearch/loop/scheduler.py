"""The loop with several workers: the driver hands training runs to workers and judges what they report.

The driver (this thread) is the only writer of git, the ledger and results.tsv; a worker only trains one
run at a time, in its own worktree, on its own device (loop/workers.py), and reports the outcome through
a queue. What to run next is the driver's choice, in this order: runs of experiments already in flight
(the baseline's seeds, all at once; a marginal win's re-run; what a killed loop left), then experiments
that `autoresearch submit` queued, then a new proposal from the agent (which sees what is in flight). An
agent that only answers is asked once per idle worker at once, on threads (loop/answers.py); that choice is
loop/filling.py's.
A strategy that wants other runs (a short screening budget, a confirmation elsewhere) adds jobs to that
queue; the ratchet (loop/ratchet.py: judging, merging a win found on an old base, keeping) stays as it is.

With several workers a kept change is measured again (loop/confirmation.py): its runs on more seeds are queued
first, and its value, the bar every later change must beat, becomes their mean.

No worker waits for the baseline: it trains a seed on each of half the workers (on BASELINE_SEEDS_MIN at least,
every worker where there are fewer; up to BASELINE_SEEDS_MAX, at least the configured number), and the workers left
over train changes made from the baseline's own commit while its seeds train. Such a change whose runs end first
is held, in flight, until the baseline is judged, then judged against it with the noise measured then: its base is
the baseline, the first best.

Nothing is lost: an experiment's row is written before its commit is made and its verdict before git
moves; each run counts an attempt while it trains. Killed at any moment, the next start finds every
experiment in flight and trains its missing runs again (an experiment whose runs were interrupted twice
is a crash), or adopts the runs that had ended (a change made from the baseline still waits for its
verdict). A run killed from outside (its evaluator died of a signal) is tried once more; a run that
failed by itself is a crash at once. A workspace moved (`mv`) or deleted meanwhile stops the loop (`check_home`)
before it writes anything at the old path; what is in flight is resumed by the next start in the new place.
"""

from __future__ import annotations

import contextlib
import json
import queue
import time
from collections import deque
from typing import Any

from autoresearch.agents.base import Agent, preflight
from autoresearch.loop import activity
from autoresearch.loop.answers import Answer, Answers
from autoresearch.loop.clock import Clock, RealClock
from autoresearch.loop.confirmation import CONFIRMED_RUNS, NOT_CONFIRMED, Confirmations
from autoresearch.loop.engine import MAX_ATTEMPTS, LoopError, ResearchLoop
from autoresearch.loop.executor import Outcome, RunSpec
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.filling import Filling
from autoresearch.loop.inbox import SUBMITTER, Inbox, note_moved
from autoresearch.loop.ratchet import Ratchet
from autoresearch.loop.recovery import baseline_died, commit_message, died_running, result_columns, seeded
from autoresearch.loop.settings import APPARATUS_HINT, BASELINE_SEEDS_MAX, BASELINE_SEEDS_MIN
from autoresearch.loop.workers import Active, Job, Worker, check_out, stop_workers
from autoresearch.vocabulary import Kind, RunEnd, Status
from autoresearch.workspace.workspace import TRAIN_PY, WorkspaceMoved

POLL_S = 0.5  # how often the driver looks at the inbox while it waits for a run to end


class Scheduler(Filling):
    def __init__(
        self,
        loop: ResearchLoop,
        workers: list[Worker],
        inbox: Inbox | None = None,
        linger: float = 0.0,
        clock: Clock | None = None,
        confirm_runs: int | None = None,
        baseline_seeds_max: int = BASELINE_SEEDS_MAX,
        placement: list[str] | None = None,
    ):
        """`linger`: without an agent, how long to wait for another submission once nothing is left to do;
        `confirm_runs`: the runs a kept change gets in all (default: CONFIRMED_RUNS with several workers, else 0: one
        worker's each would be a whole run of its night); `baseline_seeds_max`: the most seeds the baseline trains at
        once beyond the configured number; `placement`: the options the loop was started with, for a hint that starts
        it again (the session records them)."""
        self.loop, self.workers, self.inbox, self.linger = loop, workers, inbox, linger
        self.placement = placement
        self.baseline_seeds_max = baseline_seeds_max
        self.clock = clock or RealClock()
        self.ratchet = Ratchet(loop)
        self.active: dict[int, Active] = {}
        self.jobs: deque[Job] = deque()  # runs to start, first first
        self.held: dict[int, Outcome | None] = {}  # experiments made from the baseline, trained, until it is judged
        # SimpleQueue: its get is one call in C, so a Ctrl-C that lands in the driver's wait is a clean
        # KeyboardInterrupt; queue.Queue's Python-level lock could be left released twice (RuntimeError).
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.propose_after = 0.0  # a failing agent is asked again only after a pause (the clock's time)
        self.answers = Answers(self.events, self.clock)  # asks in flight on threads, for an agent that only answers
        self.run_seconds: deque[float] = deque(maxlen=8)  # how long the latest runs took, handed out to reported
        self.asked: set[int] = set()  # experiments from asks on threads: made on the best when a worker takes them
        if confirm_runs is None:
            confirm_runs = CONFIRMED_RUNS if len(workers) > 1 else 0
        self.confirmations = Confirmations(loop, confirm_runs)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, agent: Agent | None, max_experiments: int | None = None, hours: float | None = None) -> None:
        """Train and judge until the agent has made `max_experiments` proposals or `hours` passed, then finish
        what is in flight. Without an agent (a coding agent submits), until nothing is queued or in flight."""
        loop, began = self.loop, time.time()  # the session's start: its recovery and baseline's row count as its time
        if agent is not None:
            preflight(agent, loop.ws.root, loop.reporter.message, loop.ws.named)
        started, proposed = self.clock.now(), 0
        idle_since = None
        self.recover()
        # An agent's turns write the workspace's train.py; with submissions it is the submitter's.
        loop.check_clean(edit_ok=agent is None)
        if loop.best() is None and not any(loop.ledger.get(i).kind == Kind.BASELINE for i in self.active):
            if agent is not None and max_experiments == 0:  # start nothing, not a baseline (a submission needs one)
                loop.reporter.message("no baseline yet, and --max-experiments 0 starts nothing")
                return
            self.start_baseline()
        else:  # a ledger rebuilt without the baseline's seeds: measured again here, before any change is judged
            self.measure_noise_again(agent)
        labels = [w.device.label for w in self.workers]
        if (show := getattr(loop.reporter, "show_workers", None)) is not None:  # the live view's lines, idle ones too
            show(labels)
        activity.start_session(loop.ws.state, labels, began, asking=agent is not None, placement=self.placement)
        try:
            while True:
                self.check_home()  # before it takes a submission or starts a run; each poll of a loop left idle
                within = (max_experiments is None or proposed < max_experiments) and (
                    hours is None or self.clock.now() - started < hours * 3600
                )
                left = None if max_experiments is None else max_experiments - proposed
                proposed += self.fill(agent if within else None, left)
                if not self.busy() and not self.jobs and not self._waiting_submissions():
                    if agent is not None and within:
                        self.clock.sleep(max(0.0, min(POLL_S, self.propose_after - self.clock.now())))
                        continue
                    idle_since = idle_since or self.clock.now()
                    if agent is not None or self.clock.now() - idle_since >= self.linger:
                        break
                    self.clock.sleep(POLL_S)
                    continue
                idle_since = None
                self.handle_next()
        except BaseException as exc:
            self.stop_all()
            if isinstance(exc, Exception) and not isinstance(exc, WorkspaceMoved) and loop.ws.moved():
                # git or a file at the old path failed: moved between a check and the write (the error said less)
                raise WorkspaceMoved(loop.ws.root) from exc
            raise
        finally:
            activity.end_session(loop.ws.state)

    def measure_noise_again(self, agent: Agent | None) -> None:
        """What a ledger rebuilt without its runs' results lacks for a verdict, trained again by the first worker's
        executor, on its device: the loop's own is the driver's, which with `--ray` may have no GPU at all, and its
        runs would be refused beside the workers' (another setup). Without an agent, train.py may hold a submitter's
        edit: it waits aside meanwhile, as `try`'s does (red team: the runs trained in the working tree wrote over
        it)."""
        loop, own = self.loop, self.loop.executor
        loop.executor = self.workers[0].executor
        try:
            with loop.holding(loop.ws.read_train_py()) if agent is None else contextlib.nullcontext():
                loop.measure_noise_again()
        finally:
            loop.executor = own

    # -- what to run --------------------------------------------------------------------------------

    def start_baseline(self) -> None:
        """A new baseline, after crashing what is in flight: with no best and no baseline in flight, a change in
        flight was made from a baseline that crashed (it failed, or the loop was killed in it twice). Judged against
        the new one, a later row, and kept, it would be a keep older than the best (the newest kept row), its commit
        on the branch under the best's."""
        loop = self.loop
        baselines = {e.commit: e for e in loop.ledger.all() if e.kind == Kind.BASELINE}
        for exp_id in list(self.active):
            exp = loop.ledger.get(exp_id)
            self.cancel(exp_id)
            self.held.pop(exp_id, None)
            base = baselines.get(exp.parent)
            why = f"made from the baseline exp {base.id}, which crashed" if base else "made from no kept experiment"
            again = "submit it again" if exp.agent == SUBMITTER else "it may be proposed again"
            self.ratchet.crashed(exp, f"{why}: nothing to judge it against; {again}, on the new baseline")
        exp = loop.new_baseline()
        self.activate(exp)

    def base(self) -> Experiment | None:
        """What a new proposal is made from: the best; before there is one, the baseline being trained."""
        if (best := self.loop.best()) is not None:
            return best
        return next((e for e in map(self.loop.ledger.get, self.active) if e.kind == Kind.BASELINE), None)

    def baseline_seeds(self) -> int:
        """The baseline's seeds: one on each of half the workers, on BASELINE_SEEDS_MIN at least (every worker where
        there are fewer), at most `baseline_seeds_max`; never fewer than configured."""
        workers = len(self.workers)
        wanted = max(workers // 2, min(workers, BASELINE_SEEDS_MIN))
        return max(self.loop.config.baseline_runs, min(self.baseline_seeds_max, wanted))

    def activate(self, exp, front: bool = False) -> None:
        """Queue the runs `exp` still needs: all the baseline's seeds at once, else one."""
        wanted = self.baseline_seeds() if exp.kind == Kind.BASELINE else max(1, len(exp.run_values))
        act = self.active.setdefault(exp.id, Active(exp.id, wanted, exp.attempts))
        self.queue_runs(act, front)

    def queue_runs(self, act: Active, front: bool = False) -> None:
        exp = self.loop.ledger.get(act.exp_id)
        done = set(exp.run_indices)
        queued = {j.run for j in self.jobs if j.exp_id == act.exp_id}
        missing = act.wanted - len(done) - len(act.running) - len(queued)
        index = 0
        new = []
        while len(new) < missing:
            if index not in done and index not in act.running and index not in queued:
                new.append(Job(exp.id, index, seeded(exp.source, index)))
            index += 1
        if front:
            self.jobs.extendleft(reversed(new))
        else:
            self.jobs.extend(new)

    # -- running ------------------------------------------------------------------------------------

    def dispatch(self, worker: Worker, job: Job) -> None:
        """Check the job's commit out in the worker's worktree (committing the experiment first if it has no
        commit yet), count the attempt, and start it."""
        loop = self.loop
        self.check_home()  # after an agent's turn, too
        exp = loop.ledger.get(job.exp_id)
        if job.exp_id in self.asked and exp.commit is None:
            exp = self.on_the_best(exp, job)
        if exp.commit is None:
            check_out(loop.git, worker.worktree, exp.parent)
            worker.train_py.write_text(exp.source)
            exp.commit = loop.git.worktree(worker.worktree).commit(commit_message(exp), TRAIN_PY)
            loop.ledger.update(exp.id, commit=exp.commit)
        else:
            check_out(loop.git, worker.worktree, exp.commit)
        worker.train_py.write_text(job.source)
        confirming = exp.id in self.confirmations
        act = self.runs_of(exp.id)
        act.running.add(job.run)
        label = worker.device.label
        spans = activity.with_start(exp, job.run, label, time.time())
        status = {} if confirming else {"status": Status.RUNNING}  # a kept row stays kept while measured again
        loop.ledger.update(exp.id, **status, attempts=act.attempts + 1, worker=label, spans=spans)
        try:
            folder, code = loop.ws.state / "runs" / f"{exp.id}-{job.run}", job.source.encode()
            job.spec = RunSpec(loop.ws.root, folder, loop.timeout, loop.fingerprint, worker.train_py, code)
            what = "measuring the best again: run" if confirming else "training run"
            loop.reporter.phase(exp.id, exp.description, f"{what} {job.run + 1} on {worker.device.label}")
            loop.reporter.training(exp.id, job.run, loop.ws.apparatus.budget_seconds, label)
            job.handed_at = self.clock.now()
            worker.start(job, lambda w, j, outcome: self.events.put((w, j, outcome)))
        except BaseException:  # a Ctrl-C before the worker held it: `stop_all` cannot see it, so no attempt is counted
            if worker.job is not job:  # (Ctrl-Cs there made the baseline "killed twice", and crashed it: red team)
                act.running.discard(job.run)
                loop.ledger.update(exp.id, attempts=act.attempts, spans=exp.spans)
            raise

    def handle_next(self) -> None:
        """Wait for a run to end (looking at the inbox meanwhile) and act on it."""
        # When a proposal is next to be asked for ahead, or the agent's pause after failures ends.
        wake = min(
            (t for t in (self.ahead()[1], self.propose_after) if t is not None and t > self.clock.now()), default=None
        )
        while True:
            timeout = POLL_S if wake is None else min(POLL_S, max(0.01, wake - self.clock.now()))
            try:
                event = self.clock.next_event(self.events, timeout, until=wake)
                break
            except queue.Empty:
                if not self.busy() or (self.inbox is not None and self.inbox.pending()):
                    return
                if wake is not None and self.clock.now() >= wake:
                    return
        self.check_home()  # before the run's end (or the answer) is written anywhere
        if isinstance(event, Answer):
            self.take_answer(event)
            return
        worker, job, outcome = event
        self.run_seconds.append(self.clock.now() - job.handed_at)
        worker.finished()
        self.loop.reporter.run_ended(job.exp_id, job.run, worker.device.label)
        if isinstance(outcome, BaseException):  # the loop stops (a full disk, say): not the run's doing
            act = self.runs_of(job.exp_id)
            self.close_span(job, **({"attempts": act.attempts} if act else {}))
            raise outcome
        self.ended(job, outcome)

    def check_home(self) -> None:
        """WorkspaceMoved where the workspace's folder was moved (`mv`) or deleted since the loop opened it: its git,
        results.tsv and the workers' worktrees would be written (made again) at the old path, and the night split in
        two. What is in flight stays so in the ledger, which went with the folder (`stop_all` closes its runs' spans
        through the open file), for the next start in the new place. One stat per event, run or poll."""
        if self.loop.ws.moved():
            raise WorkspaceMoved(self.loop.ws.root)

    def runs_of(self, exp_id: int) -> Active | None:
        """The runs wanted and training of an experiment in flight, or of a kept one measured again."""
        return self.active.get(exp_id) or self.confirmations.active.get(exp_id)

    def close_span(self, job: Job, **changes: Any) -> Experiment:
        """Record when `job`'s run ended (its worker free again), with `changes` to its row; the row."""
        exp = self.loop.ledger.get(job.exp_id)
        exp.spans = activity.with_end(exp, job.run, job.ended_at or time.time())
        self.loop.ledger.update(exp.id, spans=exp.spans, **changes)
        return exp

    def ended(self, job: Job, outcome: Outcome) -> None:
        loop = self.loop
        confirming = job.exp_id in self.confirmations
        act = self.runs_of(job.exp_id)
        if act is None:  # a run of an experiment that has its verdict already (cancel): only its end to note
            self.close_span(job)
            return
        act.running.discard(job.run)
        exp = self.close_span(job, **({} if act.running else {"attempts": act.attempts}))
        if loop.tries_again(exp, job.run, outcome, act.lost):
            self.jobs.appendleft(job)
            if confirming:  # a best that another keep replaced while it trained is measured no further
                self.confirm()
            return
        if (outcome := loop.comparable(outcome, job.spec.run_dir)).status == RunEnd.CHANGED:
            raise LoopError(f"experiment {exp.id} stopped: {outcome.reason}", hint=outcome.hint or APPARATUS_HINT)
        if confirming:  # after its verdict, which settled what its first runs compiled: this run's is settled here
            loop._settle_compiled(exp, keep=outcome.status == RunEnd.OK, run=job.run)
            self.confirmations.took(exp, job.run, outcome)
            if NOT_CONFIRMED in exp.reason:  # its measuring again ended: its other runs are not started
                self.jobs = deque(j for j in self.jobs if j.exp_id != exp.id)
            self.confirm()
            return
        if outcome.status != RunEnd.OK:
            why = outcome.reason if outcome.status != RunEnd.LOST else f"{outcome.reason}, twice"
            self.cancel(exp.id)
            self.ratchet.crashed(exp, why, outcome)
            return
        if exp.kind == Kind.BASELINE:  # as the one-worker loop does; this run alone: others may be harvesting
            loop._settle_compiled(exp, keep=True, run=job.run)
        indices = exp.run_indices  # before `runs` grows: run_indices trusts `seeds` only while their lengths agree
        exp.runs = json.dumps([*exp.run_values, outcome.val_bpb])
        exp.seeds = json.dumps([*indices, job.run])
        loop.ledger.update(exp.id, runs=exp.runs, seeds=exp.seeds, **result_columns(outcome))
        if len(exp.run_values) < act.wanted or act.running:
            return
        self.conclude(exp, outcome)

    def conclude(self, exp: Experiment, outcome: Outcome | None) -> None:
        """Judge `exp`, whose runs have all ended, and queue what the verdict asks for. A change made from the
        baseline before the baseline was judged is held until it is, then judged (those held in the order they
        ended)."""
        if exp.kind != Kind.BASELINE and self.loop.best() is None:
            self.held[exp.id] = outcome
            return
        if exp.kind != Kind.BASELINE:
            self.loop.check_setup(exp)
        head = self.loop.git.head()
        verdict = self.ratchet.conclude(exp, outcome)
        if self.loop.git.head() != head:
            note_moved(self.loop.ws, head)
        act = self.active[exp.id]
        if verdict.rerun:
            act.wanted = len(exp.run_values) + 1
            self.queue_runs(act, front=True)
            return
        self.active.pop(exp.id, None)
        if verdict.revalidate is not None:
            self.activate(verdict.revalidate, front=True)
        self.confirm()
        if exp.kind == Kind.BASELINE:
            held, self.held = self.held, {}
            for exp_id, last in held.items():
                self.conclude(self.loop.ledger.get(exp_id), last)

    def confirm(self) -> None:
        """Queue first the runs the best is to be measured again with (loop/confirmation.py), and drop those not
        started of a best that another keep replaced."""
        dropped, act = self.confirmations.due()
        self.jobs = deque(j for j in self.jobs if j.exp_id not in dropped)
        if act is not None:
            self.queue_runs(act, front=True)

    def cancel(self, exp_id: int) -> None:
        """Drop the queued runs of an experiment that has its verdict (its other runs end unheeded)."""
        self.jobs = deque(j for j in self.jobs if j.exp_id != exp_id)
        self.active.pop(exp_id, None)

    def stop_all(self) -> None:
        """Kill every run in progress (Ctrl-C, an error): their experiments stay in flight for the next start."""
        stop_workers(self.workers)
        for worker in self.workers:
            if worker.job is not None:
                act = self.runs_of(worker.job.exp_id)
                self.close_span(worker.job, **({"attempts": act.attempts} if act else {}))
                worker.finished()

    # -- recovery -----------------------------------------------------------------------------------

    def recover(self) -> None:
        """Take up what a killed loop left in flight: train the runs it misses, or crash it if its runs were
        interrupted MAX_ATTEMPTS times."""
        loop = self.loop
        loop.recover_workspace()
        loop.check_apparatus()
        loop.check_attached()
        loop.recover_branch()
        loop.reap_judged()
        for exp in loop.ledger.in_flight():
            loop.left_running(exp)
            if exp.kind == Kind.PROPOSAL:
                self.ratchet.crashed(exp, "interrupted while the agent was proposing")
                continue
            if exp.attempts >= MAX_ATTEMPTS:
                if exp.kind == Kind.BASELINE:  # not "the baseline train.py failed": the loop was killed in it
                    loop._finish(exp, Status.CRASH, died_running(exp))
                    raise baseline_died(exp, loop.ws)
                self.ratchet.crashed(exp, died_running(exp))
                continue
            if exp.status == Status.RUNNING:
                loop.reporter.message(f"resuming experiment {exp.id}: {exp.description}")
            elif exp.status == Status.QUEUED:  # said too: `status` listed it as left by the killed loop
                loop.reporter.message(f"taking up experiment {exp.id}, queued, not started: {exp.description}")
            self.activate(exp)
            if len(exp.run_values) >= self.active[exp.id].wanted:  # every run had ended: judge it now
                self.conclude(exp, None)
        self.confirm()
