"""Recovery: after a crash or a kill, git is brought in line with the ledger before the loop goes on.

The ledger is written before git moves (loop/engine.py), so it says what happened: an experiment in flight
is trained again (at most MAX_ATTEMPTS times), a proposal interrupted while the agent worked is a crash, a
verdict whose git step did not happen is applied. It also holds what every start and every run is checked
against: the baseline's apparatus and setup, as its runs recorded them. A part of `ResearchLoop`, which it is
mixed into.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from autoresearch.loop.executor import Outcome, reap_orphan
from autoresearch.loop.ledger import Experiment
from autoresearch.loop.settings import APPARATUS_HINT, SETUP_HINT, LoopError
from autoresearch.vocabulary import Kind, RunEnd, Status
from autoresearch.workspace.constants import read_constants, set_constants
from autoresearch.workspace.workspace import TRAIN_PY

MAX_ATTEMPTS = 2  # a run during which the loop died is tried once more on the next start, then is a crash


class Recovery:
    """`ResearchLoop`'s recovery (it has the workspace, git, the ledger and the verdict steps this uses)."""

    def baseline_result(self) -> dict:
        """What the baseline's last run that ended well recorded (evaluator/result.py's fields), kept or still
        measuring its seeds; {} before there is one."""
        measured = [e for e in self.ledger.all() if e.kind == Kind.BASELINE and e.status != Status.CRASH]
        return measured[-1].recorded if measured else {}

    def setup_differs(self, setup: str | None) -> str | None:
        """Why a run measured on `setup` (Result.setup) is not comparable with the baseline's runs, or None: an
        A100's score beside an H200's, or one core's beside two, says nothing of the change. The baseline's first
        seed to end sets what its other seeds must share too."""
        expected = self.baseline_result().get("setup")
        if setup and expected and setup != expected:
            return f"it was measured on {setup}, the baseline's runs on {expected}"
        return None

    def comparable(self, outcome: Outcome, run_dir: Path) -> Outcome:
        """`outcome`, or an apparatus change where it ended well on another setup than the baseline's runs; the
        result of a run refused either way (another apparatus too) is set aside in `run_dir`."""
        if outcome.status == RunEnd.OK and outcome.result and (why := self.setup_differs(outcome.result.setup)):
            outcome = replace(outcome, status=RunEnd.CHANGED, reason=why, hint=SETUP_HINT)
        if outcome.status == RunEnd.CHANGED:
            set_aside(run_dir)
        return outcome

    def check_setup(self, exp: Experiment) -> None:
        """Stop before judging a change measured on another setup than the baseline's runs. Only one that ended
        before the baseline's first seed can be (each later run is checked as it ends; several workers): its runs
        are dropped, and the next start trains it again where the baseline's ran."""
        if why := self.setup_differs(self.ledger.get(exp.id).recorded.get("setup")):
            self.ledger.update(exp.id, runs="[]", seeds="[]", result="{}")
            for run_dir in self.ws.state.glob(f"runs/{exp.id}-*"):
                set_aside(run_dir)
            raise LoopError(f"experiment {exp.id} stopped: {why}", hint=SETUP_HINT)

    def check_apparatus(self) -> None:
        """Refuse to go on when the harness, data or budget differ from the baseline's (its seeds measured so far)."""
        measured = self.baseline_result().get("harness_fingerprint")
        if measured and measured != self.fingerprint:
            raise LoopError(
                f"the apparatus changed since the baseline ({measured} -> {self.fingerprint})", hint=APPARATUS_HINT
            )

    def recover(self, taking_edit: bool = False) -> Experiment | None:
        """Bring git in line with the ledger after a crash or kill; return an experiment to finish, if any.
        `taking_edit`: the caller has read an edit of train.py and puts it back itself (`try`)."""
        self.check_apparatus()
        in_flight = self.ledger.in_flight()
        if len(in_flight) > 1 or any(e.worker or e.status == Status.QUEUED for e in in_flight):
            raise LoopError(
                f"{len(in_flight)} experiments of a loop with several workers (or submitted) are still in flight",
                hint="`autoresearch run` with the same --gpus or --workers finishes them first",
            )
        pending = in_flight[0] if in_flight else None
        if pending is not None:
            for run_dir in self.ws.state.glob(f"runs/{pending.id}-*"):
                if reap_orphan(run_dir):
                    self.reporter.message(f"killed a training run of experiment {pending.id} left from before")
            if pending.kind == Kind.PROPOSAL:
                self._finish(pending, Status.CRASH, "interrupted while the agent was proposing")
                return None
            if not taking_edit:  # before anything checks out another train.py
                self.check_no_edit(pending)
            if pending.attempts >= MAX_ATTEMPTS:
                why = f"the loop died {pending.attempts} times while this train.py ran: it is not run again"
                self._finish(pending, Status.CRASH, why)
                if pending.kind == Kind.BASELINE:
                    raise LoopError(f"the baseline train.py failed: {why}", hint="fix train.py, then run again")
                return None
            if pending.commit is None:
                head = self.git.head()
                if head != pending.parent and self.git.message(head).startswith(f"exp {pending.id}:"):
                    commit = head
                else:
                    self.git.move_to(pending.parent, TRAIN_PY)
                    self.ws.write_train_py(pending.source)
                    commit = self.git.commit(commit_message(pending), TRAIN_PY)
                self.ledger.update(pending.id, commit=commit)
                pending.commit = commit
            self.git.move_to(pending.commit, TRAIN_PY)
            return pending
        self.recover_branch()
        return None

    def recover_branch(self) -> None:
        """Bring the branch to the best, where a verdict was recorded but the loop died before git followed, or
        where it is on an experiment one worker left in flight (the loop with several workers takes it up)."""
        best = self.best()
        if best is not None and self.git.head() != best.commit:
            last = self.ledger.all()[-1]
            if last.status in (Status.DISCARD, Status.CRASH) and last.commit == self.git.head():
                self._apply_git(last)
            elif best.parent == self.git.head():  # kept, but the loop died before the branch moved to it
                self._apply_git(best)
            elif not last.status.final and last.commit == self.git.head() and last.parent == best.commit:
                # one worker was training it on the branch (a `try` or `run` stopped): it trains in a worktree
                # now; an edit of train.py in the working tree stays
                self.git.advance(best.commit, TRAIN_PY)
            else:
                raise LoopError(
                    f"the branch is at {self.git.head()[:7]}, but the best experiment is {best.commit[:7]}",
                    hint=f"someone moved the branch by hand; `git reset --hard {best.commit[:7]}` to continue",
                )

    def check_no_edit(self, pending: Experiment) -> None:
        """Refuse to resume `pending` while train.py holds an edit the loop did not write: its train.py would be
        checked out over it (a `try` that stopped leaves the edit it was given there)."""
        try:
            text = self.ws.read_train_py()
        except FileNotFoundError:  # nothing to keep: the checkout puts it back
            return
        except (OSError, ValueError):  # unreadable as text: nothing the loop wrote
            text = None
        if TRAIN_PY in self.git.changed_paths() and (text is None or not written_for(text, pending)):
            raise LoopError(
                f"train.py holds an edit, and experiment {pending.id} is in flight: resuming would overwrite it",
                hint=f'`autoresearch try -m "..."` finishes experiment {pending.id}, then judges the edit; or '
                "drop the edit (`git checkout train.py`) and run again",
            )

    def check_clean(self) -> None:
        if TRAIN_PY in self.git.changed_paths():
            raise LoopError(
                "train.py has uncommitted changes",
                hint="revert them (`git checkout train.py`), or test them with `autoresearch try -m ...`",
            )


