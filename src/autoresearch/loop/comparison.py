"""Whether a run is comparable with the baseline's: the same apparatus (harness, data, budget), setup (device and
clock), torch and confinement. A run that is not is refused, never judged: its score says nothing of the change."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from autoresearch.config.apparatus import CONFIG_NAME
from autoresearch.evaluator import cores
from autoresearch.evaluator.clock import CpuClock, describe
from autoresearch.loop import activity
from autoresearch.loop.executor import Outcome
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.settings import (
    APPARATUS_HINT,
    CONFIG_EDITED_HINT,
    CONFINEMENT_HINT,
    SETUP_HINT,
    TORCH_HINT,
    LoopError,
)
from autoresearch.vocabulary import Kind, RunEnd, Status


def torch_install(version: str) -> str:
    """What follows `pip install torch==` for torch `version`: a local build ("2.13.0+cu128", "+cpu") is PyTorch's own
    index's, where PyPI's has the same number (`pip install torch==2.13.0` would say it is installed already)."""
    number, _, build = version.partition("+")
    return f"{number} --index-url https://download.pytorch.org/whl/{build}" if build else number


class Comparison:
    """`ResearchLoop`'s checks of a run against the baseline's runs (it has the workspace, git and the ledger)."""

    def baseline_result(self) -> dict:
        """What the baseline's last run that ended well recorded (evaluator/result.py's fields), kept or still
        measuring its seeds; {} before there is one."""
        return baseline_result(self.ledger.all())

    def setup_differs(self, setup: str | None) -> str | None:
        """Why a run measured on `setup` (Result.setup) is not comparable with the baseline's runs, or None: an
        A100's score beside an H200's, or one core's beside two, says nothing of the change. The baseline's first
        seed to end sets what its other seeds must share too."""
        expected = self.baseline_result().get("setup")
        if setup and expected and setup != expected:
            why = f"it was measured on {setup}, the baseline's runs on {expected}"
            if "CPU time" in expected and (workers := baseline_workers(self.ledger.all(), self.ws.state)) > 1:
                why += f" by a loop of {workers} workers (`--workers {workers}` gives each run as many cores)"
            return why
        return None

    def check_share(self, envs: list[Mapping[str, str]], command: str = "run") -> None:
        """`check_share` of the loop's experiments, where its executor's runs are measured on this machine (not a
        simulation's or a test's, with setups of their own)."""
        if getattr(self.executor, "measures_here", False):
            check_share(self.ledger.all(), self.ws.state, envs, command)

    def torch_differs(self, version: str | None) -> str | None:
        """Why a run trained with torch `version` (Result.torch) is not comparable with the baseline's runs, or None
        (also where either has none recorded: a baseline from before the field)."""
        expected = self.baseline_result().get("torch")
        if version and expected and version != expected:
            return f"it was trained with torch {version}, the baseline's runs with torch {expected}"
        return None

    def confinement_differs(self, confined: bool | None) -> str | None:
        """Why a run that was not confined (`confined` False: AUTORESEARCH_SANDBOX=off in the environment of the
        `try` an agent called, or bubblewrap failing) is not comparable with a confined baseline's runs, or None.
        Unconfined, train.py reads what your user can: the validation rows, weights an agent trained and left."""
        if confined is False and self.baseline_result().get("confined") is True:
            return "it ran outside the sandbox (confined: false), the baseline's runs inside it"
        return None

    def incomparable(self, recorded: dict) -> tuple[str, str] | None:
        """Why a run's result (its fields) is not comparable with the baseline's runs, and what to do; or None."""
        if why := self.setup_differs(recorded.get("setup")):
            return why, SETUP_HINT
        if why := self.torch_differs(recorded.get("torch")):
            return why, TORCH_HINT.replace("VERSION", torch_install(self.baseline_result()["torch"]))
        if why := self.confinement_differs(recorded.get("confined")):
            return why, CONFINEMENT_HINT
        return None

    def comparable(self, outcome: Outcome, run_dir: Path) -> Outcome:
        """`outcome`, or an apparatus change where it ended well on another setup than the baseline's runs, or
        outside the sandbox where they ran in it; the result of a run refused either way (another apparatus too)
        is set aside in `run_dir`."""
        if outcome.status == RunEnd.OK and outcome.result and (refused := self.incomparable(outcome.result.__dict__)):
            outcome = replace(outcome, status=RunEnd.CHANGED, reason=refused[0], hint=refused[1])
        if outcome.status == RunEnd.CHANGED:
            set_aside(run_dir)
            outcome = outcome if outcome.hint else replace(outcome, hint=self.apparatus_hint())
        return outcome

    def check_setup(self, exp: Experiment) -> None:
        """Stop before judging a change measured on another setup than the baseline's runs. Only one that ended
        before the baseline's first seed can be (each later run is checked as it ends; several workers): its runs
        are dropped, and the next start trains it again where the baseline's ran."""
        if refused := self.incomparable(self.ledger.get(exp.id).recorded):
            self.ledger.update(exp.id, runs="[]", seeds="[]", result="{}")
            for run_dir in self.ws.state.glob(f"runs/{exp.id}-*"):
                set_aside(run_dir)
            raise LoopError(f"experiment {exp.id} stopped: {refused[0]}", hint=refused[1])

    def check_apparatus(self) -> None:
        """Refuse to go on when the harness, data or budget differ from the baseline's (its seeds measured so far)."""
        measured = self.baseline_result().get("harness_fingerprint")
        if measured and measured != self.fingerprint:
            hint = self.apparatus_hint()
            raise LoopError(f"the apparatus changed since the baseline ({measured} -> {self.fingerprint})", hint=hint)

    def apparatus_hint(self) -> str:
        """What to do about an apparatus that changed: where autoresearch.json was edited (the budget, say), put it
        back; else a new workspace for the new harness or data."""
        return CONFIG_EDITED_HINT if CONFIG_NAME in self.git.changed_paths() else APPARATUS_HINT


