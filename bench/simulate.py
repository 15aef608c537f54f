"""Parallel research, simulated: the real loop and scheduler driving 1 to 64 workers in simulated time.

    PYTHONPATH=$PWD/src python3 bench/simulate.py --workers 1,4,16,64 --hours 12

Everything but the GPUs is real: the ledger and results.tsv, git (a worktree per worker, a commit per
experiment, three-way merges of stale wins), the judge, the ratchet and the scheduler's dispatching (a kept
change measured again on more seeds too). Each worker's executor is simulated: a run does not train, it scores
train.py on a known landscape (val_bpb is a sum of smooth bowls over five constants of a bench train.py, plus
seed noise at the level measured on an H100) and lasts a simulated time drawn like the measured runs (budget +
~15 s, 5 % crashes, 3 % stragglers). The scheduler runs on a simulated clock (loop/clock.py's `Clock`):
whenever the driver waits for a run, the clock jumps to the end of the next one, so a night of runs takes
seconds; the driver's own work (git, ledger, judging, the agent) counts at its real speed on this machine.

A scripted agent nudges one or two constants of the best at a time; it sees the experiments in flight and
does not propose one of them again, but may repeat an older one (`--agent nudge-apart`: nor a move one of
them makes, the same constants moved the same way). `--agent wave` sweeps, as the prompt asks agents with
several workers: with changes in flight, it sets the constant the fewest of them move to another value of a
grid around the best's, both ways, nearest first, then two constants at once once those are held (with none in
flight, it nudges as `nudge-apart` does, so the one-worker reference is the same run). Near the optimum most
proposals are no better, a few are true wins (`--agent tune`: the package's Optuna agent instead). The scripted
agents answer at once and run no program, as `tune` does (`shell` False): their turns are not watched
(loop/asking.py).
One worker runs `--hours` simulated hours; N workers run `--hours` x min(1, `--window` / N), long enough
to tell the goal "the one-worker run's final best in 2/N of its time". Measured on that window:
experiments per hour, the GPUs' busy fraction, the time and GPU-hours until the best's TRUE value reaches
the one-worker run's final best, false keeps (kept though truly no better than their base), wins lost to
merge conflicts, and the driver's CPU per experiment.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import json
import math
import os
import queue
import random
import shutil
import statistics
import sysconfig
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from autoresearch.agents.base import Context, Proposal
from autoresearch.agents.tune import TuneAgent
from autoresearch.config.presets import get_preset
from autoresearch.data.prepare import prepare
from autoresearch.evaluator.result import Result
from autoresearch.loop import ratchet as ratchet_module
from autoresearch.loop.engine import LoopConfig, ResearchLoop
from autoresearch.loop.environment import Environment
from autoresearch.loop.executor import Outcome, RunSpec
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.judge import Verdict, judge
from autoresearch.loop.scheduler import Scheduler
from autoresearch.loop.settings import BASELINE_RUNS
from autoresearch.loop.workers import Active, Device, Worker, close_workers, make_workers
from autoresearch.vocabulary import Kind, RunEnd, Status
from autoresearch.workspace.constants import changed_constants, read_constants, set_constants
from autoresearch.workspace.init import create_workspace
from autoresearch.workspace.workspace import Workspace

TRAIN_PY = '''"""A train.py for bench/simulate.py: never run, only scored on a known landscape by its constants."""

LR = 0.004  # learning rate (0.0005-0.05)
BATCH = 32  # rows per step (8-512)
WARMUP_FRAC = 0.0  # fraction of the budget spent warming the learning rate up (0-0.5)
WEIGHT_DECAY = 0.1  # AdamW weight decay (0.001-1)
DROPOUT = 0.05  # dropout probability (0-0.5)
SEED = 42  # initialisation seed

if __name__ == "__main__":
    raise SystemExit("bench/simulate.py scores this file by its constants; it does not train")
'''


# -- the landscape ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bowl:
    """val_bpb lost by one constant: `weight` x (distance from the optimum, in units)^2."""

    optimum: float
    weight: float
    unit: float  # a factor of 2 is one unit when `log`; else `unit` is one unit
    log: bool = True

    def loss(self, value: float) -> float:
        distance = math.log2(value / self.optimum) if self.log else (value - self.optimum) / self.unit
        return self.weight * distance**2


# From the starting train.py 0.0256 above the floor (~17 sigma): LR 0.0052, BATCH 0.008, WARMUP_FRAC 0.003,
# WEIGHT_DECAY 0.0054, DROPOUT 0.004. One good nudge gains 0.001-0.005, near the judge's margin of 2 sigma.
BOWLS = {
    "LR": Bowl(0.01, 0.003, 1.0),
    "BATCH": Bowl(128, 0.002, 1.0),
    "WARMUP_FRAC": Bowl(0.1, 0.003, 0.1, log=False),
    "WEIGHT_DECAY": Bowl(0.02, 0.001, 1.0),
    "DROPOUT": Bowl(0.0, 0.004, 0.05, log=False),
}
FLOOR = 0.55  # val_bpb at the optimum (the h100 preset's train.py scored 0.553 at 5 minutes)


@dataclass(frozen=True)
class Landscape:
    seed_noise: float = 0.0015  # seed-to-seed std of val_bpb at a 5-minute budget on the H100
    run_noise: float = 0.00015  # the same train.py and seed again: a tenth of it (H200, 60 s: 0.0007 vs 0.0073)

    def true_bpb(self, source: str) -> float:
        constants = read_constants(source)
        return FLOOR + sum(bowl.loss(float(constants[name].value)) for name, bowl in BOWLS.items())

    def measured(self, source: str, draw: random.Random, seed: int = 0) -> float:
        """One run's val_bpb: the seed's own noise is a function of train.py (its SEED included) and of the
        simulation's `seed`, so the same file scores nearly the same again within a simulation, and the baseline's
        seeds measure another noise in each; `draw` adds the small run-to-run noise."""
        noise = random.Random(f"{seed}:{source}").gauss(0.0, self.seed_noise)
        return self.true_bpb(source) + noise + draw.gauss(0.0, self.run_noise)


# -- the runs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunModel:
    """How long a run lasts and whether it crashes, as measured on the H100 (BENCHMARKS.md)."""

    budget: float = 300.0
    overhead: float = 15.0  # harness 13.8-14.1 s + loop ~1 s per run at a 30 s budget (loop_overhead.py)
    overhead_sd: float = 1.5
    crash_rate: float = 0.05  # a changed train.py only: the baseline never crashes
    straggler_rate: float = 0.03  # a cold compile or a slow node: 30-180 s more
    straggler_extra: tuple[float, float] = (30.0, 180.0)

    def draw(self, draw: random.Random, may_crash: bool) -> tuple[bool, float]:
        """(crashed, seconds) of one run. A crash happens anywhere from start-up to the end of training."""
        overhead = max(5.0, draw.gauss(self.overhead, self.overhead_sd))
        if may_crash and draw.random() < self.crash_rate:
            return True, draw.uniform(5.0, self.budget + overhead)
        if draw.random() < self.straggler_rate:
            overhead += draw.uniform(*self.straggler_extra)
        return False, self.budget + overhead


class SimClock:
    """Simulated seconds for the scheduler and its runs.

    A run (on a worker's thread) sleeps on this clock until its simulated end. When the driver waits for a
    report and every busy worker's run is asleep here, the clock jumps to the earliest end and wakes that run
    alone, so reports come one at a time in the order of their simulated ends. While the driver works
    (between waits), the clock runs at `driver_rate` x real time: the driver's own cost is part of the
    schedule, as it is on a real machine."""

    def __init__(self, driver_rate: float = 1.0):
        self.driver_rate = driver_rate
        self.workers: list[Worker] = []  # set once they are made: the busy ones owe a report
        self.asking = lambda: 0  # the asks in flight on threads, which owe a report too (set with the scheduler)
        self._lock = threading.Condition()
        self._sim, self._mark, self._frozen = 0.0, time.perf_counter(), False
        self._sleepers: list[tuple[float, int, threading.Event]] = []
        self._count = 0
        self._woken = 0  # runs woken whose report the driver has not taken yet

    def reset(self) -> None:
        """Simulated time 0 is now (what was set up before does not count)."""
        with self._lock:
            self._sim, self._mark = 0.0, time.perf_counter()

    def now(self) -> float:
        with self._lock:
            return self._now()

    def _now(self) -> float:
        return self._sim if self._frozen else self._sim + (time.perf_counter() - self._mark) * self.driver_rate

    def sleep(self, seconds: float) -> None:
        """The driver is blocked `seconds` (an agent thinking, a back-off): the clock moves on that much."""
        with self._lock:
            self._sim, self._mark = self._now() + seconds, time.perf_counter()

    def run_for(self, seconds: float) -> tuple[float, float]:
        """Block a worker's thread for `seconds` of simulated time; its (start, end)."""
        with self._lock:
            start = self._now()
            woken = threading.Event()
            heapq.heappush(self._sleepers, (start + seconds, self._count, woken))
            self._count += 1
            self._lock.notify_all()
        woken.wait()
        return start, start + seconds

    def next_event(self, events: queue.SimpleQueue, timeout: float, until: float | None = None) -> Any:
        with self._lock:
            self._sim, self._frozen = self._now(), True
        try:
            return self._next(events, until)
        finally:
            with self._lock:
                self._mark, self._frozen = time.perf_counter(), False

    def _next(self, events: queue.SimpleQueue, until: float | None) -> Any:
        while True:
            try:
                report = events.get(timeout=5.0) if self._woken else events.get_nowait()
            except queue.Empty:
                if self._woken:
                    raise RuntimeError("a woken run did not report within 5 s") from None
            else:
                with self._lock:
                    self._woken = max(0, self._woken - 1)
                return report
            with self._lock:
                busy = sum(w.job is not None for w in self.workers) + self.asking()
                if busy == 0:
                    raise queue.Empty
                if len(self._sleepers) < busy:  # a run is starting on its thread: let it reach the clock
                    self._lock.wait(0.05)
                    continue
                if until is not None and self._sleepers[0][0] > until:  # the driver has something to do then
                    self._sim = max(self._sim, until)
                    raise queue.Empty
                end, _, woken = heapq.heappop(self._sleepers)
                self._sim = max(self._sim, end)
                self._woken += 1
                woken.set()


@dataclass(frozen=True)
class RunRecord:
    worker: str
    run: str  # "<exp>-<run index>"
    start: float  # simulated seconds
    end: float
    crashed: bool


class SimExecutor:
    """A worker's executor: scores train.py on the landscape, after a simulated run time."""

    def __init__(self, sim: Simulation, label: str):
        self.sim, self.label = sim, label

    def run(self, spec: RunSpec) -> Outcome:
        sim = self.sim
        source = spec.source.read_text()
        draw = random.Random(f"{sim.seed}:{spec.run_dir.name}")  # the same run draws the same, whatever the order
        crashed, seconds = sim.runs.draw(draw, may_crash=_knobs(source) != sim.baseline_knobs)
        start, end = sim.clock.run_for(seconds)
        sim.records.append(RunRecord(self.label, spec.run_dir.name, start, end, crashed))
        if crashed:
            return Outcome(RunEnd.CRASH, None, "simulated crash", "RuntimeError: simulated", seconds)
        value = sim.landscape.measured(source, draw, sim.seed)
        return Outcome(RunEnd.OK, _result(value, sim.runs, spec.fingerprint), "", "", seconds)

    def close(self) -> None:
        pass


class NoExecutor:
    """The loop's own executor, which the scheduler never uses."""

    def run(self, spec: RunSpec) -> Outcome:
        raise AssertionError("the scheduler trains on its workers' executors")

    def close(self) -> None:
        pass


def _result(value: float, runs: RunModel, fingerprint: str) -> Result:
    return Result(
        val_bpb=value,
        valid=True,
        invalid_reason=None,
        training_seconds=runs.budget,
        total_seconds=runs.budget + runs.overhead,
        untimed_seconds=runs.overhead / 2,
        eval_seconds=runs.overhead / 2,
        peak_memory_mb=44_000.0,
        mfu_percent=43.0,
        tokens_per_second=1.5e6,
        total_tokens_M=460.0,
        num_steps=1760,
        num_params_M=50.3,
        epochs=5,
        device="simulated",
        preset="tiny",
        dataset="python-source",
        budget_seconds=runs.budget,
        harness_fingerprint=fingerprint,
        confined=True,
    )


def _knobs(source: str) -> tuple:
    constants = read_constants(source)
    return tuple(constants[name].value for name in BOWLS)


# -- the agent and what the loop tells ---------------------------------------------------------------


class NudgeAgent:
    """Nudges one constant of the best (two, three times in ten); values rounded as a person writes them.
    It skips what is in flight, but not what was measured before: the loop rejects those repeats. `apart`: it
    also skips a move in flight (the same constants moved the same way from the best, by other amounts), as the
    prompt once asked; without it, only an identical train.py is skipped. `wave`: with changes in flight, a value of
    a sweep (`_wave`), as the prompt asks now; the loop combines the sweeps' near-wins (loop/combining.py)."""

    name, model = "nudge", "scripted"
    shell = False  # code in the driver's process, writing no file, as `tune` is

    def __init__(
        self,
        seed: int,
        clock: SimClock,
        propose_seconds: float,
        answers_only: bool = False,
        apart: bool = False,
        wave: bool = False,
    ):
        self.rng, self.clock, self.propose_seconds = random.Random(seed), clock, propose_seconds
        self.answers_only = answers_only  # asked on threads, several at once (loop/answers.py), as API agents are
        self.apart = apart
        self.wave = wave
        self.constants = functools.lru_cache(maxsize=65536)(read_constants)  # a sweep reads the whole history

    def propose(self, context: Context) -> Proposal:
        if self.answers_only:
            self.clock.run_for(self.propose_seconds)  # this ask's thread waits; the driver and the runs go on
        else:
            self.clock.sleep(self.propose_seconds)  # the driver waits while an agent thinks
        taken = {e.source for e in context.in_flight}
        current = self.constants(context.train_py)
        if self.wave and (swept := self._wave(context, current)) is not None:
            return swept
        moving = {_moves(current, self.constants(e.source)) for e in context.in_flight} if self.apart else set()
        for _ in range(50):
            names = self.rng.sample(sorted(BOWLS), 2 if self.rng.random() < 0.3 else 1)
            values = {name: self._nudge(name, current[name].value) for name in names}
            source = set_constants(context.train_py, values)
            fresh = not moving or _moves(current, self.constants(source)) not in moving
            if source != context.train_py and source not in taken and fresh:
                break
        moves = ", ".join(f"{name} {current[name].value} -> {value}" for name, value in values.items())
        return Proposal(moves, source)

    def _wave(self, context: Context, current: dict) -> Proposal | None:
        """With other changes in flight, one value of a sweep: the constant the fewest changes in flight move alone
        from the best, set to the nearest value of its grid (`_grid`) that no change in flight or measured holds."""
        if not context.in_flight:
            return None
        held: set[frozenset] = set()  # the moves from the best in flight or measured: {(name, value)}
        moving = dict.fromkeys(BOWLS, 0)
        for exp, flying in [(e, True) for e in context.in_flight] + [(e, False) for e in context.history]:
            try:
                theirs = self.constants(exp.source)
            except (SyntaxError, ValueError):
                continue
            if not theirs.keys() >= BOWLS.keys():
                continue
            moved = [name for name in BOWLS if theirs[name].value != current[name].value]
            others = [n for n, c in theirs.items() if n not in BOWLS and c.value != current.get(n, c).value]
            if moved and not others:
                held.add(frozenset((name, float(theirs[name].value)) for name in moved))
            if len(moved) == 1 and not others:
                moving[moved[0]] += flying
        names = sorted(BOWLS, key=lambda n: (moving[n], self.rng.random()))
        grids = {name: self._grid(name, float(current[name].value)) for name in names}
        singles = [{name: value} for name in names for value in grids[name]]
        # Every value of every sweep held (many workers use them up within a round): two settings at once, the
        # nearest values first, as a factorial grid.
        pairs = sorted(
            (
                (i + j, {a: va, b: vb})
                for k, a in enumerate(names)
                for b in names[k + 1 :]
                for i, va in enumerate(grids[a])
                for j, vb in enumerate(grids[b])
            ),
            key=lambda pair: pair[0],
        )
        for values in [*singles, *(values for _, values in pairs)]:
            if frozenset((name, float(value)) for name, value in values.items()) not in held:
                moves = ", ".join(f"{name} {current[name].value} -> {value}" for name, value in values.items())
                return Proposal(f"sweep {moves}", set_constants(context.train_py, values))
        return None

    @staticmethod
    def _grid(name: str, value: float) -> list[float]:
        """A sweep's values around `value`, nearest first, both ways, rounded as a person writes them."""
        if name == "BATCH":
            values = [value * 2, value / 2, value * 4, value / 4]
            values = [min(512, max(8, int(v))) for v in values]
        elif name in ("WARMUP_FRAC", "DROPOUT"):
            values = [round(min(0.5, max(0.0, value + step)), 2) for step in (0.04, -0.04, 0.08, -0.08, 0.12, -0.12)]
        else:
            values = [float(f"{value * 2 ** (step / 2):.2g}") for step in (1, -1, 2, -2, 3, -3)]
        return [v for i, v in enumerate(values) if v != value and v not in values[:i]]

    def _nudge(self, name: str, value: float) -> float:
        if name == "BATCH":
            return min(512, max(8, int(value * self.rng.choice((0.5, 2)))))
        if name in ("WARMUP_FRAC", "DROPOUT"):
            return round(min(0.5, max(0.0, value + self.rng.gauss(0.0, 0.05))), 2)
        return float(f"{value * 2 ** self.rng.gauss(0.0, 0.6):.2g}")


def _moves(old: dict, new: dict) -> frozenset:
    """Which of the landscape's constants (`read_constants` of two train.py) `new` moves from `old`, and which way:
    {(name, up)}."""
    return frozenset(
        (name, float(new[name].value) > float(old[name].value)) for name in BOWLS if new[name].value != old[name].value
    )


class CombiningAgent:
    """Before asking its agent: the changes of the experiments on the best that came out better than it but within
    the noise (near-wins), on constants none of the others changed, combined into one proposal, the best first.
    One combination in flight at a time."""

    def __init__(self, inner: NudgeAgent | TuneAgent):
        self.inner, self.name, self.model = inner, inner.name, inner.model
        self.answers_only, self.shell = getattr(inner, "answers_only", False), False

    def propose(self, context: Context) -> Proposal:
        if context.best_bpb is not None and not any(e.description.startswith("combined") for e in context.in_flight):
            combined = self._combined(context)
            if combined is not None:
                return combined
        return self.inner.propose(context)

    def _combined(self, context: Context) -> Proposal | None:
        near = []
        for exp in context.history:
            if exp.val_bpb is None or exp.status != Status.DISCARD or exp.val_bpb >= context.best_bpb:
                continue
            changes = changed_constants(context.train_py, exp.source)
            if changes and "SEED" not in changes:
                near.append((exp.val_bpb, exp.id, changes))
        chosen, names, ids = {}, set(), []
        for _, exp_id, changes in sorted(near):
            if not names & changes.keys():
                chosen |= changes
                names |= changes.keys()
                ids.append(exp_id)
        if len(ids) < 2:
            return None
        source = set_constants(context.train_py, chosen)
        taken = {e.source for e in context.history} | {e.source for e in context.in_flight}
        if source in taken:
            return None
        return Proposal("combined near-wins of exp " + ", ".join(map(str, ids)), source)


class Recorder:
    """The loop's reporter: silent, it notes the simulated time of every verdict."""

    def __init__(self, clock: SimClock):
        self.clock = clock
        self.verdicts: list[tuple[float, int]] = []  # (simulated seconds, experiment id)
        self.messages: list[str] = []

    def phase(self, exp_id: int, what: str, text: str) -> None:
        pass

    def training(self, exp_id: int, run: int, budget: float, worker: str = "") -> None:
        pass

    def run_ended(self, exp_id: int, run: int, worker: str) -> None:
        pass

    def finished(self, exp: Experiment, best: Experiment | None) -> None:
        self.verdicts.append((self.clock.now(), exp.id))

    def message(self, text: str) -> None:
        self.messages.append(text)


# -- one simulation ---------------------------------------------------------------------------------


@dataclass
class Simulation:
    workers: int
    hours: float
    seed: int = 0
    landscape: Landscape = field(default_factory=Landscape)
    runs: RunModel = field(default_factory=RunModel)
    propose_seconds: float = 0.0
    asks_on_threads: bool = False
    agent: str = "nudge"  # "nudge-apart", "wave" (NudgeAgent's `apart`, `wave`), or "tune": the package's Optuna agent
    eager: bool = False  # a what-if, never the loop's rule: a marginal win is kept without its re-run
    at_once: int = 1  # a what-if, never the loop's rule: every change trained on this many seeds at once
    confirm_runs: int | None = None  # the runs a kept change gets in all (None: the scheduler's own rule)
    combine: bool = False  # the agent's proposals preceded by combinations of near-wins (CombiningAgent)
    baseline_runs: int = BASELINE_RUNS  # the loop's --baseline-runs
    baseline_seeds_max: int | None = None  # in place of the scheduler's BASELINE_SEEDS_MAX, at every count
    driver_rate: float = 1.0
    clock: SimClock = field(init=False)
    records: list[RunRecord] = field(default_factory=list)
    baseline_knobs: tuple = field(default_factory=lambda: _knobs(TRAIN_PY))

    def __post_init__(self) -> None:
        self.clock = SimClock(self.driver_rate)

    def run(self, work: Path, data_dir: Path) -> tuple[ResearchLoop, Recorder, float]:
        """Run the loop in a fresh workspace at `work`; the loop, its recorder and the driver's CPU seconds."""
        shutil.rmtree(work, ignore_errors=True)
        create_workspace(work, get_preset("tiny"), "python-source", data_dir, self.runs.budget, tag="sim")
        ws = Workspace(work)
        ws.write_train_py(TRAIN_PY)
        ws.git.commit("the simulation's train.py", "train.py")
        recorder = Recorder(self.clock)
        # No environment check around the turns (Environment(())): the tune agent writes no file, and a walk of
        # this Python's files would add real CPU seconds to the simulated driver's.
        config = LoopConfig(baseline_runs=self.baseline_runs)
        loop = ResearchLoop(ws, NoExecutor(), recorder, config, sleep=self.clock.sleep, environment=Environment(()))
        found = [Device(f"gpu {i}", {"CUDA_VISIBLE_DEVICES": str(i)}) for i in range(self.workers)]
        workers = make_workers(loop, found, lambda device: SimExecutor(self, device.label))
        self.clock.workers = workers
        if self.agent == "tune":
            agent = TuneAgent(seed=self.seed)
        else:
            apart, wave = self.agent in ("nudge-apart", "wave"), self.agent == "wave"
            agent = NudgeAgent(self.seed, self.clock, self.propose_seconds, self.asks_on_threads, apart, wave)
        if self.combine:
            agent = CombiningAgent(agent)
        seeds_max = {} if self.baseline_seeds_max is None else {"baseline_seeds_max": self.baseline_seeds_max}
        scheduler = Scheduler(loop, workers, clock=self.clock, confirm_runs=self.confirm_runs, **seeds_max)
        self.clock.asking = lambda: scheduler.answers.pending
        before = os.times()
        self.clock.reset()
        if self.eager:
            ratchet_module.judge = _eager_judge
        if self.at_once > 1:
            scheduler.activate = _at_once(scheduler, self.at_once)
        try:
            scheduler.run(agent, hours=self.hours)
        finally:
            ratchet_module.judge = judge
            close_workers(workers)
        after = os.times()
        cpu = sum(after[:4]) - sum(before[:4])  # user + system, of the driver and of its git processes
        return loop, recorder, cpu


def _at_once(scheduler: Scheduler, runs: int) -> Any:
    """The scheduler's `activate`, but a change not yet trained wants `runs` runs (seeds) at once, judged on their mean
    when all have ended: no marginal win waits a round for its re-run (fewer changes per round)."""
    activate = scheduler.activate

    def at_once(exp: Experiment, front: bool = False) -> None:
        if exp.kind != Kind.EXPERIMENT or exp.run_values:
            return activate(exp, front)
        scheduler.queue_runs(scheduler.active.setdefault(exp.id, Active(exp.id, runs, exp.attempts)), front)

    return at_once


def _eager_judge(*args: Any) -> Verdict:
    """The judge, but keeping a marginal win at once: how much sooner N workers would get there if a marginal win
    cost no second run (an upper bound on speculating on it; it lets false keeps in)."""
    verdict = judge(*args)
    return Verdict(Status.KEEP, verdict.reason) if verdict.decision == Status.RERUN else verdict


@dataclass
class Measure:
    workers: int
    hours: float  # the window measured: the agent is asked until then, then what is in flight ends
    experiments: int  # trained experiments judged within the window (merges re-validated included)
    experiments_per_hour: float
    busy: float  # the GPUs' time running, from the executors' own records, over workers x window
    baseline_idle: float  # of the window's GPU time, the part idle while the baseline's seeds trained
    best_true: float  # the landscape's value of the final best
    hours_to_target: float | None  # until the best's true value reached the target (None: not within)
    gpu_hours_to_target: float | None
    keeps: int
    false_keeps: int  # kept, but truly no better than the base they were judged against
    stale_wins_merged: int
    merges_kept: int
    conflicts: int  # wins on a stale base discarded because their change conflicted with the best's
    true_wins_lost_to_conflicts: int
    rejected_proposals: int  # repeats of what was measured on the same best: not trained
    crashes: int
    driver_cpu_s_per_experiment: float
    real_seconds: float

    def row(self, one: Measure) -> str:
        speed = self.experiments_per_hour / one.experiments_per_hour / self.workers
        reached = f"{self.hours_to_target:.2f} h" if self.hours_to_target is not None else "not reached"
        ratio = (
            f"{self.hours_to_target / one.hours_to_target * self.workers / 2:.2f}"
            if self.hours_to_target is not None and one.hours_to_target
            else "-"
        )
        gpu = (
            f"{self.gpu_hours_to_target:.1f} ({self.gpu_hours_to_target / one.gpu_hours_to_target:.2f}x)"
            if self.gpu_hours_to_target is not None and one.gpu_hours_to_target
            else "-"
        )
        return (
            f"| {self.workers} | {self.hours:g} h | {self.experiments} | {self.experiments_per_hour:.1f} "
            f"({speed:.2f} x N) | {self.busy:.1%} | {reached} ({ratio}) | {gpu} | {self.false_keeps}/{self.keeps} "
            f"| {self.conflicts} ({self.true_wins_lost_to_conflicts}) | {self.stale_wins_merged}/{self.merges_kept} "
            f"| {self.rejected_proposals} | {self.driver_cpu_s_per_experiment:.3f} s |"
        )


HEADER = (
    "| workers | window | experiments | per hour (vs N x one) | busy | to the 1-worker best (/ 2/N goal) "
    "| GPU-h to it (vs one) | false keeps / keeps | conflicts (true wins) | stale wins merged / kept "
    "| repeats rejected | driver CPU per exp |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def measure(sim: Simulation, loop: ResearchLoop, recorder: Recorder, cpu: float, target: float | None) -> Measure:
    """What the run did, from the ledger, the executors' records and the verdicts' simulated times."""
    window = sim.hours * 3600
    rows = {e.id: e for e in loop.ledger.all()}
    by_commit = {e.commit: e for e in rows.values() if e.commit and e.status == Status.KEEP}
    true = sim.landscape.true_bpb
    when = dict((exp_id, t) for t, exp_id in recorder.verdicts)
    trained = [e for e in rows.values() if e.kind == Kind.EXPERIMENT and when.get(e.id, math.inf) <= window]
    kept = [e for e in rows.values() if e.kind == Kind.EXPERIMENT and e.status == Status.KEEP]
    running = sum(max(0.0, min(r.end, window) - r.start) for r in sim.records)
    baseline_end = when[1]  # the baseline is experiment 1 of a fresh workspace
    busy_then = sum(max(0.0, min(r.end, baseline_end) - r.start) for r in sim.records)
    conflicts = [e for e in rows.values() if e.status == Status.DISCARD and "conflicts with exp" in e.reason]
    reached = _reached(rows, when, true, target) if target is not None else None
    trained_all = sum(e.kind == Kind.EXPERIMENT for e in rows.values())
    return Measure(
        workers=sim.workers,
        hours=sim.hours,
        experiments=len(trained),
        experiments_per_hour=len(trained) / sim.hours,
        busy=running / (sim.workers * window),
        baseline_idle=(sim.workers * baseline_end - busy_then) / (sim.workers * window),
        best_true=true(loop.best().source),
        hours_to_target=reached / 3600 if reached is not None else None,
        gpu_hours_to_target=reached / 3600 * sim.workers if reached is not None else None,
        keeps=len(kept),
        false_keeps=sum(true(e.source) >= true(by_commit[e.parent].source) for e in kept),
        stale_wins_merged=sum(e.merged_from > 0 for e in rows.values()),
        merges_kept=sum(e.merged_from > 0 for e in kept),
        conflicts=len(conflicts),
        true_wins_lost_to_conflicts=sum(true(e.source) < true(by_commit[e.parent].source) for e in conflicts),
        rejected_proposals=sum(e.kind == Kind.PROPOSAL for e in rows.values()),
        crashes=sum(e.kind == Kind.EXPERIMENT and e.status == Status.CRASH for e in rows.values()),
        driver_cpu_s_per_experiment=cpu / max(1, trained_all),
        real_seconds=0.0,
    )


def _reached(rows: dict[int, Experiment], when: dict[int, float], true, target: float) -> float | None:
    """The simulated time of the first keep after which the best's true value is at or under `target`."""
    for exp in sorted((e for e in rows.values() if e.status == Status.KEEP), key=lambda e: when[e.id]):
        if true(exp.source) <= target + 1e-12:
            return when[exp.id]
    return None


def small_corpus(root: Path) -> Path:
    """A corpus of a few standard-library packages: enough to prepare the tiny preset's data in a second
    (the loop checks that data exists; no run reads it)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for package in ("json", "email", "asyncio"):
        for src in sorted((stdlib / package).rglob("*.py")):
            dest = root / package / src.relative_to(stdlib / package)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
    return root


def prepared_data(work: Path) -> Path:
    corpus = work / "corpus"
    if not corpus.exists():
        small_corpus(corpus)
    return prepare("python-source", get_preset("tiny"), work / "cache", root=corpus, console=Console(quiet=True))


def simulate_all(
    counts: list[int],
    hours: float,
    window: float,
    work: Path,
    data_dir: Path,
    seed: int = 0,
    eager: bool = False,
    at_once: int = 1,
    confirm_runs: tuple[int | None, int | None] = (None, None),
    target: float | None = None,
    **options: Any,
) -> list[Measure]:
    """The first count for `hours`, then each other count for hours x min(1, window / N), aiming at the first
    run's final best (`eager`: the other counts keep marginal wins without a re-run; `at_once`: they train every
    change on that many seeds at once; `confirm_runs`: the runs a kept change gets in all, in the first count and
    in the others, None where the scheduler's own rule; `target`: every count aims at this true val_bpb instead)."""
    measures: list[Measure] = []
    for n in counts:
        hours_n = hours if not measures else hours * min(1.0, window / n)
        what_if = {"eager": eager, "at_once": at_once} if measures else {}  # the reference as it is
        what_if["confirm_runs"] = confirm_runs[1 if measures else 0]
        sim = Simulation(n, hours_n, seed=seed, **options, **what_if)
        started = time.perf_counter()
        loop, recorder, cpu = sim.run(work / f"workers-{n}", data_dir)
        if target is None:
            target = sim.landscape.true_bpb(loop.best().source)
        result = measure(sim, loop, recorder, cpu, target)
        result.real_seconds = time.perf_counter() - started
        measures.append(result)
        print(f"{n} workers: {result.experiments} experiments in {result.real_seconds:.0f} s", flush=True)
    return measures


def across_seeds(per_seed: dict[int, list[Measure]]) -> list[dict]:
    """Per worker count, over the landscape draws: the median of each goal's ratio (a draw where the target was
    not reached counts as worse than any that reached it) and how many draws met each goal."""
    counts = [m.workers for m in next(iter(per_seed.values()))]
    summary = []
    for i, n in enumerate(counts[1:], start=1):
        speed, time_ratio, gpu_ratio = [], [], []
        for measures in per_seed.values():
            one, m = measures[0], measures[i]
            speed.append(m.experiments_per_hour / one.experiments_per_hour / n)
            reached = m.hours_to_target is not None and one.hours_to_target
            time_ratio.append(m.hours_to_target / one.hours_to_target * n / 2 if reached else math.inf)
            gpu_ratio.append(m.gpu_hours_to_target / one.gpu_hours_to_target if reached else math.inf)
        summary.append(
            {
                "workers": n,
                "draws": len(speed),
                "per_hour_x_n_median": statistics.median(speed),
                "time_over_2_n_goal_median": statistics.median(time_ratio),
                "time_goal_met": sum(r <= 1.0 for r in time_ratio),
                "gpu_hours_ratio_median": statistics.median(gpu_ratio),
                "gpu_hours_goal_met": sum(r <= 1.5 for r in gpu_ratio),
                "not_reached": sum(math.isinf(r) for r in time_ratio),
                "false_keeps": sum(measures[i].false_keeps for measures in per_seed.values()),
            }
        )
    return summary


def against_given(per_seed: dict[int, list[Measure]], given: dict) -> dict:
    """The first count against the first count of `--target-from`'s file, aiming at its final best: the time to it
    over that run's (a draw where it was not reached counts as worse than any), and how many draws were sooner."""
    ratios = []
    for seed, measures in per_seed.items():
        theirs = given[str(seed)][0]["hours_to_target"]
        ours = measures[0].hours_to_target
        ratios.append(ours / theirs if ours is not None else math.inf)
    return {
        "workers": per_seed[next(iter(per_seed))][0].workers,
        "draws": len(ratios),
        "time_to_given_best_over_theirs_median": statistics.median(ratios),
        "sooner": sum(r < 1 for r in ratios),
        "later": sum(r > 1 for r in ratios),
        "not_reached": sum(math.isinf(r) for r in ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,4,16,64", help="worker counts, the first is the reference")
    parser.add_argument("--hours", type=float, default=8.0, help="simulated hours of the first count")
    parser.add_argument("--window", type=float, default=2.5, help="N workers run hours x min(1, window / N)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", help="several landscape draws, e.g. 0,1,2,3,4,5: each run, then the medians")
    parser.add_argument("--noise", type=float, default=0.0015, help="seed-to-seed std of val_bpb")
    parser.add_argument("--budget", type=float, default=300.0)
    parser.add_argument("--propose-seconds", type=float, default=0.0, help="how long the agent thinks (simulated)")
    parser.add_argument(
        "--agent", choices=("nudge", "nudge-apart", "wave", "tune"), default="nudge", help="who proposes (see above)"
    )
    parser.add_argument(
        "--eager", action="store_true", help="what if: all but the first count keep marginal wins without a re-run"
    )
    parser.add_argument(
        "--seeds-at-once", type=int, default=1, help="what if: all but the first count train each change on K seeds"
    )
    parser.add_argument(
        "--confirm-runs",
        type=int,
        default=None,
        help="all but the first count measure a kept change K runs in all (default: the scheduler's own rule)",
    )
    parser.add_argument(
        "--reference-confirm-runs",
        type=int,
        default=None,
        help="the first count measures a kept change K runs in all (default: the scheduler's: 1 with one worker)",
    )
    parser.add_argument("--combine", action="store_true", help="combine near-wins before asking the agent")
    parser.add_argument("--asks-on-threads", action="store_true", help="the agent only answers: asked at once")
    parser.add_argument(
        "--baseline-runs", type=int, default=BASELINE_RUNS, help="the loop's --baseline-runs, at every count"
    )
    parser.add_argument(
        "--baseline-seeds-max", type=int, default=None, help="in place of the scheduler's BASELINE_SEEDS_MAX"
    )
    parser.add_argument(
        "--target-from",
        type=Path,
        help="a results file of the same draws: every count aims at its first count's final best, draw by draw",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/simulate"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/2026-11-30-simulate.json"))
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    options = {
        "landscape": Landscape(seed_noise=args.noise, run_noise=args.noise / 10),
        "runs": RunModel(budget=args.budget),
        "propose_seconds": args.propose_seconds,
        "asks_on_threads": args.asks_on_threads,
        "agent": args.agent,
        "combine": args.combine,
        "baseline_runs": args.baseline_runs,
        "baseline_seeds_max": args.baseline_seeds_max,
    }
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    data_dir = prepared_data(args.work)
    per_seed: dict[int, list[Measure]] = {}
    given = json.loads(args.target_from.read_text())["results"] if args.target_from else {}
    for seed in seeds:
        per_seed[seed] = simulate_all(
            counts,
            args.hours,
            args.window,
            args.work,
            data_dir,
            seed,
            args.eager,
            args.seeds_at_once,
            (args.reference_confirm_runs, args.confirm_runs),
            given[str(seed)][0]["best_true"] if given else None,
            **options,
        )
        print(f"seed {seed}\n{HEADER}")
        for m in per_seed[seed]:
            print(m.row(per_seed[seed][0]))
    summary = across_seeds(per_seed) if len(seeds) > 1 else []
    if given:
        summary.insert(0, against_given(per_seed, given))
    for line in summary:
        print(json.dumps(line))
    measures = per_seed[seeds[0]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": f"bench/simulate.py --workers {args.workers} --hours {args.hours:g} --window {args.window:g} "
        + (f"--seeds {args.seeds} " if args.seeds else f"--seed {args.seed} ")
        + f"--noise {args.noise:g} --budget {args.budget:g} --propose-seconds {args.propose_seconds:g}"
        + (" --asks-on-threads" if args.asks_on_threads else "")
        + (f" --agent {args.agent}" if args.agent != "nudge" else "")
        + (" --eager" if args.eager else "")
        + (f" --seeds-at-once {args.seeds_at_once}" if args.seeds_at_once > 1 else "")
        + (f" --confirm-runs {args.confirm_runs}" if args.confirm_runs is not None else "")
        + (f" --reference-confirm-runs {n}" if (n := args.reference_confirm_runs) is not None else "")
        + (" --combine" if args.combine else "")
        + (f" --baseline-runs {args.baseline_runs}" if args.baseline_runs != BASELINE_RUNS else "")
        + (f" --baseline-seeds-max {args.baseline_seeds_max}" if args.baseline_seeds_max is not None else "")
        + (f" --target-from {args.target_from}" if args.target_from else ""),
        "landscape": {name: asdict(bowl) for name, bowl in BOWLS.items()} | {"floor": FLOOR},
        "options": {k: asdict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in options.items()},
        "target_true_bpb": measures[0].best_true,
        "median_run_s": statistics.median([m.real_seconds for m in measures]),
        "results": [asdict(m) for m in measures],
    }
    if len(seeds) > 1:
        report["results"] = {str(seed): [asdict(m) for m in found] for seed, found in per_seed.items()}
        report["across_seeds"] = summary
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
