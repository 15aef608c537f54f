"""Asking the agent: what it is shown (the context), and how its proposal is checked before anything runs.

The turn of an agent with a shell (one that runs programs: a coding agent, a command) is watched like a run
(loop/watch.py): afterwards the workspace is put back as the loop left it, but for train.py, which is the
proposal. What the agent's tools left (its own commits and branches, staged and new files, git config, lines
added to .gitignore) is not held against it: it is put back, kept in the quarantine and noted in the
experiment's reason. An edit to any other file that was there rejects it. An agent without a shell (an LLM's
API, tune) writes no file: its turn is not watched. Any proposal is rejected where it repeats a train.py in
flight or already measured on the same best. A part of `ResearchLoop`, which it is mixed into.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection

from autoresearch.agents.base import Agent, Context, PastExperiment, Proposal, ProposalError, Usage, has_shell
from autoresearch.loop import guard
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.settings import LoopError
from autoresearch.vocabulary import IN_FLIGHT, Kind, Status

CRASHES_BEFORE_MOVING_ON = 3  # after this many crashes in a row the agent no longer sees the crash log
PAUSE_FIRST_S, PAUSE_MAX_S = 30.0, 900.0  # back-off after failed proposals in a row
NO_PROPOSAL = "(no proposal)"  # the description of the row of an agent that failed to propose anything


class Asking:
    """`ResearchLoop`'s turns of the agent (it has the workspace, the ledger and the verdict steps this uses)."""

    def context(self, base: Experiment | None = None) -> Context:
        """What the agent is shown; its change is made from `base` (the best by default)."""
        best = base or self._require_best()
        finished = [e for e in self.ledger.all() if e.status not in IN_FLIGHT]
        crashes = 0
        for e in reversed(finished):
            if e.status != Status.CRASH:
                break
            crashes += 1
        last_crash = finished[-1].log_tail or finished[-1].reason if crashes else None
        return Context(
            workspace=self.ws.root,
            named=self.ws.named,
            program=self.ws.program(),
            train_py=best.source,
            best_bpb=best.val_bpb,
            noise=self.noise(),
            history=[
                PastExperiment(e.id, e.status, e.description, e.val_bpb, e.diff, e.source, e.reason) for e in finished
            ],
            last_crash=last_crash if crashes < CRASHES_BEFORE_MOVING_ON else None,
            in_flight=[
                PastExperiment(e.id, e.status, e.description, None, e.diff, e.source)
                for e in self.ledger.in_flight()
                if e.kind == Kind.EXPERIMENT
            ],
        )

    def duplicate_of(self, source: str, base: str, besides: int | None = None) -> str | None:
        """Why a proposal of `source` made from commit `base` is not run again, or None: the same train.py is
        in flight (other than experiment `besides`), or was already measured on the same base."""
        return duplicate(self.ledger.all(), source, base, besides)

    def ask(
        self, agent: Agent, wait: bool = True, base: Experiment | None = None
    ) -> Experiment | tuple[Proposal, str | None]:
        """The agent's checked proposal, made from `base` (the best by default), and what was put back after
        it; or, if it has none that may run, the rejected proposal's row. train.py holds the proposal
        afterwards. After failures in a row it waits (`failure_pause`) before it returns, unless `wait` is off:
        the scheduler waits on its own clock."""
        best = base or self._require_best()
        exp_id = self.ledger.next_id()
        self.reporter.phase(exp_id, "", f"asking {agent.name} for a change")
        who = f"the {agent.name} agent"
        # An agent without a shell (an LLM's API, tune) runs no program and writes no file: nothing to check after
        # it, as after an ask on a thread (loop/answers.py). A person's edit of program.md meanwhile is no reason to
        # reject its proposal either.
        watch = self._watch() if has_shell(agent) else None
        try:
            proposal = agent.propose(self.context(best))
        except ProposalError as exc:
            verdict = self._verified(watch, who)
            exp = self.failed(agent, best, exp_id, exc, verdict.reason(), verdict.tidied())
            if wait:
                self._pause_after_failures(agent)
            return exp
        except BaseException:  # Ctrl-C while the agent works: leave the workspace as the best left it
            self._verified(watch, who)
            self.ws.write_train_py(best.source)
            self.turn_over()
            raise
        verdict = self._verified(watch, who)
        note = verdict.tidied()  # the agent's litter: put back, noted, not held against its train.py
        if why := verdict.reason():
            return self._rejected(exp_id, agent, best, proposal.description, _as_agent(why), proposal.usage, note)
        return self.checked(agent, best, exp_id, proposal, note)

    def checked(
        self, agent: Agent, best: Experiment, exp_id: int, proposal: Proposal, note: str | None = None
    ) -> Experiment | tuple[Proposal, str | None]:
        """`proposal`, made from `best`, if it may run; else its rejected row (another file changed, a repeat)."""
        if why := guard.rejection(best.source, proposal.source) or self.duplicate_of(proposal.source, best.commit):
            return self._rejected(exp_id, agent, best, proposal.description, why, proposal.usage, note)
        return proposal, note

    def failed(
        self,
        agent: Agent,
        best: Experiment,
        exp_id: int,
        exc: ProposalError,
        other: str | None = None,
        note: str | None = None,
    ) -> Experiment:
        """The row of an agent that made no proposal (`other`: what else it did wrong); LoopError if it never can."""
        why = str(exc) + (f"; it also {_as_agent(other)}" if other else "")
        exp = self._rejected(exp_id, agent, best, NO_PROPOSAL, why, exc.usage, note)
        if exc.fatal:
            raise LoopError(f"the {agent.name} agent cannot work: {exc}") from None
        return exp

    def _pause_after_failures(self, agent: Agent, until: float = math.inf) -> None:
        """Back off when the agent fails again and again (an API down, a rate limit): 30 s, 1 min, ... 15 min; never
        past `until` (time.monotonic(): the end of `--hours`)."""
        if (left := until - time.monotonic()) > 0 and (wait := self.failure_pause(agent, left)):
            self.sleep(wait)

    def failure_pause(self, agent: Agent, most: float = math.inf) -> float:
        """How long to wait before asking `agent` again after its latest failures in a row (0: at once), `most` at
        most (`failures_in_a_row`)."""
        failures = failures_in_a_row(self.ledger.all(), agent.name)
        if wait := min(backoff(failures), most):
            self.reporter.message(f"{agent.name} failed {failures} times in a row; waiting {wait:.0f}s")
        return wait

    def none_proposed(self, agent: Agent, since: int, resumed: Collection[int] = ()) -> None:
        """LoopError where the agent was asked since row `since` and every ask failed to give a proposal (an API down
        all night, a tool that cannot start): `run` that stops at its limit so exits 0 no more, which a script
        (`run --max-experiments 5 && report`) took for a night's work. A proposal rejected for what it was (a repeat,
        only the seed changed) is the agent at work: not this. Nor the baseline, or a change submitted meanwhile. Nor
        a start that finished experiments `resumed` (in flight when it began, left by a loop killed): it trained them
        (BROKE: one resumed and kept, then every ask failed, ended "nothing was tried", exit 2)."""
        done = [e for e in self.ledger.all() if e.id >= since or (e.id in resumed and e.status.final)]
        rows = [e for e in done if e.kind in (Kind.PROPOSAL, Kind.EXPERIMENT)]
        if rows and all(e.kind == Kind.PROPOSAL and e.description == NO_PROPOSAL for e in rows):
            raise LoopError(
                f"none of the {len(rows)} asks of the {agent.name} agent gave a proposal: nothing was tried; the last "
                f"(exp {rows[-1].id}): {rows[-1].reason.removeprefix('rejected: ')}",
                hint=f"`autoresearch show {rows[-1].id}` shows it whole; fix what it says, then run again",
            )

    def _rejected(
        self,
        exp_id: int,
        agent: Agent,
        best: Experiment,
        description: str,
        why: str,
        usage: Usage,
        note: str | None = None,
    ) -> Experiment:
        """A proposal that never ran: recorded as a crash so its cost and reason are not lost."""
        exp = Experiment(
            id=exp_id,
            kind=Kind.PROPOSAL,
            status=Status.RUNNING,
            description=one_line(description),
            parent=best.commit,
            agent=agent.name,
            model=getattr(agent, "model", ""),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=usage.cost_usd,
            reason=note or "",
        )
        self.ledger.insert(exp)
        self.ws.write_train_py(best.source)
        self.turn_over()
        return self._finish(exp, Status.CRASH, f"rejected: {why}")


