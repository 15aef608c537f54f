"""`autoresearch try`: the train.py a coding agent left in the working tree, judged as one experiment."""

from __future__ import annotations

from autoresearch.agents.base import Proposal
from autoresearch.loop import guard
from autoresearch.loop.engine import LoopError, ResearchLoop
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.recovery import written_for
from autoresearch.workspace.integrity import is_loop_own
from autoresearch.workspace.workspace import TRAIN_PY


def try_working_tree(loop: ResearchLoop, description: str) -> Experiment:
    """`autoresearch try`: judge the train.py a coding agent left in the working tree, as one experiment."""
    ws, git = loop.ws, loop.git
    loop.recover_workspace(taking_edit=True)  # what a kill left: an agent's litter, the edit of a stopped `try`
    loop.check_share([{}], command="try")  # every core, as one worker: not the share of a baseline's several
    candidate = ws.read_train_py()
    for exp in loop.ledger.in_flight():  # killed during a run of its own: train.py is that run's, seeded
        if written_for(candidate, exp):
            candidate = exp.source
    # The loop's own files are no change of the user's, even where a .gitignore trimmed by hand lets git list them.
    if strays := {p for p in git.changed_paths() - {TRAIN_PY, "program.md"} if not is_loop_own(p)}:
        raise LoopError(
            f"only train.py may change, but so did: {', '.join(sorted(strays))}",
            hint="revert those files (git checkout / rm), then try again; nothing was run",
        )
    with loop.holding(candidate):  # train.py is another's meanwhile (the unfinished one, the baseline's)
        if (pending := loop.recover(taking_edit=True)) is not None:  # a `try` that was killed: finish it first
            finished = loop._evaluate(pending)
        if loop.best() is None:
            ws.write_train_py(git.show("HEAD", TRAIN_PY))
            loop.baseline()
        loop.measure_noise_again()  # a ledger rebuilt without the baseline's seeds: no verdict without them
    if pending is not None and finished.source == candidate:  # the same `try` again: it is judged once
        ws.write_train_py(git.show("HEAD", TRAIN_PY))  # as any `try` leaves it: the best
        return finished
    best = loop._require_best()
    if candidate == best.source:
        ws.write_train_py(candidate)
        if len(loop.ledger.all()) == 1:
            return best  # a fresh workspace: the baseline was what there was to measure
        raise LoopError(f"train.py is the same as the best (exp {best.id})", hint="edit train.py first")
    if why := guard.rejection(best.source, candidate):
        ws.write_train_py(candidate)
        raise LoopError(f"rejected before running: {why}", hint="change train.py and try again")
    return loop.submit(Proposal(description, candidate), agent="try", model="")
