"""Asking an agent that only answers several times at once, each ask on its own thread.

With N workers the driver asks the agent once per free worker. An agent that thinks for a minute (an LLM
API call), asked one at a time by the driver, leaves workers idle whenever runs end faster than it answers:
at a 5-minute budget, five such agents' turns are all the driver can serve per run. An agent whose
`answers_only` is true (agents/base.py: it reads its context and returns a proposal, touching no file) is
asked on a thread per free worker instead. The driver builds each context (the ledger is its alone) and
checks and records each answer when it arrives, as an event beside the workers' reports; the thread only
waits for the agent. A coding agent, which edits the workspace, or an agent that keeps state between asks
(`tune`: its Optuna study) is still asked by the driver, one at a time, with the workspace watched.

An answer that arrives after another win was kept is made on the new best before it trains, where its
change merges cleanly; else it is recorded on the best it was asked on, judged there and, if it wins, merged
onto the new best and re-validated, as any stale win (loop/ratchet.py).
Stopped (Ctrl-C), the loop does not wait for asks in flight: their threads are abandoned, their answers
never recorded.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

from autoresearch.agents.base import Agent, Context, Proposal
from autoresearch.loop.ledger import Experiment


@dataclass(frozen=True)
class Answer:
    """What one ask returned, posted to the driver's event queue: a proposal, or what the agent raised."""

    agent: Agent
    base: Experiment  # the best the agent was shown
    proposal: Proposal | None = None
    error: BaseException | None = None


def asked_on_threads(agent: Agent | None) -> bool:
    return bool(getattr(agent, "answers_only", False))


class Answers:
    """The asks in flight, each on a daemon thread that posts its `Answer` to `events`."""

    def __init__(self, events: queue.Queue):
        self.events = events
        self.pending = 0

    def ask(self, agent: Agent, base: Experiment, context: Context) -> None:
        """Ask `agent` for a change of `base`, shown `context` (built by the caller, on the driver's thread)."""
        self.pending += 1
        threading.Thread(target=self._ask, args=(agent, base, context), name="autoresearch-ask", daemon=True).start()

    def _ask(self, agent: Agent, base: Experiment, context: Context) -> None:
        try:
            answer = Answer(agent, base, proposal=agent.propose(context))
        except BaseException as exc:  # the driver decides: a ProposalError is recorded, anything else raised
            answer = Answer(agent, base, error=exc)
        self.events.put(answer)

    def took(self) -> None:
        """The driver took one answer off the queue."""
        self.pending -= 1
