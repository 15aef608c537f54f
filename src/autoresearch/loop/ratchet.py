"""Judging with several workers: the one rule that keeps parallel research honest about its base.

Each experiment records its base (`parent`: the best it was made from). When its runs are done:

- its base is still the best: judged as the one-worker loop judges (loop/judge.py);
- another win was kept meanwhile: it is judged against its own base. Not better by the margin: discarded,
  saying so. Better (a marginal win too: not trained again on the old base, since only a run on the best
  can decide it): its change is merged onto the current best (a three-way merge of train.py; where git
  finds a conflict only because both changed constants on adjacent lines, the win's values are set in the
  best's train.py: `merge_constants`). A clean
  merge becomes a new experiment on the new base, trained and judged there before anything is kept; the
  original is discarded with a reason that names it. A conflict is a discard whose reason the agent sees.
  Where the merge is the very train.py the experiment trained (the change kept meanwhile was part of its
  own), or the experiment set every constant the best changed to values of its own (LR 0.15 against a kept
  LR 0.2), its runs already measured a change of the best: it is moved onto the best and judged there, no
  run repeated (one older than the best is trained there as a merge is: the best is the newest kept row).

So a win is never kept on a stale base, and never lost without a word.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoresearch.agents.base import Agent, Proposal, ProposalError, Usage
from autoresearch.loop import guard
from autoresearch.loop.answers import Answer
from autoresearch.loop.engine import LoopError, ResearchLoop, change_of
from autoresearch.loop.executor import Outcome
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.inbox import SUBMITTER
from autoresearch.loop.judge import noise_of
from autoresearch.loop.recovery import commit_message
from autoresearch.loop.waiting import mark_unreported
from autoresearch.vocabulary import Kind, Status
from autoresearch.workspace.constants import changed_constants, read_constants, set_constants
from autoresearch.workspace.workspace import TRAIN_PY


@dataclass(frozen=True)
class Conclusion:
    """What the scheduler must do after `Ratchet.conclude`: train once more, or train a merge."""

    rerun: bool = False  # a marginal win: one more run before the verdict
    revalidate: Experiment | None = None  # a stale win merged onto the best: to be trained there


class Ratchet:
    def __init__(self, loop: ResearchLoop):
        self.loop = loop

    def propose(self, agent: Agent, base: Experiment | None = None) -> Experiment:
        """Ask the agent (it sees what is in flight) for a change of `base` (the best by default; the scheduler
        passes the baseline while its seeds train); the recorded experiment, not yet committed, or the rejected
        proposal's final row. The workspace's train.py is the base's again afterwards."""
        loop = self.loop
        best = base or loop._require_best()
        asked = loop.ask(agent, wait=False, base=best)  # the scheduler waits after failures, taking reports meanwhile
        if isinstance(asked, Experiment):  # rejected: the best's train.py is back already
            return asked
        proposal, note = asked
        exp = loop.record(proposal, agent.name, getattr(agent, "model", ""), note, base=best)
        loop.ws.write_train_py(best.source)  # after the row: a kill before it leaves the turn to be put back
        return exp

    def answered(self, answer: Answer) -> Experiment:
        """The row of an answer of an ask on a thread (loop/answers.py), on the best it was asked on (`remade`
        on a newer one when a worker takes it), or its rejected row. What the agent raised other than a
        ProposalError is raised here."""
        loop, agent, base = self.loop, answer.agent, answer.base
        exp_id = loop.ledger.next_id()
        if answer.error is not None:
            if not isinstance(answer.error, ProposalError):
                raise answer.error
            return loop.failed(agent, base, exp_id, answer.error)
        checked = loop.checked(agent, base, exp_id, answer.proposal)
        if isinstance(checked, Experiment):
            return checked
        proposal, note = checked
        return loop.record(proposal, agent.name, getattr(agent, "model", ""), note, base=base)

    def conclude(self, exp: Experiment, outcome: Outcome | None) -> Conclusion:
        """The verdict on an experiment whose runs are all done (see the module's docstring)."""
        loop, runs = self.loop, exp.run_values
        if exp.kind == Kind.BASELINE:
            reason = f"mean of {len(runs)} seeds; noise (std) {noise_of(runs):.6f}"
            loop._finish(exp, Status.KEEP, reason, outcome, runs)
            return Conclusion()
        best = loop._require_best()
        base = best if exp.parent == best.commit else self.kept(exp.parent)
        if base is None:
            loop._finish(exp, Status.DISCARD, "its base is no longer a kept experiment: not judged", outcome, runs)
            return Conclusion()
        verdict = loop.verdict_on(exp, base, runs)
        if base is best:
            if verdict.decision == Status.RERUN:
                loop.reporter.message(f"exp {exp.id}: {verdict.reason}")
                return Conclusion(rerun=True)
            loop._finish(exp, verdict.decision, verdict.reason, outcome, runs)
            return Conclusion()
        # while it trained, or before it was submitted (an edit made on an older best): "while it trained" misled
        stale = f"exp {best.id} was kept after it was made from exp {base.id}"
        if verdict.decision == Status.DISCARD:
            why = f"{verdict.reason} (against its base exp {base.id}; {stale})"
            loop._finish(exp, Status.DISCARD, why, outcome, runs)
            return Conclusion()
        # A marginal win is not run again on the old base: the runs of its merge on the best decide.
        won = f"marginal win: {verdict.measured}" if verdict.decision == Status.RERUN else verdict.reason
        return self.merge(exp, base, best, f"{won} against its base exp {base.id}, but {stale}", outcome)

    def merge(
        self, exp: Experiment, base: Experiment, best: Experiment, why: str, outcome: Outcome | None
    ) -> Conclusion:
        """A win on a stale base: merged onto the best and re-validated there, or discarded with the reason."""
        loop, runs = self.loop, exp.run_values
        earlier = next((e for e in loop.ledger.all() if e.merged_from == exp.id), None)  # a killed loop made it
        if earlier is not None:
            self.followed(exp, earlier)
            loop._finish(exp, Status.DISCARD, f"{why}; merged onto it as exp {earlier.id}", outcome, runs)
            return Conclusion(revalidate=earlier if not earlier.status.final else None)
        merged = self.merged(base, best, exp.source)
        if merged is None and merge_constants(base.source, best.source, exp.source, overriding=True) == exp.source:
            merged = exp.source  # it set each constant the best changed, to values of its own: its runs measured that
        if merged is None:
            why += f"; its change conflicts with exp {best.id}'s in train.py: not kept"
            loop._finish(exp, Status.DISCARD, why, outcome, runs)
            return Conclusion()
        # What a proposal on the best must pass: a change, not of the seed alone, not measured on the best before.
        problem = guard.rejection(best.source, merged) or loop.duplicate_of(merged, best.commit, besides=exp.id)
        if problem is None and merged == exp.source and exp.id > best.id:  # the best stays the newest kept row
            return self.judged_on(exp, base, best, outcome)
        if problem:
            loop._finish(exp, Status.DISCARD, f"{why}; merged onto it, {problem}: not kept", outcome, runs)
            return Conclusion()
        description = f"exp {exp.id} merged onto exp {best.id}: {exp.description}"
        free = Usage(cost_usd=0.0)  # the loop merged it: no call of the agent's (its proposal's cost is on exp)
        new = loop.record(Proposal(description, merged, free), exp.agent, exp.model, base=best, merged_from=exp.id)
        self.followed(exp, new)
        loop._finish(exp, Status.DISCARD, f"{why}; merged onto it as exp {new.id}, re-validated there", outcome, runs)
        return Conclusion(revalidate=new)

    def followed(self, exp: Experiment, merge: Experiment) -> None:
        """The merge of a submitted experiment is its submitter's to `wait` for too (before the original's verdict,
        which names it): the merge's verdict, not the original's discard, says whether the change is kept."""
        if exp.agent == SUBMITTER and not merge.status.final:
            mark_unreported(self.loop.ws.state, merge.id)

    def judged_on(self, exp: Experiment, base: Experiment, best: Experiment, outcome: Outcome | None) -> Conclusion:
        """`exp`, trained on `base`, changed every line that `best` (kept meanwhile) changed, the same way (the
        change of `best` is part of its own) or its own way (other values of the same constants): the train.py it
        measured is a change of `best`. Its row and its commit are made on `best` and it is judged there."""
        loop = self.loop
        note = (
            f"trained on exp {base.id}; it changed every line exp {best.id} (kept meanwhile) changed, so it is a "
            f"change of exp {best.id}: judged against exp {best.id}"
        )
        commit = loop.git.commit_onto(best.commit, TRAIN_PY, exp.source, commit_message(exp))
        reason = "; ".join(filter(None, [exp.reason, note]))
        loop.ledger.update(exp.id, **change_of(best, exp.source), commit=commit, reason=reason)
        return self.conclude(loop.ledger.get(exp.id), outcome)

    def remade(self, exp: Experiment, best: Experiment) -> Experiment:
        """`exp`, recorded but not yet trained on an older best, made on `best` where its change merges cleanly
        into a train.py not in flight nor measured there (its row rewritten: nothing of it was measured); else
        `exp` as it was, to be judged on its own base."""
        loop, base = self.loop, self.kept(exp.parent)
        merged = self.merged(base, best, exp.source) if base is not None else None
        if merged is None or guard.rejection(best.source, merged) or loop.duplicate_of(merged, best.commit):
            return exp
        note = f"asked on exp {base.id}, made on exp {best.id} to train"
        loop.ledger.update(exp.id, **change_of(best, merged), reason="; ".join(filter(None, [exp.reason, note])))
        return loop.ledger.get(exp.id)

    def merged(self, base: Experiment, best: Experiment, source: str) -> str | None:
        """`source`'s change of `base` made on `best` (three-way; constants by value where git sees adjacent
        lines in conflict), or None where the two changes conflict."""
        merged, conflicts = self.loop.git.merge_file(base.source, best.source, source)
        if conflicts:
            return merge_constants(base.source, best.source, source)
        return merged

    def kept(self, commit: str) -> Experiment | None:
        return next((e for e in self.loop.ledger.all() if e.commit == commit and e.status == Status.KEEP), None)

    def crashed(self, exp: Experiment, why: str, outcome: Outcome | None = None) -> None:
        """A crash; the baseline's stops the loop."""
        if exp.kind == Kind.BASELINE:
            self.loop._finish(exp, Status.CRASH, f"baseline failed: {why}", outcome)
            raise LoopError(
                f"the baseline train.py failed: {why}",
                hint=f"see {self.loop.ws.state / 'runs'} for the log; fix train.py or the setup, then run again",
            )
        self.loop._finish(exp, Status.CRASH, why, outcome)


def merge_constants(base: str, best: str, win: str, overriding: bool = False) -> str | None:
    """The win's change onto the best where it changed constants only: its new values set in the best's
    train.py, unless the best changed one of them to another value (then None, a conflict; `overriding`: the
    win's value); one both set to the same value is the best's already. `git merge-file` takes changes to
    adjacent lines for a conflict, and the constants are a block of adjacent lines: without this, a win on LR
    made on a base older than a kept BATCH change would be lost, and so would a win on LR and BATCH beside a
    kept change of BATCH and WEIGHT_DECAY with the same BATCH (bench/simulate.py found both)."""
    changes = changed_constants(base, win)
    if changes is None:
        return None  # it changed more than constants (or wrote them in its own way): git's merge stands
    try:
        then, now = read_constants(base), read_constants(best)
        if any(n not in now for n in changes):
            return None
        if not overriding and any(now[n].value not in (then[n].value, value) for n, value in changes.items()):
            return None
        return set_constants(best, {n: v for n, v in changes.items() if now[n].value != v})
    except (SyntaxError, ValueError):
        return None
