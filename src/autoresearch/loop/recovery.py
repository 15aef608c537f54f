"""Recovery: after a crash or a kill, git is brought in line with the ledger before the loop goes on.

The ledger is written before git moves (loop/engine.py), so it says what happened: an experiment in flight
is trained again (at most MAX_ATTEMPTS times), a proposal interrupted while the agent worked is a crash, a
verdict whose git step did not happen is applied. What a kill leaves outside the ledger is put right first
(`recover_workspace`): an agent still running, the workspace as its turn cut short left it (put back from the
snapshot the turn kept, TURN_SNAPSHOT), the edit a `try` held aside (HELD_EDIT), a train.py the loop wrote
for a run. It also holds what every start and every run is checked against: the baseline's apparatus and
setup, as its runs recorded them. And after a ledger rebuilt without its runs' results, what it lacks for a
verdict is trained again first (`measure_noise_again`). A part of `ResearchLoop`, which it is mixed into.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator

from autoresearch.agents import turn_cgroups
from autoresearch.agents.command_agent import AGENT_PID
from autoresearch.errors import LedgerError
from autoresearch.files import read_regular, write_text_atomic
from autoresearch.loop import activity
from autoresearch.loop.executor import Outcome, reap_orphan
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.judge import measured_noise, run_values
from autoresearch.loop.settings import LoopError
from autoresearch.loop.watch import LEFT_REFS, REPORTS, put_back_left, report_again
from autoresearch.orphans import reap, remove_left_boxes
from autoresearch.vocabulary import Kind, RunEnd, Status
from autoresearch.workspace.constants import read_constants, set_constants
from autoresearch.workspace.disk import disk_full_is_an_error
from autoresearch.workspace.init import default_tag
from autoresearch.workspace.integrity import is_human
from autoresearch.workspace.quarantine import FOLDER as QUARANTINE
from autoresearch.workspace.quarantine import YOURS, fresh_folder
from autoresearch.workspace.workspace import TRAIN_PY, TrainPyUnreadable, Workspace

MAX_ATTEMPTS = 2  # a run during which the loop died is tried once more on the next start, then is a crash
TURN_SNAPSHOT = "turn.json"  # in the state folder: the workspace as an agent's turn found it, while it lasts
HELD_EDIT = "held-train.py"  # in the state folder: the edit a `try` was given, while train.py is another's
LEFT = "left"  # in the state folder: bundles of the commits refs were moved to in a turn cut short by a kill


def left_by_workers(in_flight: list[Experiment]) -> bool:
    """Whether the experiments in flight were left by a loop with several workers, or submitted: the one-worker
    loop cannot take them up."""
    return len(in_flight) > 1 or any(e.worker or e.status == Status.QUEUED for e in in_flight)


def judged_left_open(experiments: list[Experiment]) -> list[Experiment]:
    """The experiments judged already with a run in progress when a loop with several workers died (the best measured
    again, or one whose verdict came before its last run ended)."""
    return [e for e in experiments if e.status.final and activity.left_open(e)]


class Recovery:
    """`ResearchLoop`'s recovery (it has the workspace, git, the ledger and the verdict steps this uses)."""

    def recover(self, taking_edit: bool = False) -> Experiment | None:
        """Bring git in line with the ledger after a crash or kill; return an experiment to finish, if any.
        `taking_edit`: the caller has read an edit of train.py and puts it back itself (`try`, which has called
        recover_workspace itself, before it read the edit)."""
        if not taking_edit:
            self.recover_workspace()
        self.check_apparatus()
        self.check_attached()
        in_flight = self.ledger.in_flight()
        if left_by_workers(in_flight):
            raise LoopError(
                f"{len(in_flight)} experiments of a loop with several workers (or submitted) are still in flight",
                hint=f"{activity.run_command(self.ws.state)} finishes them first",
            )
        self.reap_judged()  # `try` after a loop with several workers killed while it measured the best again
        pending = in_flight[0] if in_flight else None
        if pending is not None:
            self.left_running(pending)
            self.check_branch(pending)
            if pending.kind == Kind.PROPOSAL:
                self._finish(pending, Status.CRASH, "interrupted while the agent was proposing")
                return None
            if not taking_edit:  # before anything checks out another train.py
                self.check_no_edit(pending)
            if pending.attempts >= MAX_ATTEMPTS:
                self._finish(pending, Status.CRASH, died_running(pending))
                if pending.kind == Kind.BASELINE:
                    raise baseline_died(pending, self.ws)
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

    def reap_judged(self) -> None:
        """Kill the runs a dead loop with several workers had in progress of experiments judged already (the best
        measured again, or one whose verdict came before its last run ended), and forget when they started."""
        for exp in judged_left_open(self.ledger.all()):
            self.left_running(exp)

    def left_running(self, exp: Experiment) -> None:
        """Kill what is left of `exp`'s runs that a dead loop had in progress, and forget when they started."""
        for run_dir in self.ws.state.glob(f"runs/{exp.id}-*"):
            if reap_orphan(run_dir):
                self.reporter.message(f"killed a training run of experiment {exp.id} left from before")
        if activity.left_open(exp):
            exp.spans = activity.without_open(exp)
            self.ledger.update(exp.id, spans=exp.spans)

    def check_attached(self) -> None:
        """The loop keeps its experiments on its branch, so HEAD must be on it: detached (a person's `git checkout
        <commit>` to look at an experiment), kept experiments would move no branch and the next checkout of it would
        drop them out of sight. Where one branch of the loop's is at that very commit HEAD goes back onto it, which
        changes no file; elsewhere the loop stops."""
        if any((self.git.git_dir / rebasing).exists() for rebasing in ("rebase-merge", "rebase-apply")):
            raise LoopError(  # checking a branch out stops at the rebase's conflicts: "you need to resolve..."
                "a git rebase is in progress in the workspace: the loop keeps its experiments on its own branch",
                hint="`git rebase --abort` puts the branch back as it was before it, then run again",
            )
        branch = self.git.branch()
        unborn = branch != "HEAD" and self.git.ref(f"refs/heads/{branch}") is None  # HEAD names a branch, no commit
        if branch != "HEAD" and not unborn:
            return
        head = None if unborn else self.git.head()
        if head is not None:
            at = self.git("for-each-ref", "--points-at", head, "--format=%(refname:short)", "refs/heads/autoresearch/")
            if len(names := at.split()) == 1:
                self.git("symbolic-ref", "HEAD", f"refs/heads/{names[0]}")
                self.reporter.message(f"git's HEAD was detached at {head[:7]}, where branch {names[0]} is: on it again")
                return
        ours = self.git("for-each-ref", "--format=%(refname:short)", "refs/heads/autoresearch/").split()
        if len(ours) == 1:
            hint = f"`git checkout {ours[0]}`"
        elif ours:
            hint = f"`git checkout BRANCH`, the loop's branch of this workspace, one of {', '.join(ours)}"
        elif (at_best := (best.commit if (best := self.best()) else head)) is not None:  # deleted: made again
            hint = f"the loop's branch is gone: `git checkout -b autoresearch/{default_tag()} {at_best[:7]}` makes it "
            hint += "again at the best experiment"
        else:
            hint = "`git checkout -b autoresearch/NAME COMMIT` at the commit of the loop's best experiment"
        where = f"names the branch {branch}, which does not exist" if unborn else f"is detached (at {head[:7]})"
        raise LoopError(
            f"git's HEAD {where}: the loop keeps its experiments on its branch", hint=f"{hint}, then run again"
        )

    def recover_branch(self) -> None:
        """Bring the branch to the best, where a verdict was recorded but the loop died before git followed, or
        where it is on an experiment one worker left in flight (the loop with several workers takes it up).
        results.tsv follows the ledger first: a verdict's row is written before it, and a kill can come between."""
        best = self.best()
        if best is not None and best.commit and not self.git.has_commit(best.commit):
            # Another workspace's state folder (a backup restored in the wrong place): written from it, results.tsv
            # would lose this workspace's lines, and the branch would be sent to a commit git has not.
            raise LedgerError(
                f"the ledger's best, experiment {best.id}, is commit {best.commit[:7]}, which this workspace's git "
                f"does not have: {self.ws.state} is another workspace's (or the commit was pruned from git)",
                hint="put this workspace's own .autoresearch/ back; where it is lost, move that one aside "
                "(`mv .autoresearch .autoresearch.other`) and `autoresearch rebuild-ledger` makes it from results.tsv "
                "and git",
            )
        self.ledger.write_tsv()
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
                    hint=self._moved_by_hand(best.commit),
                )

    def _moved_by_hand(self, best: str) -> str:
        """What to do where a person committed on the branch: never a `reset --hard` that drops their work unsaid.
        Commits of program.md or prompts/ alone on the best need none: the loop reads those from the working tree."""
        head = self.git.head()
        ahead = self.git("merge-base", best, head, check=False).strip() == best  # the commits are on the best
        # --no-renames: a train.py moved into prompts/ is train.py deleted, not a prompt added
        listed = self.git("diff", "--name-only", "--no-renames", "-z", best, head, check=False)
        changed = set(filter(None, listed.split("\0")))
        if ahead and changed and all(is_human(path) for path in changed):
            return (
                f"someone committed {', '.join(sorted(changed))} on the branch; `git reset --soft {best[:7]}` takes "
                "the commits back and keeps the files as you wrote them (the loop reads them from the working tree)"
            )
        return keep_then_reset(head, best)

    def recover_workspace(self, taking_edit: bool = False) -> None:
        """What a kill left outside the ledger: an agent still running is killed, its turn cut short is put back,
        an edit held by a `try` comes back to train.py. `taking_edit`: train.py is the edit to judge (`try`),
        whoever left it. Before any other git command: an agent's config could have made one run its code."""
        put_back_turn(self.ws, self.reporter.message, keep_train_py=taking_edit)
        remove_left_boxes(self.ws.state)  # the experiments' folders of evaluators killed with the loop
        self.left_in_flight = {e.id for e in self.ledger.in_flight()}  # before this start finishes or crashes them
        held = self.ws.state / HELD_EDIT
        if not held.exists():
            return
        try:
            edit = read_regular(held, 64 << 20).decode()  # not a FIFO an agent left there, which would wedge
        except (OSError, ValueError):
            raise LoopError(
                f"the edit given to a `try` that was stopped cannot be read (.autoresearch/{HELD_EDIT})",
                hint="look at it, copy what you want of it into train.py, delete it, then run again",
            ) from None
        text = train_py_text(self.ws)
        if text not in (None, edit, self.ws.committed_train_py()) and self._left_by_kill(text) is None:
            raise LoopError(
                f"train.py holds an edit, and so does {HELD_EDIT} in .autoresearch (the edit given to a `try` "
                "that was stopped)",
                hint=f"keep the one you want: `mv .autoresearch/{HELD_EDIT} train.py`, or delete that file; "
                "then run again",
            )
        if text != edit:
            self.ws.write_train_py(edit)
            self.reporter.message("train.py holds again the edit given to a `try` that was stopped")
        held.unlink()

    @contextlib.contextmanager
    def holding(self, edit: str) -> Iterator[None]:
        """While the loop trains another train.py (an unfinished experiment, the baseline), `edit` waits in the
        state folder, so that not even a kill loses it; train.py is `edit` again afterwards, whatever happened."""
        held = self.ws.state / HELD_EDIT
        with disk_full_is_an_error("keeping the edit aside"):
            write_text_atomic(held, edit)
        try:
            yield
        finally:
            self.ws.write_train_py(edit)
            held.unlink()

    def turn_over(self) -> None:
        """What an agent's turn came to is recorded (a row, or the workspace as it was): its snapshot is not needed."""
        turn_over(self.ws)

    def check_branch(self, pending: Experiment) -> None:
        """Refuse to resume `pending` where the branch is on neither the commit it was made from nor its own: a
        person committed there since, and resuming (or crashing it) would reset that commit away unsaid."""
        head = self.git.head()
        if head in (pending.parent, pending.commit) or self.git.message(head).startswith(f"exp {pending.id}:"):
            return
        back = (pending.commit or pending.parent)[:7]
        raise LoopError(
            f"the branch is at {head[:7]}, but experiment {pending.id} in flight is {back}",
            hint=keep_then_reset(head, back),
        )

    def check_no_edit(self, pending: Experiment) -> None:
        """Refuse to resume `pending` while train.py holds an edit the loop did not write: its train.py would be
        checked out over it (a `try` that stopped leaves the edit it was given there)."""
        if not self.ws.train_py.exists():  # nothing to keep: the checkout puts it back
            return
        text = train_py_text(self.ws)
        if TRAIN_PY in self.git.changed_paths() and (text is None or not written_for(text, pending)):
            raise LoopError(
                f"train.py holds an edit, and experiment {pending.id} is in flight: resuming would overwrite it",
                hint=f'`autoresearch try -m "..."` finishes experiment {pending.id}, then judges the edit; or '
                "drop the edit (`git checkout train.py`) and run again",
            )

    def check_clean(self, edit_ok: bool = False) -> None:
        """Before experiments start, train.py must be the branch's (line endings aside). One a kill left (a run's
        of an experiment in flight or just crashed by this start, the best's parent's where the branch had moved
        on) is put back; an edit is refused, unless `edit_ok` (several workers fed by submissions: train.py is
        the submitter's to edit, left alone). TrainPyUnreadable where it is missing, a folder or no text: not an
        edit to revert."""
        if TRAIN_PY not in self.git.changed_paths() or edit_ok:
            return
        text = self.ws.read_train_py()
        if text == self.ws.committed_train_py():
            return
        if (exp := self._left_by_kill(text)) is not None:
            self.ws.write_train_py(self.git.show("HEAD", TRAIN_PY))
            self.reporter.message(
                f"train.py was experiment {exp.id}'s, as a stopped loop leaves it: the best's again"
                + (f" (exp {exp.id}'s is commit {exp.commit[:7]})" if exp.commit else "")
            )
            return
        raise LoopError(
            "train.py has uncommitted changes",
            hint="revert them (`git checkout train.py`), or test them with `autoresearch try -m ...`",
        )

    def _left_by_kill(self, text: str) -> Experiment | None:
        """The experiment whose train.py (or a run's of it) a kill can have left in the working tree, if `text` is
        that: one in flight when this start began (finished or crashed since), or the best's parent (a branch
        move cut in half). A person's own copy of an older one is an edit like any other."""
        best, was, rows = self.best(), self.left_in_flight, self.ledger.all()
        suspects = [e for e in rows if e.id in was or not e.status.final]
        suspects += [e for e in rows if best and e.commit == best.parent and e.status == Status.KEEP]
        suspects += [base] if (base := self.unmeasured_baseline()) else []  # its seeds trained again, cut short
        return next((e for e in suspects if written_for(text, e)), None)

    def unmeasured_baseline(self) -> Experiment | None:
        """The kept baseline, where the noise cannot be measured for want of its seeds' values: a ledger rebuilt after
        its runs' folders were lost (results.tsv keeps only their mean); None where the noise is measured."""
        rows = self.ledger.all()
        base = next((e for e in rows if e.kind == Kind.BASELINE and e.status == Status.KEEP), None)
        # its seeds there (every ledger but a rebuilt one): no need to measure the noise at every step to know it
        if base is None or len(run_values(base)) > 1 or measured_noise(rows) is not None:
            return None
        return base

    def measure_noise_again(self) -> None:
        """Train again, before any change is judged, what a ledger rebuilt without its runs' results lacks for a
        verdict (BROKE, fixed: after `rm -rf .autoresearch` and `rebuild-ledger`, every `run` trained a change, then
        stopped with "no noise measured yet"): the kept baseline's seeds (`unmeasured_baseline`: results.tsv keeps only
        their mean), and the best's value where none survived (results.tsv lost too: git alone has no number)."""
        if (base := self.unmeasured_baseline()) is not None:
            self._measure_again(base, self.config.baseline_runs, "seeds' values, to measure the noise")
        if (best := self.best()) is not None and best.val_bpb is None:
            self._measure_again(best, 1, "val_bpb, the bar a change must beat")

    def _measure_again(self, exp: Experiment, wanted: int, lacking: str) -> None:
        """Train `exp`'s train.py (kept) on the seeds it lacks, saying so; its runs and their mean replace what the
        rebuild read, and the working tree's train.py is the branch's again after."""
        runs, lost = run_values(exp), set()
        if len(runs) >= wanted:  # as many as this loop's settings ask (--baseline-runs 1, say): nothing to train
            return
        self.reporter.message(
            f"exp {exp.id} has no {lacking.partition(',')[0]} in the ledger (rebuilt without its runs' results): "
            f"training it again ({wanted} run{'s' if wanted > 1 else ''}) for its {lacking}"
        )
        try:
            while len(runs) < wanted:
                outcome = self._train(exp, len(runs))
                if self.tries_again(exp, len(runs), outcome, lost):
                    continue
                if outcome.status != RunEnd.OK:
                    raise LoopError(
                        f"exp {exp.id}, trained again for its {lacking.partition(',')[0]}, failed: {outcome.reason}",
                        hint=outcome.hint or f"see {self.ws.state / 'runs'} for the log; fix the setup, then run again",
                    )
                runs.append(outcome.val_bpb)
                exp.runs = json.dumps(runs)
                self.ledger.update(exp.id, runs=exp.runs, **result_columns(outcome))
        finally:
            self.ws.write_train_py(self.ws.committed_train_py())  # _train leaves the baseline's, not the best's
        exp.val_bpb = statistics.fmean(runs)
        exp.reason = f"{exp.reason}; measured again after the ledger was rebuilt: mean of {len(runs)} runs"
        self.ledger.update(exp.id, val_bpb=exp.val_bpb, reason=exp.reason)
        self.ledger.write_tsv()


