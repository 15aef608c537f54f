"""Measuring the best again: a kept change trained on more seeds, its value the mean of its runs.

A change is kept because its run came out low. Part of that is luck (the winner's curse), and its value is the bar
every later change must beat: measured once, the bar stays lucky, and true wins that measure under it are refused
for hours (bench/simulate.py: at 16 workers a bar 1.8 mbpb lucky refused 26 true wins over ~14 rounds). With several
workers the scheduler queues the best's missing runs (CONFIRMED_RUNS in all) before anything else, and each run's
value joins the row's runs and its mean becomes its val_bpb. Its verdict stands: it is not judged again, and the
branch does not move.

A run of it that fails (a train.py that diverges on another seed) ends its measuring: the row's reason says so, and
its value rests on the runs it has. So does a run far worse than the runs judged (judge.beyond_seeds), not joined to
them, and so do MAX_ATTEMPTS kills of the loop while its runs train (`attempts` counts them, as for an experiment in
flight). A best that another keep replaced is measured no further: its runs not yet
started are dropped, those training are recorded. A killed loop's next start finds the best's missing runs again.
"""

from __future__ import annotations

import json
import statistics

from autoresearch.loop.engine import MAX_ATTEMPTS, ResearchLoop
from autoresearch.loop.executor import Outcome
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.judge import beyond_seeds, measured_noise
from autoresearch.loop.recovery import died_running
from autoresearch.loop.workers import Active
from autoresearch.vocabulary import Kind, RunEnd

# The runs a kept change gets in all with several workers (a marginal win has two already). One worker does not:
# each would be a whole run of its night.
CONFIRMED_RUNS = 3
NOT_CONFIRMED = "not measured again:"  # how the note that ends a kept row's measuring begins, in its reason


def not_confirmed(why: str) -> str:
    """The note that ends a kept row's measuring, in its reason."""
    return f"{NOT_CONFIRMED} {why}; its val_bpb is the mean of its runs that ended well"


class Confirmations:
    """The kept experiments being measured again, for a scheduler that hands their runs to workers."""

    def __init__(self, loop: ResearchLoop, runs: int):
        """`runs`: how many runs the best gets in all (0: it is not measured again)."""
        self.loop, self.runs = loop, runs
        self.active: dict[int, Active] = {}  # by experiment: its runs wanted and those training

    def __contains__(self, exp_id: int) -> bool:
        return exp_id in self.active

    def due(self) -> tuple[set[int], Active | None]:
        """After a verdict or a start: the experiments whose queued runs to drop (a former best's), and the best's
        measuring to start now, if it wants runs it has not got (its Active, to queue)."""
        best = self.loop.best()
        former = {i for i in self.active if best is None or i != best.id}
        for exp_id in former:
            if not self.active[exp_id].running:
                del self.active[exp_id]
        if best is None or best.kind != Kind.EXPERIMENT or best.id in self.active:
            return former, None
        if len(best.run_values) >= self.runs or NOT_CONFIRMED in best.reason:
            return former, None
        if best.attempts >= MAX_ATTEMPTS:
            self.stop(best, died_running(best))
            return former, None
        self.active[best.id] = Active(best.id, self.runs, best.attempts)
        return former, self.active[best.id]

    def took(self, exp: Experiment, run: int, outcome: Outcome) -> None:
        """Run `run` of `exp` ended (OK, or failed by itself): its value joins the others' mean, or its measuring
        ends; once no run of it trains and none is wanted, it is forgotten."""
        act = self.active[exp.id]
        noise = measured_noise(self.loop.ledger.all()) if outcome.status == RunEnd.OK else None
        if outcome.status == RunEnd.OK and (why := beyond_seeds(exp.val_bpb, outcome.val_bpb, noise)):
            if NOT_CONFIRMED not in exp.reason:
                self.stop(exp, f"its run {run + 1} {why}")
        elif outcome.status == RunEnd.OK:
            first, indices = exp.val_bpb, exp.run_indices
            exp.runs = json.dumps([*exp.run_values, outcome.val_bpb])
            exp.seeds = json.dumps([*indices, run])
            exp.val_bpb = statistics.fmean(exp.run_values)
            self.loop.ledger.update(exp.id, runs=exp.runs, seeds=exp.seeds, val_bpb=exp.val_bpb)
            self.loop.ledger.write_tsv()
            again = (  # a run that trained on after another stopped the measuring: it counts, and says so
                f"exp {exp.id}: its run {run + 1}, still training when its measuring stopped, came out"
                if NOT_CONFIRMED in exp.reason
                else f"exp {exp.id} measured again:"
            )
            self.loop.reporter.message(
                f"{again} {outcome.val_bpb:.6f}; its val_bpb is now {exp.val_bpb:.6f}, the mean of "
                f"{len(exp.run_values)} runs (was {first:.6f})"
            )
        elif NOT_CONFIRMED not in exp.reason:
            self.stop(exp, f"its run {run + 1} failed: {outcome.reason}")
        if not act.running and (len(exp.run_values) >= act.wanted or NOT_CONFIRMED in exp.reason):
            del self.active[exp.id]

    def stop(self, exp: Experiment, why: str) -> None:
        """End `exp`'s measuring: its reason says why, and that its value rests on the runs it has (and any
        training now, recorded as they end)."""
        note = not_confirmed(why)
        exp.reason = f"{exp.reason}; {note}"
        self.loop.ledger.update(exp.id, reason=exp.reason)
        self.loop.ledger.write_tsv()
        training = len(self.active[exp.id].running) if exp.id in self.active else 0
        on = f" (and its {'run' if training == 1 else f'{training} runs'} training now, once ended)" if training else ""
        self.loop.reporter.message(f"exp {exp.id}: {note}{on}")