def commit_message(exp: Experiment) -> str:
    return f"exp {exp.id}: {exp.description}"


def result_columns(outcome: Outcome) -> dict:
    """The row's `result` after a run that ended well, before the verdict: the baseline's other seeds, and every
    run after, must share its apparatus and setup (Recovery.check_apparatus, setup_differs); a change that ended
    before the baseline's first seed is checked once that is known (check_setup)."""
    return {"result": json.dumps(outcome.result.__dict__)} if outcome.result else {}


def set_aside(run_dir: Path) -> None:
    """Rename a refused run's result (measured on another apparatus or setup): `rebuild-ledger` reads every
    `result.json`, and must not take it for a run of its experiment."""
    result = run_dir / "result.json"
    if result.is_file():
        result.replace(run_dir / "result.refused.json")


def seeded(source: str, run: int) -> str:
    """train.py for run `run` of an experiment: SEED + run, so repeated runs measure seed-to-seed noise."""
    seed = read_constants(source).get("SEED") if run else None
    return set_constants(source, {"SEED": seed.value + run}) if seed is not None else source


def written_for(text: str, exp: Experiment) -> bool:
    """Whether train.py's `text` is what the loop wrote for a run of `exp`: its source, or a seeded run of it."""
    try:
        return any(text == seeded(exp.source, run) for run in range(len(exp.run_values) + 2))
    except Exception:  # a source the loop could not seed (a SEED that is no number): it wrote the source alone
        return text == exp.source