def keep_then_reset(head: str, target: str) -> str:
    """The hint where a person's commit is on the branch and the loop needs it at `target`: save it first."""
    return (
        f"someone moved the branch by hand; keep that commit (`git branch mine {head[:7]}`), then "
        f"`git reset --hard {target[:7]}` to continue"
    )


def died_running(exp: Experiment) -> str:
    """Why an experiment whose runs the loop died in MAX_ATTEMPTS times is a crash."""
    return f"the loop died {exp.attempts} times while this train.py ran: it is not run again"


def baseline_died(exp: Experiment, ws: Workspace) -> LoopError:
    """The error that stops a loop whose baseline it died in MAX_ATTEMPTS times: the baseline is the user's own
    train.py, and what killed the loop may have been the user, the machine or the run."""
    return LoopError(
        f"the loop was killed {exp.attempts} times while the baseline (exp {exp.id}) trained, so it is recorded as a "
        "crash",
        hint="run again to measure the baseline anew. If the loop dies again, look for what kills it: the machine "
        "running out of memory (`dmesg`; a smaller DEVICE_BATCH_SIZE in train.py) or the runs' logs in "
        f"{ws.state / 'runs'}",
    )


def put_back_turn(ws: Workspace, say: Callable[[str], None], keep_train_py: bool = False) -> None:
    """The loop was killed during an agent's turn: kill the agent if it still runs, put back what its turn changed
    (saved by its Watch in turn.json), its unfinished edit of train.py too unless `keep_train_py`; all of it kept
    in the quarantine. Before any other git command: the agent's config could make one run its code."""
    if reap(ws.state / AGENT_PID):
        say("killed an agent the loop had started before it was stopped")
    turn_cgroups.sweep_left()
    (ws.state / AGENT_PID).unlink(missing_ok=True)
    kept = ws.state / TURN_SNAPSHOT
    if not kept.exists():
        return
    try:  # a folder of its own: two starts may recover in one second
        quarantine = fresh_folder(ws.state / QUARANTINE, time.strftime("%Y%m%d-%H%M%S"))
    except OSError as exc:
        raise LoopError(
            f"the loop was stopped during an agent's turn, and what it left cannot be put aside: {exc}",
            hint="make .autoresearch/quarantine a folder you can write to, then run again",
        ) from None
    put = put_back_left(ws.git, quarantine, kept, ws.state / LEFT)
    if put is None:
        raise LoopError(
            f"the loop was stopped during an agent's turn, and what the turn began from cannot be read "
            f"(.autoresearch/{TURN_SNAPSHOT})",
            hint="see what the agent left (`git status`, `git log --all`, .git/hooks, .git/config), put it "
            f"right, delete .autoresearch/{TURN_SNAPSHOT}, then run again",
        )
    what, left, lost = put
    fetch = f"`git fetch {os.path.relpath(left, ws.root)} '{LEFT_REFS}*:{LEFT_REFS}*'`" if left else ""
    if lost:  # the snapshot stays: every start refuses until a person has looked
        kept_too = f"; the commits the refs were moved to since are kept in a bundle: {fetch}" if left else ""
        raise LoopError(
            f"the loop was stopped during an agent's turn, and git's objects it changed are not what they were: "
            f"{', '.join(lost[:4])} (what it changed is kept in {os.path.relpath(quarantine, ws.root)}){kept_too}",
            hint="the history can no longer say what was measured: keep what you committed since the kill (`git log "
            "--all`), then restore .git from a copy, or start a new workspace from the best's train.py; then delete "
            f".autoresearch/{TURN_SNAPSHOT} and run again",
        )
    if not keep_train_py and ws.train_py.exists() and train_py_text(ws) != ws.committed_train_py():
        # The agent's unfinished edit, or one of yours since the kill: it stays however the quarantine is emptied
        quarantine = quarantine.rename(quarantine.with_name(quarantine.name + YOURS))
        shutil.move(ws.train_py, quarantine / TRAIN_PY)
        what.append("train.py (its unfinished edit, or yours since)")
    if not ws.train_py.exists():
        ws.write_train_py(ws.git.show("HEAD", TRAIN_PY))
    # The loop writes its report as it exits, and was killed: what lies there may be the turn's (a best never measured)
    if written := [name for name in REPORTS if os.path.lexists(ws.root / name)]:
        what.append(report_again(ws.root, quarantine, written))
    with contextlib.suppress(OSError):
        quarantine.rmdir()  # only if nothing was put there
    if what:
        more = f" and {len(what) - 8} more" if len(what) > 8 else ""
        refs = f"; the commits the refs were moved to are kept in a bundle: {fetch} brings them back" if left else ""
        say(
            f"the loop was stopped during the agent's turn: put back {', '.join(what[:8])}{more} (kept in "
            f"{os.path.relpath(quarantine, ws.root)}){refs}"
        )
    turn_over(ws)


