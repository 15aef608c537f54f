"""What an idle worker gets next, and the agent's proposals that feed it: a part of the Scheduler, which it is mixed
into (loop/scheduler.py has the runs, their ends and the recovery).

In this order: runs of experiments already in flight (`next_job`), then what `autoresearch submit` queued
(`take_submissions`, looked at between an agent's turns too), then, with several workers, the near-wins of the
latest rounds combined (loop/combining.py), then a new proposal from the agent. An agent that only answers is asked
on threads, one ask in flight per worker idle now or about to be (`ahead`: a busy worker's run ends within one of the
agent's answers), loop/answers.py.
"""

from __future__ import annotations

import statistics

from autoresearch.agents.base import Agent
from autoresearch.loop.answers import Answer, asked_on_threads
from autoresearch.loop.combining import COMBINER, combination
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.recovery import seeded
from autoresearch.loop.workers import Job

PROPOSALS_PER_WORKER = 3  # proposals asked for at once for an idle worker while they are rejected


class Filling:
    """The Scheduler's choice of work (it has the loop, the workers, the queue of jobs, the inbox, the asks in flight
    and the ratchet this uses)."""

    def fill(self, agent: Agent | None, left: int | None = None) -> int:
        """Give every idle worker a run, asking the agent for at most `left` proposals; how many it made (or
        asked for, on threads: one ask in flight per idle worker with nothing queued for it)."""
        proposed = 0
        self.take_submissions()
        on_threads = asked_on_threads(agent)
        combining = True  # a combination of near-wins (loop/combining.py): looked for once per fill
        for worker in self.workers:
            if worker.job is not None:
                continue
            job = self.next_job()
            if job is None and combining:
                combining = False
                if self.combine(agent, proposed, left):
                    proposed += 1
                    job = self.next_job()
            if job is None and on_threads:
                continue  # asked for below, all at once
            # A rejected proposal (a repeat, say) leaves the worker idle: ask again at once, a few times.
            for _ in range(PROPOSALS_PER_WORKER):
                if job is not None or not self.may_ask(agent, proposed, left):
                    break
                proposed += 1
                self.propose(agent)
                job = self.next_job()
            if job is None:
                break
            self.dispatch(worker, job)
        if on_threads:  # one ask in flight per worker idle now or about to be, less what is queued for them
            wanted = self.idle() + self.ahead()[0] - len(self.jobs)
            while self.answers.pending < wanted and self.may_ask(agent, proposed, left):
                proposed += 1
                base = self.base()
                self.answers.ask(agent, base, self.loop.context(base))
                self.loop.reporter.message(f"asking {agent.name} for a change ({self.answers.pending} in flight)")
        return proposed

    def combine(self, agent: Agent | None, proposed: int, left: int | None) -> bool:
        """With several workers, queue the near-wins of the latest rounds combined (loop/combining.py) where
        there are such; whether it did. It counts as a proposal."""
        if len(self.workers) < 2 or not self.may_ask(agent, proposed, left):
            return False
        combined = combination(self.loop)
        if combined is None:
            return False
        self.activate(self.loop.record(combined, COMBINER, ""))  # made on the best
        return True

    def may_ask(self, agent: Agent | None, proposed: int, left: int | None) -> bool:
        if agent is None or proposed == left or self.clock.now() < self.propose_after:
            return False
        return self.base() is not None

    def idle(self) -> int:
        return sum(w.job is None for w in self.workers)

    def ahead(self) -> tuple[int, float | None]:
        """With several workers and an agent asked on threads: how many busy workers' runs end within one of
        the agent's answers (their next proposal is asked for now, so that it is there when they are free), and
        on the clock when the next one will. A proposal asked ahead has not seen that run's result; with one
        worker that would be every proposal, so one worker is never asked ahead for."""
        think = self.answers.think()
        if think is None or len(self.workers) < 2 or not self.run_seconds:
            return 0, None
        lead = statistics.median(self.run_seconds) - think
        now, due, later = self.clock.now(), 0, []
        for worker in self.workers:
            if worker.job is not None and worker.job.handed_at is not None:
                at = worker.job.handed_at + lead
                due += at <= now
                if at > now:
                    later.append(at)
        return due, min(later, default=None)

    def next_job(self) -> Job | None:
        self.take_submissions()  # between an agent's turns too: a submission is answered at once
        return self.jobs.popleft() if self.jobs else None

    def take_submissions(self) -> None:
        """Record what `submit` left in the inbox and queue it, whether or not a worker is free (it trains when
        one frees): `submit` is answered within a poll of the inbox, not when a run ends. Made from the best,
        or from the baseline while it is measured (then judged once it is)."""
        if self.inbox is not None and self.base() is not None:
            for exp in self.inbox.take(self.loop):
                self.activate(exp)

    def busy(self) -> bool:
        """Whether a report is to come: a run in progress, or an ask in flight."""
        return self.answers.pending > 0 or any(w.job is not None for w in self.workers)

    def _waiting_submissions(self) -> bool:
        return self.inbox is not None and self.inbox.pending()

    def propose(self, agent: Agent) -> None:
        """One proposal from the agent; checked, recorded and queued (or recorded as rejected)."""
        exp = self.ratchet.propose(agent, self.base())
        if exp.status.final:
            if pause := self.loop.failure_pause(agent):
                self.propose_after = self.clock.now() + pause
            return
        self.activate(exp)

    def on_the_best(self, exp: Experiment, job: Job) -> Experiment:
        """An answer not yet trained, made on the best if another win was kept while it waited for a worker
        (Ratchet.remade). Only onto a best older than itself: the best is the newest kept row."""
        best = self.loop.best()
        if best is None or exp.parent == best.commit or best.id > exp.id:
            return exp
        exp = self.ratchet.remade(exp, best)
        job.source = seeded(exp.source, job.run)
        return exp

    def take_answer(self, answer: Answer) -> None:
        """Record an ask's answer (loop/answers.py) and queue it; after failures, pause the agent."""
        if pause := self.answers.took(answer):
            self.propose_after = max(self.propose_after, self.clock.now() + pause)
            rounds = self.answers.failures
            self.loop.reporter.message(f"{answer.agent.name}: {rounds} rounds of asks failed; waiting {pause:.0f}s")
        try:
            exp = self.ratchet.answered(answer)
        finally:  # a rejection (or a fatal error) wrote back the best the agent was asked on
            self.loop.ws.write_train_py(self.base().source)
        self.asked.add(exp.id)
        if not exp.status.final:
            self.activate(exp)