def duplicate(rows: list[Experiment], source: str, base: str, besides: int | None = None) -> str | None:
    """`Asking.duplicate_of` over the ledger's `rows` (`submit` asks it before any loop starts)."""
    for e in rows:
        if e.source != source or e.kind != Kind.EXPERIMENT or e.id == besides:
            continue
        if e.status in IN_FLIGHT:
            return f"the same train.py as exp {e.id}, in flight (queued or training): propose something different"
        if e.parent == base and e.status != Status.CRASH:
            return f"the same train.py as exp {e.id}, already measured on this best ({e.status}, {e.reason})"
    return None


def failures_in_a_row(rows: list[Experiment], agent: str) -> int:
    """How many of the last `rows` are asks of `agent` that gave no proposal. A proposal that was made but rejected (a
    repeat, another file edited) is no failure: the agent works. Another agent's failures before it are not its own
    (an aider whose server was down, then `--agent openai`)."""
    failures = 0
    for e in reversed(rows):
        if e.kind != Kind.PROPOSAL or e.status != Status.CRASH or e.description != NO_PROPOSAL or e.agent != agent:
            break
        failures += 1
    return failures


def backoff(failures: int) -> float:
    """Seconds to wait after `failures` failures in a row: none after one, then 30 s, 1 min, ... 15 min."""
    return 0.0 if failures < 2 else min(PAUSE_MAX_S, PAUSE_FIRST_S * 2 ** (failures - 2))


def _as_agent(why: str) -> str:
    return why.replace("changed files outside train.py", "edited files other than train.py")


def one_line(text: str) -> str:
    return " ".join(text.split())[:200] or "(no description)"