def turn_over(ws: Workspace) -> None:
    (ws.state / TURN_SNAPSHOT).unlink(missing_ok=True)


def train_py_text(ws: Workspace) -> str | None:
    """The working tree's train.py, or None where it is missing or no text (nothing the loop wrote)."""
    try:
        return ws.read_train_py()
    except TrainPyUnreadable:
        return None


def commit_message(exp: Experiment) -> str:
    return f"exp {exp.id}: {exp.description}"


def result_columns(outcome: Outcome) -> dict:
    """The row's `result` after a run that ended well, before the verdict: the baseline's other seeds, and every
    run after, must share its apparatus and setup (loop/comparison.py); a change that ended
    before the baseline's first seed is checked once that is known (check_setup)."""
    return {"result": json.dumps(outcome.result.__dict__)} if outcome.result else {}


def seeded(source: str, run: int) -> str:
    """train.py for run `run` of an experiment: SEED + run, so repeated runs measure seed-to-seed noise."""
    seed = read_constants(source).get("SEED") if run else None
    # A baseline without an integer SEED is refused (ResearchLoop.new_baseline), a proposal too (guard.rejection).
    return set_constants(source, {"SEED": seed.value + run}) if seed is not None and type(seed.value) is int else source


def written_for(text: str, exp: Experiment) -> bool:
    """Whether train.py's `text` is what the loop wrote for a run of `exp`: its source, or a seeded run of it."""
    lines, source_lines = text.split("\n"), exp.source.split("\n")  # quickly, before any parse: a seeded run's
    if len(lines) != len(source_lines) or sum(a != b for a, b in zip(lines, source_lines, strict=True)) > 1:
        return False  # train.py differs from its source in one line at most
    try:
        return any(text == seeded(exp.source, run) for run in range(len(exp.run_values) + 2))
    except Exception:  # a source the loop could not seed (a SEED that is no number): it wrote the source alone
        return text == exp.source