def baseline_result(experiments: list[Experiment]) -> dict:
    """What the baseline's last run that ended well recorded (evaluator/result.py's fields), kept or still measuring
    its seeds; {} before there is one."""
    measured = [e for e in experiments if e.kind == Kind.BASELINE and e.status != Status.CRASH]
    return measured[-1].recorded if measured else {}


def baseline_workers(experiments: list[Experiment], state: Path) -> int:
    """The workers of the loop the baseline's runs trained in (its seeds take only some of them), where the
    workspace's history of loops says; 0 where it does not."""
    spans = [s for e in experiments if e.kind == Kind.BASELINE for s in activity.spans_of(e) if s.end is not None]
    loops = activity.periods(state, experiments)
    return max((len(p.workers) for p in loops for s in spans if p.start <= s.start and s.end <= p.end), default=0)


def check_share(
    experiments: list[Experiment], state: Path, envs: list[Mapping[str, str]], command: str = "run"
) -> None:
    """Refuse, before anything trains, a loop whose runs on the CPU would count their budget over another share of
    the cores than the baseline's runs did (`envs`: each worker's environment over the loop's): `submit` or `run`
    without the `--workers` the baseline's loop had. Each such run trained its whole budget and was then refused
    (`setup_differs`), and the loop stopped: a night's first round of runs lost to a forgotten option, and
    `submit`'s loop in the background trained every submission once for nothing."""
    _, _, clock = baseline_result(experiments).get("setup", "").partition("; ")
    if not clock.startswith("CPU time"):  # a GPU's wall clock: the device's model is what a run is checked on
        return
    for env in envs:
        merged = {**os.environ, **env}
        if not cores.runs_train_on_cpu(merged) or (shares := run_shares(merged)) is None or clock in shares:
            continue
        workers = baseline_workers(experiments, state)
        why = f"this loop's runs would count {' or '.join(sorted(shares))}, the baseline's runs {clock}"
        if workers:
            why += f" in a loop of {workers} worker{'s' if workers > 1 else ''}"
        option = "leave --workers out" if workers == 1 else f"give --workers {workers}" if workers else ""
        if command == "try" and workers > 1:  # `try` takes no --workers: it trains on every core
            raise LoopError(
                f"{why}: `try` trains on every core, and its score would not be comparable",
                hint=f"use `autoresearch submit -m MESSAGE --workers {workers}`, then `autoresearch wait`: "
                "each run then gets the baseline's share of the cores",
            )
        raise LoopError(
            f"{why}: their scores would not be comparable, and each run would be refused once it had trained",
            hint=f"{option} (to `run` and `submit` alike): each run then gets the baseline's share of the cores"
            if option
            else SETUP_HINT,
        )


def run_shares(env: Mapping[str, str]) -> set[str] | None:
    """What the clock of a run on the CPU started in `env` may be ("CPU time / 2 cores"), told before it starts, as
    the evaluator's `run_cores` will count it (evaluator/cores.py, whose code this cannot join: it is fingerprinted):
    the threads its worker's OMP_NUM_THREADS names (the loop sets it for several workers), else torch's default, this
    machine's CPUs or its whole cores (either: torch's build decides), within the worker's pinned CPUs and the CPU
    quota. None where the CPUs cannot be asked for: nothing is refused then."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if pinned := cores._cpu_list(env.get(cores.RUN_CPUS_ENV, "")):  # "0-3,8", as the evaluator reads it
        cpus = len(pinned)
    limit = cores.quota()
    usable = max(1, min(cpus, math.ceil(limit)) if limit is not None else cpus)
    asked = env.get("OMP_NUM_THREADS", "").strip()
    threads = {int(asked)} if asked.isdigit() and int(asked) > 0 else {cpus, len(cores._cores() or [])}
    counted = {min(float(max(1, min(t, usable))), limit) if limit is not None else float(max(1, min(t, usable)))
               for t in threads if t > 0}  # fmt: skip
    return {describe(CpuClock(c)) for c in counted}


def set_aside(run_dir: Path) -> None:
    """Rename a refused run's result (measured on another apparatus or setup): `rebuild-ledger` reads every
    `result.json`, and must not take it for a run of its experiment."""
    result = run_dir / "result.json"
    if result.is_file():
        result.replace(run_dir / "result.refused.json")
