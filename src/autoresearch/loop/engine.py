"""The ratchet: propose -> commit -> train -> judge -> keep (advance the branch) or discard (reset) -> log.

Nothing is lost. A ledger row (status `running`) is written before git is touched and updated with the
verdict before git moves again, so whatever moment the loop is killed at, `recover()` finds a
consistent state: an experiment in flight is trained again, a verdict whose git step did not happen
is applied. Discarded commits stay readable under refs/autoresearch/discarded/<id>.

An agent's turn is watched like a run (loop/watch.py): afterwards the workspace is put back as the loop left
it, but for train.py, which is the proposal. What the agent's tools left (its own commits and branches,
staged and new files, git config, lines added to .gitignore) is not held against it: it is put back, kept in
the quarantine and noted in the experiment's reason. An edit to any other file that was there rejects it.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from autoresearch.agents.base import Agent, Context, PastExperiment, Proposal, ProposalError, Usage, preflight
from autoresearch.data.shards import Manifest
from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import compile_cache
from autoresearch.evaluator.fingerprint import fingerprint
from autoresearch.loop import guard
from autoresearch.loop.executor import Executor, Outcome, RunSpec, reap_orphan
from autoresearch.loop.judge import judge, measured_noise, noise_of
from autoresearch.loop.ledger import Experiment, Ledger
from autoresearch.loop.reporter import Reporter
from autoresearch.loop.watch import Verdict, Watch
from autoresearch.vocabulary import IN_FLIGHT, Kind, RunEnd, Status
from autoresearch.workspace.constants import read_constants, set_constants
from autoresearch.workspace.workspace import TRAIN_PY, Workspace

CRASHES_BEFORE_MOVING_ON = 3  # after this many crashes in a row the agent no longer sees the crash log
PAUSE_FIRST_S, PAUSE_MAX_S = 30.0, 900.0  # back-off after failed proposals in a row
MAX_ATTEMPTS = 2  # a run during which the loop died is tried once more on the next start, then is a crash
APPARATUS_HINT = (
    "results measured with another apparatus are not comparable: make a new workspace (autoresearch init) "
    "for the new harness, data or budget"
)


@dataclass(frozen=True)
class LoopConfig:
    baseline_runs: int = 3  # trainings of the unchanged train.py (seeds SEED, SEED+1, ...) to measure noise
    timeout: float | None = None  # hard limit per training run; default: 1.5 x budget + 180 s


NO_PROPOSAL = "(no proposal)"  # the description of the row of an agent that failed to propose anything


class LoopError(AutoresearchError):
    pass


class ResearchLoop:
    def __init__(
        self, workspace: Workspace, executor: Executor, reporter: Reporter, config: LoopConfig, sleep=time.sleep
    ):
        self.ws = workspace
        self.sleep = sleep
        self.git = workspace.git
        self.executor = executor
        self.reporter = reporter
        self._fork_failure_told = False
        self.config = config
        self.ledger = Ledger(workspace.root)
        budget = workspace.apparatus.budget_seconds
        self.timeout = config.timeout or 1.5 * budget + 180
        a = workspace.apparatus
        try:
            manifest = Manifest.load(Path(a.data_dir) / "manifest.json")
        except FileNotFoundError:
            raise LoopError(
                f"no prepared data in {a.data_dir}",
                hint=f"run `autoresearch prepare --dataset {a.dataset} --preset {a.preset}` (it is the same data)",
            ) from None
        self.fingerprint = fingerprint(a, manifest)

    # -- state ------------------------------------------------------------------------------------

    def best(self) -> Experiment | None:
        kept = [e for e in self.ledger.all() if e.status == Status.KEEP]
        return kept[-1] if kept else None

    def noise(self) -> float | None:
        """The noise to judge with now (judge.measured_noise: pooled over every train.py trained more than once)."""
        measured = measured_noise(self.ledger.all())
        return measured.noise if measured else None

    def context(self) -> Context:
        best = self._require_best()
        finished = [e for e in self.ledger.all() if e.status not in IN_FLIGHT]
        crashes = 0
        for e in reversed(finished):
            if e.status != Status.CRASH:
                break
            crashes += 1
        last_crash = finished[-1].log_tail or finished[-1].reason if crashes else None
        return Context(
            workspace=self.ws.root,
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

    def duplicate_of(self, source: str, base: str) -> str | None:
        """Why a proposal of `source` made from commit `base` is not run again, or None: the same train.py is
        in flight, or was already measured on the same base."""
        for e in self.ledger.all():
            if e.source != source or e.kind != Kind.EXPERIMENT:
                continue
            if e.status in IN_FLIGHT:
                return f"the same train.py as exp {e.id}, which is being trained now: propose something different"
            if e.parent == base and e.status != Status.CRASH:
                return f"the same train.py as exp {e.id}, already measured on this best ({e.status}, {e.reason})"
        return None

    def _require_best(self) -> Experiment:
        best = self.best()
        if best is None:
            raise LoopError("no baseline yet", hint="run `autoresearch run` or `autoresearch try` to measure it")
        return best

    # -- recovery -------------------------------------------------------------------------------

    def check_apparatus(self) -> None:
        """Refuse to go on when the harness, data or budget differ from the baseline's."""
        baseline = next((e for e in self.ledger.all() if e.kind == Kind.BASELINE and e.status == Status.KEEP), None)
        measured = json.loads(baseline.result).get("harness_fingerprint") if baseline else None
        if measured and measured != self.fingerprint:
            raise LoopError(
                f"the apparatus changed since the baseline ({measured} -> {self.fingerprint})", hint=APPARATUS_HINT
            )

    def recover(self) -> Experiment | None:
        """Bring git in line with the ledger after a crash or kill; return an experiment to finish, if any."""
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
                    commit = self.git.commit(_commit_message(pending), TRAIN_PY)
                self.ledger.update(pending.id, commit=commit)
                pending.commit = commit
            self.git.move_to(pending.commit, TRAIN_PY)
            return pending
        self.recover_branch()
        return None

    def recover_branch(self) -> None:
        """Bring the branch to the best, where a verdict was recorded but the loop died before git followed."""
        best = self.best()
        if best is not None and self.git.head() != best.commit:
            last = self.ledger.all()[-1]
            if last.status in (Status.DISCARD, Status.CRASH) and last.commit == self.git.head():
                self._apply_git(last)
            elif best.parent == self.git.head():  # kept, but the loop died before the branch moved to it
                self._apply_git(best)
            else:
                raise LoopError(
                    f"the branch is at {self.git.head()[:7]}, but the best experiment is {best.commit[:7]}",
                    hint=f"someone moved the branch by hand; `git reset --hard {best.commit[:7]}` to continue",
                )

    def check_clean(self) -> None:
        if TRAIN_PY in self.git.changed_paths():
            raise LoopError(
                "train.py has uncommitted changes",
                hint="revert them (`git checkout train.py`), or test them with `autoresearch try -m ...`",
            )

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, agent: Agent, max_experiments: int | None = None, hours: float | None = None) -> None:
        """Run the baseline if needed, then experiments until a limit (or forever)."""
        preflight(agent, self.ws.root, self.reporter.message)  # an agent that cannot work stops here, before training
        started = time.monotonic()
        pending = self.recover()
        if pending is not None:
            self.reporter.message(f"resuming experiment {pending.id}: {pending.description}")
            self._evaluate(pending)
        self.check_clean()
        if self.best() is None:
            self.baseline()
        done = 0
        while max_experiments is None or done < max_experiments:
            if hours is not None and time.monotonic() - started >= hours * 3600:
                self.reporter.message(f"stopping: the {hours:g} h limit is reached")
                break
            self.step(agent)
            done += 1

    def baseline(self) -> Experiment:
        """Train the unchanged train.py `baseline_runs` times with different seeds to measure the noise."""
        return self._evaluate(self.new_baseline())

    def new_baseline(self) -> Experiment:
        """The baseline's row: the branch's train.py, to be trained with several seeds."""
        source = self.ws.read_train_py()
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

    def step(self, agent: Agent) -> Experiment:
        """One experiment: ask the agent, check the change, commit it, train and judge it."""
        asked = self.ask(agent)
        if isinstance(asked, Experiment):
            return asked
        proposal, note = asked
        return self.submit(proposal, agent.name, getattr(agent, "model", ""), note)

    def ask(self, agent: Agent, wait: bool = True) -> Experiment | tuple[Proposal, str | None]:
        """The agent's checked proposal and what was put back after it; or, if it has none that may run, the
        rejected proposal's row. train.py holds the proposal afterwards. After failures in a row it waits
        (`failure_pause`) before it returns, unless `wait` is off: the scheduler waits on its own clock."""
        best = self._require_best()
        exp_id = self.ledger.next_id()
        self.reporter.phase(exp_id, "", f"asking {agent.name} for a change")
        who = f"the {agent.name} agent"
        watch = self._watch()
        try:
            proposal = agent.propose(self.context())
        except ProposalError as exc:
            verdict = self._verified(watch, who)
            why = str(exc) + (f"; it also {_as_agent(other)}" if (other := verdict.reason()) else "")
            exp = self._rejected(exp_id, agent, best, NO_PROPOSAL, why, exc.usage, verdict.tidied())
            if exc.fatal:
                raise LoopError(f"{who} cannot work: {exc}") from None
            if wait:
                self._pause_after_failures(agent)
            return exp
        except BaseException:  # Ctrl-C while the agent works: leave the workspace as the best left it
            self._verified(watch, who)
            self.ws.write_train_py(best.source)
            raise
        verdict = self._verified(watch, who)
        note = verdict.tidied()  # the agent's litter: put back, noted, not held against its train.py
        if why := verdict.reason():
            return self._rejected(exp_id, agent, best, proposal.description, _as_agent(why), proposal.usage, note)
        if why := guard.rejection(best.source, proposal.source) or self.duplicate_of(proposal.source, best.commit):
            return self._rejected(exp_id, agent, best, proposal.description, why, proposal.usage, note)
        return proposal, note

    def _pause_after_failures(self, agent: Agent) -> None:
        """Back off when the agent fails again and again (an API down, a rate limit): 30 s, 1 min, ... 15 min."""
        if wait := self.failure_pause(agent):
            self.sleep(wait)

    def failure_pause(self, agent: Agent) -> float:
        """How long to wait before asking `agent` again after its latest failures in a row (0: at once). A
        proposal that was made but rejected (a repeat, another file edited) is no failure: the agent works."""
        failures = 0
        for e in reversed(self.ledger.all()):
            if e.kind != Kind.PROPOSAL or e.status != Status.CRASH or e.description != NO_PROPOSAL:
                break
            failures += 1
        if failures < 2:
            return 0.0
        wait = min(PAUSE_MAX_S, PAUSE_FIRST_S * 2 ** (failures - 2))
        self.reporter.message(f"{agent.name} failed {failures} times in a row; waiting {wait:.0f}s")
        return wait

    def submit(self, proposal: Proposal, agent: str, model: str, note: str | None = None) -> Experiment:
        """Record, commit, train and judge a checked proposal made from the current best; `note` (what was
        put back after the agent) ends the reason it gets."""
        exp = self.record(proposal, agent, model, note)
        self.ws.write_train_py(proposal.source)
        exp.commit = self.git.commit(_commit_message(exp), TRAIN_PY)
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
        added, removed = guard.diff_stats(best.source, proposal.source)
        exp = Experiment(
            id=self.ledger.next_id(),
            kind=Kind.EXPERIMENT,
            status=status,
            description=one_line(proposal.description),
            parent=best.commit,
            agent=agent,
            model=model,
            source=proposal.source,
            diff=guard.diff(best.source, proposal.source),
            lines_added=added,
            lines_removed=removed,
            input_tokens=proposal.usage.input_tokens,
            output_tokens=proposal.usage.output_tokens,
            cost_usd=proposal.usage.cost_usd,
            reason=note or "",  # kept while it runs, so that a resumed experiment still ends its reason with it
            merged_from=merged_from,
        )
        self.ledger.insert(exp)  # before git is touched
        return exp

    # -- training and judging ---------------------------------------------------------------------

    def _evaluate(self, exp: Experiment) -> Experiment:
        runs = exp.run_values
        wanted = self.config.baseline_runs if exp.kind == Kind.BASELINE else 1
        while True:
            outcome = self._train(exp, len(runs))
            if outcome.status == RunEnd.CHANGED:
                raise LoopError(f"experiment {exp.id} stopped: {outcome.reason}", hint=outcome.hint or APPARATUS_HINT)
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
            self.ledger.update(exp.id, runs=exp.runs)
            if len(runs) < wanted:
                continue
            if exp.kind == Kind.BASELINE:
                reason = f"mean of {len(runs)} seeds; noise (std) {noise_of(runs):.6f}"
                return self._finish(exp, Status.KEEP, reason, outcome, runs)
            best = self._require_best()
            verdict = judge(best.val_bpb, runs, self.noise(), exp.lines_added, exp.lines_removed)
            if verdict.decision == Status.RERUN:
                self.reporter.message(f"exp {exp.id}: {verdict.reason}")
                wanted = len(runs) + 1
                continue
            return self._finish(exp, verdict.decision, verdict.reason, outcome, runs)

    def _train(self, exp: Experiment, run: int) -> Outcome:
        """Train `exp` once; run k > 0 uses SEED + k, so repeated runs measure seed-to-seed noise."""
        source = seeded(exp.source, run)
        self.ws.write_train_py(source)
        self.reporter.phase(exp.id, exp.description, f"training run {run + 1}")
        self.reporter.training(exp.id, run, self.ws.apparatus.budget_seconds)
        watch = self._watch(train_py=source.encode())
        exp.attempts += 1  # counted until the run ends: a run that kills the loop is found at the next start
        self.ledger.update(exp.id, attempts=exp.attempts)
        try:
            spec = RunSpec(self.ws.root, self.ws.state / "runs" / f"{exp.id}-{run}", self.timeout, self.fingerprint)
            outcome = self.executor.run(spec)
            if (failure := getattr(self.executor, "fork_failure", None)) and not self._fork_failure_told:
                self._fork_failure_told = True
                self.reporter.message(f"the fork server failed ({failure}); runs now start as new processes, slower")
        finally:
            exp.attempts -= 1
            self.ledger.update(exp.id, attempts=exp.attempts)
            why = self._verified(watch, f"experiment {exp.id}").reason()
            if source != exp.source:
                self.ws.write_train_py(exp.source)
        if exp.kind == Kind.BASELINE:  # the user's own train.py: what it compiled serves the next seeds at once
            self._settle_compiled(exp, keep=outcome.status == RunEnd.OK and not why)
        if why:  # whatever it scored, a run that reached outside its box is not believed
            return Outcome(
                RunEnd.CRASH, None, f"the run {why}; all of it was put back", outcome.log_tail, outcome.seconds
            )
        return outcome

    # -- verifying what untrusted steps did ------------------------------------------------------

    def _watch(self, train_py: bytes | None = None) -> Watch:
        """A run (train_py given) or an agent's turn (None), about to start."""
        run = train_py is not None
        return Watch(self.git, self.ledger, self.ws.state / "quarantine", train_py, human=run, agent=not run)

    def _verified(self, watch: Watch, who: str) -> Verdict:
        """Put back what `who` changed; the verdict's reason() says why it is not believed, if it is not."""
        verdict = watch.check()
        if verdict.human:
            self.reporter.message(
                f"{', '.join(verdict.human)} changed while {who} worked: put back (the edit is kept in "
                f"{watch.quarantine}); edit them between experiments"
            )
        if verdict.package_changed:
            raise LoopError(
                f"the autoresearch package's own files changed while {who} worked",
                hint="reinstall autoresearch (pip install --force-reinstall) before going on",
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
        self.reporter.finished(exp, self.best())
        return exp

    def _settle_compiled(self, exp: Experiment, keep: bool) -> None:
        """What `exp`'s runs compiled joins the shared compile cache if it is kept; is deleted otherwise."""
        compile_cache.settle(self.ws.state.glob(f"runs/{exp.id}-*/{compile_cache.STAGED}"), keep)

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
        return self._finish(exp, Status.CRASH, f"rejected: {why}")


def _as_agent(why: str) -> str:
    return why.replace("changed files outside train.py", "edited files other than train.py")


def one_line(text: str) -> str:
    return " ".join(text.split())[:200] or "(no description)"


def _commit_message(exp: Experiment) -> str:
    return f"exp {exp.id}: {exp.description}"


def seeded(source: str, run: int) -> str:
    """train.py for run `run` of an experiment: SEED + run, so repeated runs measure seed-to-seed noise."""
    seed = read_constants(source).get("SEED") if run else None
    return set_constants(source, {"SEED": seed.value + run}) if seed is not None else source
