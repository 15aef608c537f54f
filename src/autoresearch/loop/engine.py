"""The ratchet: propose -> commit -> train -> judge -> keep (advance the branch) or discard (reset) -> log.

Nothing is lost. A ledger row (status `running`) is written before git is touched and updated with the
verdict before git moves again, so whatever moment the loop is killed at, `recover()` finds a
consistent state: an experiment in flight is trained again, a verdict whose git step did not happen
is applied. Discarded commits stay readable under refs/autoresearch/discarded/<id>.

`ResearchLoop` is this module (training, judging, recording verdicts) with its two other parts mixed in:
asking the agent and checking its proposal (loop/asking.py), and recovery after a kill (loop/recovery.py).
Its settings and error live in loop/settings.py; they are importable from here as before.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

from autoresearch.agents.base import Agent, Proposal, preflight
from autoresearch.config.apparatus import CONFIG_NAME, prepare_again_hint
from autoresearch.data.shards import Manifest
from autoresearch.errors import DataError
from autoresearch.evaluator import compile_cache
from autoresearch.evaluator.fingerprint import fingerprint
from autoresearch.loop import guard, held_edits, run_logs
from autoresearch.loop.asking import NO_PROPOSAL, Asking, one_line
from autoresearch.loop.clock import sleep_awake
from autoresearch.loop.comparison import Comparison
from autoresearch.loop.environment import Environment
from autoresearch.loop.executor import Executor, Outcome, RunSpec
from autoresearch.loop.experiment import Experiment, best_of, lowest_kept
from autoresearch.loop.judge import Verdict as Judgement
from autoresearch.loop.judge import judge, measured_noise, noise_of
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.recovery import (
    HELD_EDIT,
    MAX_ATTEMPTS,
    TURN_SNAPSHOT,
    Recovery,
    commit_message,
    result_columns,
    seeded,
)
from autoresearch.loop.reporter import Reporter
from autoresearch.loop.settings import APPARATUS_HINT, CONFIG_EDITED_HINT, LoopConfig, LoopError, run_timeout
from autoresearch.loop.watch import Verdict, Watch, package_hint
from autoresearch.vocabulary import IN_FLIGHT, Kind, RunEnd, Status
from autoresearch.workspace import quarantine
from autoresearch.workspace.disk import disk_full_is_an_error
from autoresearch.workspace.workspace import TRAIN_PY, Workspace, too_large

# Imported from here by the CLI, the scheduler, the benches and the tests.
__all__ = ["APPARATUS_HINT", "MAX_ATTEMPTS", "NO_PROPOSAL", "LoopConfig", "LoopError", "ResearchLoop"]


def _edited_beside(verdict: Verdict, outcome: Outcome) -> bool:
    """Whether the workspace changed during a run that was confined: the sandbox hides the workspace from it, so the
    change is someone else's (a person's edit of train.py or `git stash` in the workspace, an agent's that sent `try`
    to the background to go on editing), and the run's score stands; the run that could reach the workspace is not
    believed. (BROKE, fixed: a person's `git stash` during a run made its experiment a crash, blamed on the run.)"""
    trained_confined = outcome.result is not None and outcome.result.confined
    return trained_confined and bool(verdict.changed)


class ResearchLoop(Asking, Comparison, Recovery):
    def __init__(
        self,
        workspace: Workspace,
        executor: Executor,
        reporter: Reporter,
        config: LoopConfig,
        sleep=sleep_awake,
        environment: Environment | None = None,
    ):
        """`environment`: what the runs read outside the workspace that an agent could write, checked around each
        agent turn (loop/environment.py); by default what this Python's runs are shown."""
        self.ws = workspace
        self.environment = environment or Environment.of_runs(os.environ, workspace.root)
        self.sleep = sleep
        self.git = workspace.git
        self.executor = executor
        self.reporter = reporter
        self._fork_failure_told = False
        self.config = config
        self.ledger = Ledger(workspace.root)
        self.ledger.verify()  # its rows are the loop's own, as it last wrote them: what it judges by
        self.left_in_flight: set[int] = set()  # set by recover_workspace: in flight when this start began
        self.timeout = run_timeout(config.timeout, workspace.apparatus.budget_seconds)
        a = workspace.apparatus
        try:
            manifest = Manifest.load(Path(a.data_dir) / "manifest.json")
        except FileNotFoundError:
            edited = CONFIG_NAME in self.git.changed_paths()  # its data_dir edited by hand, not the data lost
            raise LoopError(
                f"no prepared data in {a.data_dir}", hint=CONFIG_EDITED_HINT if edited else prepare_again_hint(a)
            ) from None
        except DataError as exc:  # garbled: its hint says "the same --dataset and --preset", and names neither
            raise LoopError(exc.args[0], hint=prepare_again_hint(a)) from None
        self.fingerprint = fingerprint(a, manifest)

    # -- state ------------------------------------------------------------------------------------

    def best(self) -> Experiment | None:
        return best_of(self.ledger.all())

    def noise(self) -> float | None:
        """The noise to judge with now (judge.measured_noise: pooled over every train.py trained more than once)."""
        measured = measured_noise(self.ledger.all())
        return measured.noise if measured else None

    def verdict_on(self, exp: Experiment, base: Experiment, runs: list[float]) -> Judgement:
        """The judge's verdict on `exp`'s runs against `base`, the kept experiment it was made from (and the lowest
        val_bpb kept up to it)."""
        rows = self.ledger.all()
        noise = measured_noise(rows)
        if noise is None:
            raise LoopError(
                "no noise measured yet: the baseline's seeds are not in the ledger",
                hint="`autoresearch run` trains the baseline again to measure it, before any change",
            )
        fewer = guard.fewer_code_lines(base.source, exp.source)
        lowest = lowest_kept([e for e in rows if e.id <= base.id])
        return judge(base.val_bpb, runs, noise.noise, fewer, lowest, noise.baseline, noise.copy_spread)

    def _require_best(self) -> Experiment:
        best = self.best()
        if best is None:
            raise LoopError("no baseline yet", hint="run `autoresearch run` or `autoresearch try` to measure it")
        return best

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, agent: Agent, max_experiments: int | None = None, hours: float | None = None) -> None:
        """Run the baseline if needed, then experiments until a limit (or forever)."""
        # An agent that cannot work stops here, before training.
        preflight(agent, self.ws.root, self.reporter.message, self.ws.named)
        started = time.monotonic()
        pending = self.recover()
        if pending is not None:
            self.reporter.message(f"resuming experiment {pending.id}: {pending.description}")
            self._evaluate(pending)
        self.check_clean()
        if self.best() is None:
            if max_experiments == 0:  # "finish what is in flight, start nothing": not even three seeds of a baseline
                self.reporter.message("no baseline yet, and --max-experiments 0 starts nothing")
                return
            self.baseline()
        done, until = 0, math.inf if hours is None else started + hours * 3600
        while max_experiments is None or done < max_experiments:
            if done:  # the back-off after the agent's failures in a row comes before asking again, not before stopping
                self._pause_after_failures(agent, until)
            if time.monotonic() >= until:
                self.reporter.message(f"stopping: the {hours:g} h limit is reached")
                break
            self.step(agent, wait=False)
            done += 1

    def baseline(self) -> Experiment:
        """Train the unchanged train.py `baseline_runs` times with different seeds to measure the noise."""
        return self._evaluate(self.new_baseline())

    def new_baseline(self) -> Experiment:
        """The baseline's row: the branch's committed train.py (not an edit in the working tree, which `submit`
        may leave there), to be trained with several seeds."""
        source = self.ws.committed_train_py()
        if why := too_large(source):
            raise LoopError(f"the baseline's {why}", hint="commit a train.py of ordinary size, then run again")
        if why := guard.seed_problem(source):
            raise LoopError(
                f"{why}: the loop trains the baseline with SEED, SEED + 1, ... to measure the noise",
                hint="put `SEED = 42` among the constants at the top of train.py, seed torch with it "
                "(torch.manual_seed(SEED)), commit it, then run again",
            )
        exp = Experiment(
            id=self.ledger.next_id(),
            kind=Kind.BASELINE,
            status=Status.RUNNING,
            description="baseline",
            parent=self.git.head(),
            commit=self.git.head(),
            source=source,
        )
        self.ledger.insert(exp)
        return exp

    def step(self, agent: Agent, wait: bool = True) -> Experiment:
        """One experiment: ask the agent, check the change, commit it, train and judge it (`wait`: back off after
        the agent's failures in a row before returning; `run` does so before the next step instead)."""
        self.measure_noise_again()  # before the agent's turn: a change cannot be judged without it
        asked = self.ask(agent, wait=wait)
        if isinstance(asked, Experiment):
            return asked
        proposal, note = asked
        return self.submit(proposal, agent.name, getattr(agent, "model", ""), note)

    def submit(self, proposal: Proposal, agent: str, model: str, note: str | None = None) -> Experiment:
        """Record, commit, train and judge a checked proposal made from the current best; `note` (what was
        put back after the agent) ends the reason it gets."""
        exp = self.record(proposal, agent, model, note)
        self.ws.write_train_py(proposal.source)
        exp.commit = self.git.commit(commit_message(exp), TRAIN_PY)
        self.ledger.update(exp.id, commit=exp.commit)
        return self._evaluate(exp)

    def record(
        self,
        proposal: Proposal,
        agent: str,
        model: str,
        note: str | None = None,
        base: Experiment | None = None,
        status: Status = Status.RUNNING,
        merged_from: int = 0,
    ) -> Experiment:
        """The row of a checked proposal made from `base` (the current best by default), written before any
        commit of it is made."""
        best = base or self._require_best()
        exp = Experiment(
            id=self.ledger.next_id(),
            kind=Kind.EXPERIMENT,
            status=status,
            description=one_line(proposal.description),
            agent=agent,
            model=model,
            **change_of(best, proposal.source),
            input_tokens=proposal.usage.input_tokens,
            output_tokens=proposal.usage.output_tokens,
            cost_usd=proposal.usage.cost_usd,
            reason=note or "",  # kept while it runs, so that a resumed experiment still ends its reason with it
            merged_from=merged_from,
        )
        self.ledger.insert(exp)  # before git is touched
        self.turn_over()  # the agent's proposal is safe in its row
        return exp

    # -- training and judging ---------------------------------------------------------------------

    def _evaluate(self, exp: Experiment) -> Experiment:
        runs = exp.run_values
        wanted = self.config.baseline_runs if exp.kind == Kind.BASELINE else 1
        lost: set[int] = set()  # its runs lost once (`tries_again`)
        while True:
            outcome = self._train(exp, len(runs))
            if outcome.status == RunEnd.CHANGED:
                raise LoopError(f"experiment {exp.id} stopped: {outcome.reason}", hint=outcome.hint or APPARATUS_HINT)
            if self.tries_again(exp, len(runs), outcome, lost):
                continue
            if outcome.status == RunEnd.LOST:
                outcome = replace(outcome, reason=f"{outcome.reason}, twice")
            if outcome.status != RunEnd.OK:
                if exp.kind == Kind.BASELINE:
                    self._finish(exp, Status.CRASH, f"baseline failed: {outcome.reason}", outcome)
                    raise LoopError(
                        f"the baseline train.py failed: {outcome.reason}",
                        hint=f"see {self.ws.state / 'runs'} for the log; fix train.py or the setup, then run again",
                    )
                return self._finish(exp, Status.CRASH, outcome.reason, outcome)
            runs.append(outcome.val_bpb)
            exp.runs = json.dumps(runs)
            self.ledger.update(exp.id, runs=exp.runs, **result_columns(outcome))
            if len(runs) < wanted:
                continue
            if exp.kind == Kind.BASELINE:
                reason = f"mean of {len(runs)} seeds; noise (std) {noise_of(runs):.6f}"
                return self._finish(exp, Status.KEEP, reason, outcome, runs)
            best = self._require_best()
            verdict = self.verdict_on(exp, best, runs)
            if verdict.decision == Status.RERUN:
                self.reporter.message(f"exp {exp.id}: {verdict.reason}")
                wanted = len(runs) + 1
                continue
            return self._finish(exp, verdict.decision, verdict.reason, outcome, runs)

    def tries_again(self, exp: Experiment, run: int, outcome: Outcome, lost: set[int]) -> bool:
        """Whether run `run` of `exp` is trained once more (said so), once: it was lost, killed from outside, or it is
        the baseline's and late (a stall of the machine must not stop the loop at its start). `lost` holds the runs
        of `exp` tried again before; this one joins it. A change's late run is not: an experiment that overran when
        its own loss looked poor would have drawn again (with a seed of its own)."""
        again = outcome.status == RunEnd.LOST or (outcome.late and exp.kind == Kind.BASELINE)
        if not again or run in lost:
            return False
        lost.add(run)
        self.reporter.message(f"exp {exp.id}: {outcome.reason}; trying that run once more")
        return True

    def _train(self, exp: Experiment, run: int) -> Outcome:
        """Train `exp` once; run k > 0 uses SEED + k, so repeated runs measure seed-to-seed noise."""
        source = seeded(exp.source, run)
        self.ws.write_train_py(source)
        self.reporter.phase(exp.id, exp.description, f"training run {run + 1}")
        self.reporter.training(exp.id, run, self.ws.apparatus.budget_seconds)
        exp.attempts += 1  # counted until the run ends: a run that kills the loop is found at the next start
        self.ledger.update(exp.id, attempts=exp.attempts)
        # After the count: the loop's own writes to the ledger come before and after the watch, never during it (one
        # there would find, and seal, what a run wrote meanwhile; the watch puts that back).
        try:
            watch = self._watch(train_py=source.encode())
        except BaseException:  # a Ctrl-C before the run started: no attempt (two made the baseline "killed twice")
            exp.attempts -= 1
            self.ledger.update(exp.id, attempts=exp.attempts)
            raise
        outcome: Outcome | None = None
        try:
            # The bytes recorded are the bytes trained: train.py is read here, once, not by the executor from the
            # file, which an agent driving the loop (`try`, outside any turn) could swap meanwhile and put back.
            run_dir = self.ws.state / "runs" / f"{exp.id}-{run}"
            spec = RunSpec(self.ws.root, run_dir, self.timeout, self.fingerprint, code=source.encode())
            with disk_full_is_an_error("writing a training run's files"):  # the loop stops saying so
                outcome = self.executor.run(spec)
            compile_cache.vouch(spec.run_dir / compile_cache.STAGED, outcome.result and outcome.result.compiled)
            if (failure := getattr(self.executor, "fork_failure", None)) and not self._fork_failure_told:
                self._fork_failure_told = True
                self.reporter.message(f"the fork server failed ({failure}); runs now start as new processes, slower")
        finally:
            try:
                confined = outcome is not None and outcome.result is not None and outcome.result.confined
                verdict = self._verified(watch, f"experiment {exp.id}", beside=confined)
                why = verdict.reason()
            finally:
                exp.attempts -= 1
                self.ledger.update(exp.id, attempts=exp.attempts)  # its open file, wherever a `mv` took it
                if source != exp.source and not self.ws.moved():  # nothing written at a path the workspace left
                    self.ws.write_train_py(exp.source)
        outcome = self.comparable(outcome, spec.run_dir)
        if why and _edited_beside(verdict, outcome):  # the person's edit (`try` in the background): not the run's
            why = None
            if verdict.changed in ([f"changed {TRAIN_PY}"], [f"deleted {TRAIN_PY}"]):
                what, advice = "train.py was edited", "edit train.py between experiments"
            else:
                what = f"the workspace changed ({', '.join(verdict.changed[:8])})"
                advice = "leave the workspace to the loop while it runs (git commands too, but those that only read)"
            self.reporter.message(
                f"{what} while experiment {exp.id} trained (its run, confined, cannot reach it): {verdict.put_back()}, "
                f"what was moved aside kept in {verdict.quarantine}; {advice}"
            )
        if exp.kind == Kind.BASELINE:  # the user's own train.py: what it compiled serves the next seeds at once
            self._settle_compiled(exp, keep=outcome.status == RunEnd.OK and not why, run=run)
        if why:  # whatever it scored, a run that reached outside its box is not believed
            return Outcome(
                RunEnd.CRASH, None, f"the run {why}; {verdict.put_back()}", outcome.log_tail, outcome.seconds
            )
        return outcome

    # -- verifying what untrusted steps did ------------------------------------------------------

    def _watch(self, train_py: bytes | None = None) -> Watch:
        """A run (train_py given) or the turn of an agent with a shell (None), about to start. An agent's turn
        keeps its snapshot on disk while it lasts: after a kill, the next start puts back what it left
        (Recovery.recover_workspace). The files the runs read outside the workspace are checked too after a turn;
        not after a run, which cannot write them (they are read-only inside)."""
        run = train_py is not None
        keep = None if run else self.ws.state / TURN_SNAPSHOT
        with disk_full_is_an_error("saving the workspace's state before the agent's turn"):
            return Watch(
                self.git,
                self.ledger,
                self.ws.state / quarantine.FOLDER,
                train_py,
                human=run,
                agent=not run,
                keep=keep,
                environment=None if run else self.environment,
            )

    def _verified(self, watch: Watch | None, who: str, beside: bool = False) -> Verdict:
        """Put back what `who` changed; the verdict's reason() says why it is not believed, if it is not. No
        `watch`: an agent without a shell, which changes nothing. `beside`: `who` is a run that trained confined, so
        what changed is a person's (`_edited_beside`): kept whole in the quarantine (Watch.persons), before any
        message names its folder."""
        if watch is None:
            return Verdict()
        verdict = watch.check()
        if beside and verdict.changed:
            watch.persons(verdict)  # the messages below and the run's name where it lies
        if verdict.pruned:
            self.reporter.message(
                f"the quarantine keeps at most {quarantine.limit_bytes() / 1e9:g} GB ({quarantine.LIMIT_ENV}): "
                f"emptied its {len(verdict.pruned)} oldest folders (a person's program.md and prompts stay, and what "
                "changed beside a confined run)"
            )
        if watch.agent and (planted := self.ws.state / HELD_EDIT).exists():  # no `try` asks an agent
            watch.quarantine.mkdir(parents=True, exist_ok=True)
            planted.replace(watch.quarantine / HELD_EDIT)
            verdict.changed.append(f"added .autoresearch/{HELD_EDIT}")
        for path in held_edits.planted(self.ws.state, watch.started_ns) if watch.agent else []:
            where = path.relative_to(self.ws.state)  # submitting/NAME, or submitting where it is a link
            (watch.quarantine / where).parent.mkdir(parents=True, exist_ok=True)
            path.replace(watch.quarantine / where)
            verdict.changed.append(f"added .autoresearch/{where.as_posix()}")
        if verdict.human:
            self.reporter.message(
                f"{', '.join(verdict.human)} changed while {who} worked: put back (the edit is kept in "
                f"{watch.quarantine}); edit them between experiments"
            )
        if verdict.package_changed:
            raise LoopError(
                f"the autoresearch package's own files changed while {who} worked",
                hint=package_hint(),
            )
        if changed := verdict.environment:
            more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
            raise LoopError(
                f"the Python environment the runs read changed (or a folder of PATH, whose programs the loop runs) "
                f"while {who} worked: {', '.join(changed[:8])}{more}. An agent may change train.py only: a file it "
                "leaves there (weights trained during its turn, a `git` of its own) a run or the loop could read, "
                "and a package it installs is not in the apparatus",
                hint="undo it: remove what was added (`pip uninstall` what the agent installed) or reinstall the "
                "environment, then run again; tell the agent not to install packages or write outside the workspace",
            )
        if note := verdict.tidied():
            self.reporter.message(f"{who}: {note}")
        return verdict

    def _finish(
        self,
        exp: Experiment,
        status: Status,
        reason: str,
        outcome: Outcome | None = None,
        runs: list[float] | None = None,
    ) -> Experiment:
        result = outcome.result if outcome else None
        if exp.status in IN_FLIGHT and exp.reason:  # noted when the row was written: what was put back after the agent
            reason = f"{reason}; {exp.reason}"
        changes = {
            "status": status,
            "reason": reason,
            "finished_at": time.time(),
            "val_bpb": statistics.fmean(runs) if runs else None,
            "log_tail": outcome.log_tail if outcome and status == Status.CRASH else "",
        }
        if result is not None:
            changes |= {
                "memory_gb": result.peak_memory_mb / 1024,
                "training_seconds": result.training_seconds,
                "total_seconds": result.total_seconds,
                "result": json.dumps(result.__dict__),
            }
        self.ledger.update(exp.id, **changes)
        for key, value in changes.items():
            setattr(exp, key, value)
        self.ledger.write_tsv()  # the verdict is durable before git moves
        self._settle_compiled(exp, keep=status == Status.KEEP)
        self._apply_git(exp)
        self._tidy()
        self.reporter.finished(exp, self.best())
        return exp

    def _tidy(self) -> None:
        """After a verdict, where no run or agent's turn is watched: pack git's loose objects and refs once there are
        many (workspace/git.py), and cut the oldest run logs down once they take more than their share of the disk
        (loop/run_logs.py). Neither loses what a command or the report reads."""
        self.git.pack()
        run_logs.trim(self.ws.state / "runs", self.ledger.all())

    def _settle_compiled(self, exp: Experiment, keep: bool, run: int | None = None) -> None:
        """What `exp`'s runs (or its run `run` alone) compiled joins the shared compile cache if it is kept; is
        deleted otherwise."""
        runs = "*" if run is None else str(run)
        staged = self.ws.state.glob(f"runs/{exp.id}-{runs}/{compile_cache.STAGED}")
        compile_cache.settle(staged, keep, warn=self.reporter.message)  # a full cache disk costs only compiling again

    def _apply_git(self, exp: Experiment) -> None:
        """Git after a verdict: a kept experiment becomes the branch; a discarded one is kept under a ref and,
        where the branch was on it (one worker trains on the branch), the branch goes back to its parent. An
        experiment trained in a worker's worktree was never on the branch."""
        if not exp.commit or exp.kind == Kind.BASELINE:
            return
        if exp.status == Status.KEEP and self.git.head() != exp.commit:
            self.git.advance(exp.commit, TRAIN_PY)
        elif exp.status in (Status.DISCARD, Status.CRASH):
            self.git.set_ref(f"refs/autoresearch/discarded/{exp.id}", exp.commit)
            if self.git.head() == exp.commit:
                self.git.move_to(exp.parent, TRAIN_PY)


def change_of(base: Experiment, source: str) -> dict:
    """The ledger's columns of `source` as a change of `base`: the file, its parent commit, the diff and its size."""
    added, removed = guard.diff_stats(base.source, source)
    return {
        "source": source,
        "parent": base.commit,
        "diff": guard.diff(base.source, source),
        "lines_added": added,
        "lines_removed": removed,
    }
