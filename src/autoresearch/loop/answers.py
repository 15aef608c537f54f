"""Asking an agent that only answers several times at once, each ask on its own thread.

With N workers the driver asks the agent once per free worker. An agent that thinks for a minute (an LLM
API call), asked one at a time by the driver, leaves workers idle whenever runs end faster than it answers:
at a 5-minute budget, five such agents' turns are all the driver can serve per run. An agent whose
`answers_only` is true (agents/base.py: it reads its context and returns a proposal, touching no file) is
asked on a thread per free worker instead. The driver builds each context (the ledger is its alone) and
checks and records each answer when it arrives, as an event beside the workers' reports; the thread only
waits for the agent. A coding agent, which edits the workspace, or an agent that keeps state between asks
(`tune`: its Optuna study) is still asked by the driver, one at a time, with the workspace watched.

With several workers, a worker whose run ends within one of the agent's answers is asked for ahead
(Scheduler.ahead), so that its next proposal is there when it is free; such a proposal has not seen that
run's result. An answer is recorded on the best it was asked on. If another win was kept before a worker
takes it, it is made on the new best first where its change merges cleanly (Ratchet.remade: nothing of it
was measured yet); else it trains on its own base and, if it wins there, is merged and re-validated as any
stale win (loop/ratchet.py).

Stopped (Ctrl-C), the loop does not wait for asks in flight: their threads are abandoned, their answers
never recorded.
"""

from __future__ import annotations

import queue
import statistics
import threading
from collections import deque
from dataclasses import dataclass, replace

from autoresearch.agents.base import Agent, Context, Proposal
from autoresearch.loop.asking import backoff
from autoresearch.loop.clock import Clock
from autoresearch.loop.experiment import Experiment


@dataclass(frozen=True)
class Answer:
    """What one ask returned, posted to the driver's event queue: a proposal, or what the agent raised."""

    agent: Agent
    base: Experiment  # the best the agent was shown
    asked_at: float  # the driver's clock when it was asked
    round: int  # the failures in a row counted when it was asked: asks failing together count once
    proposal: Proposal | None = None
    error: BaseException | None = None


def asked_on_threads(agent: Agent | None) -> bool:
    return bool(getattr(agent, "answers_only", False))


class Answers:
    """The asks in flight, each on a daemon thread that posts its `Answer` to `events`."""

    def __init__(self, events: queue.SimpleQueue, clock: Clock):
        self.events, self.clock = events, clock
        self.pending = 0
        self.seconds: deque[float] = deque(maxlen=8)  # how long the latest asks took to come back
        self.failures = 0  # rounds of failed asks in a row: asks out together that fail are one round

    def ask(self, agent: Agent, base: Experiment, context: Context) -> None:
        """Ask `agent` for a change of `base`, shown `context` (built by the caller, on the driver's thread)."""
        context = replace(context, unseen=self.pending)
        self.pending += 1
        args = (agent, base, context, self.clock.now(), self.failures)
        threading.Thread(target=self._ask, args=args, name="autoresearch-ask", daemon=True).start()

    def _ask(self, agent: Agent, base: Experiment, context: Context, asked_at: float, failures: int) -> None:
        try:
            answer = Answer(agent, base, asked_at, failures, proposal=agent.propose(context))
        except BaseException as exc:  # the driver decides: a ProposalError is recorded, anything else raised
            answer = Answer(agent, base, asked_at, failures, error=exc)
        self.events.put(answer)

    def took(self, answer: Answer) -> float:
        """The driver took `answer` off the queue: how long to wait before asking again (after failures)."""
        self.pending -= 1
        self.seconds.append(self.clock.now() - answer.asked_at)
        if answer.proposal is not None:
            self.failures = 0
        elif answer.round == self.failures:  # the first failure of the asks made since the last round failed
            self.failures += 1
            return backoff(self.failures)
        return 0.0

    def think(self) -> float | None:
        """How long the agent takes to answer (the median of the latest asks); None before any came back."""
        return statistics.median(self.seconds) if self.seconds else None
