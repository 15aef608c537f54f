"""The workers of a parallel loop: one per device, each with its own executor and its own git worktree.

A worker trains one experiment at a time. Its runs are pinned to its device through the environment its
executor starts evaluators with: `CUDA_VISIBLE_DEVICES=<id>` for a GPU (the process then sees that GPU
alone, as `cuda:0`), and on a CPU `OMP_NUM_THREADS` = its share of the cores, with CUDA hidden; with several
workers, each is pinned to CPUs of its own (`AUTORESEARCH_RUN_CPUS`, evaluator/cores.py). Its
worktree (`.autoresearch/workers/<n>`, detached, made by the driver) holds the train.py it trains: two
experiments never share a file, a device or an executor. Workers never touch git, the ledger or
results.tsv: the driver checks out and commits in their worktrees and records what they report.
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import compile_cache, memory
from autoresearch.evaluator.cores import (
    AGENT_CORES_ENV,
    agent_cores,
    pins,
    runs_train_on_cpu,
    usable_cores,
)
from autoresearch.evaluator.gpu_nodes import gpu_models, nvidia_gpus
from autoresearch.files import remove_tree
from autoresearch.loop.executor import Executor, LocalExecutor, Outcome, RunSpec
from autoresearch.workspace.disk import disk_full_is_an_error
from autoresearch.workspace.git import Git, GitError

if TYPE_CHECKING:
    from autoresearch.loop.engine import ResearchLoop

WORKERS_DIR = "workers"  # under the workspace's .autoresearch/
LOCAL = "local"  # the device of the one-worker loop, as it always ran: no --gpus, --workers or --ray


@dataclass(frozen=True)
class Device:
    label: str  # what status and the live view call it: "gpu 1", "cpu 0"
    env: dict[str, str] = field(default_factory=dict)  # set for its runs, over the loop's environment


def visible_gpus(env: dict[str, str] | None = None) -> list[str]:
    """The GPU ids this machine offers (CUDA_VISIBLE_DEVICES if set, else the driver's GPUs, else its NVIDIA
    device nodes), no torch."""
    env = os.environ if env is None else env
    if (visible := env.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if gpus := nvidia_gpus():
        return [str(i) for i in range(len(gpus))]
    return sorted((p.removeprefix("/dev/nvidia") for p in glob.glob("/dev/nvidia[0-9]*")), key=int)


def _named_gpus(gpus: str) -> list[str]:
    """The GPU ids `--gpus 0,1,3` names, as given."""
    return [g.strip() for g in gpus.split(",") if g.strip()]


def require_gpus(gpus: str | None) -> None:
    """`--gpus 0,1` naming GPUs the machine does not show: with none at all its runs would train on the CPU, each
    worker on a share of the cores, under a GPU's name (`--gpus all` says so in `devices`); a number past its GPUs
    would stop the loop after the first run, on a setup unlike the baseline's. (UUIDs are CUDA's to check.)"""
    if gpus is None or gpus.strip() == "all":
        return
    if not (ids := _named_gpus(gpus)):  # not `all`, nor "no GPU found"
        raise AutoresearchError(f"--gpus takes `all` or GPU numbers like 0,1,3, not {gpus!r}")
    shown = visible_gpus()
    if not shown:
        raise AutoresearchError(
            f"no GPU found for --gpus {gpus}: this machine shows none", hint="on a CPU-only machine use --workers N"
        )
    if unknown := list(dict.fromkeys(g for g in ids if g.isdigit() and g not in shown)):
        raise AutoresearchError(
            f"--gpus {gpus}: no GPU {', '.join(unknown)} here; this machine shows {', '.join(shown)}",
            hint="give --gpus numbers it shows, or `all`",
        )


def devices(gpus: str | None, workers: int | None, cores: int | None = None) -> list[Device]:
    """The devices of `--gpus all|0,1,3` or `--workers N`; neither: one worker as the loop always had, its
    environment untouched."""
    return placed(gpus, workers, cores)[0]


def placed(
    gpus: str | None, workers: int | None, cores: int | None = None, agents: bool = False
) -> tuple[list[Device], dict[str, str]]:
    """`devices`, and the agents' pin (AGENT_CPUS_ENV, or {}): with `agents` (a shell agent's turns run beside the
    runs), the agents get the whole cores evaluator/cores.py's `agent_cores` says, and every run, one worker's too,
    is pinned off them."""
    if gpus is not None and workers is not None:
        raise AutoresearchError("give --gpus or --workers, not both", hint="--workers N is for CPU-only machines")
    if gpus is not None:
        ids = visible_gpus() if gpus.strip() == "all" else _named_gpus(gpus)
        if not ids:
            raise AutoresearchError("no GPU found for --gpus all", hint="on a CPU-only machine use --workers N")
        if len(set(ids)) != len(ids):
            raise AutoresearchError(f"--gpus {gpus} names a GPU twice: two runs never share a GPU")
        if not all(g.isdigit() or g.startswith(("GPU-", "MIG-")) for g in ids):  # numbers, or UUIDs as CUDA takes
            raise AutoresearchError(f"--gpus takes `all` or GPU numbers like 0,1,3, not {gpus!r}")
        models = gpu_models(ids)
        if len(set(models.values())) > 1:  # the runs would be judged against each other
            listing = ", ".join(f"{g}: {model}" for g, model in models.items())
            raise AutoresearchError(
                f"--gpus {gpus} takes GPUs of different models ({listing})",
                hint="scores from different GPU models are not comparable: give --gpus the GPUs of one model, and "
                "research on the others in a workspace of their own",
            )
        # PCI bus order: GPU i is nvidia-smi's i, and the sandbox binds its device node alone (gpu_nodes.py).
        order, threads = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, _threads(len(ids), cores)
        runs, theirs = _pins(len(ids), agents, True)
        share = memory.shares(len(ids))
        return [
            Device(f"gpu {g}", {"CUDA_VISIBLE_DEVICES": g, **order, **threads, **pinned, **share})
            for g, pinned in zip(ids, runs, strict=True)
        ], theirs
    if workers is None:
        runs, theirs = _pins(1, agents, not runs_train_on_cpu(os.environ))
        return [Device(LOCAL, runs[0])], theirs
    if workers < 1:
        raise AutoresearchError("--workers must be at least 1")
    if workers > (usable := cores or usable_cores()):
        # Each run's budget is CPU time over its threads: two runs on one core would take twice the wall time.
        raise AutoresearchError(
            f"--workers {workers} needs a core per worker, and this machine gives the loop {usable}",
            hint=(
                f"use --workers {usable} or fewer"
                if usable > 1
                else "leave --workers out: the loop then runs one worker"
            )
            + " (a container's CPU limit counts, not the machine's CPUs)",
        )
    runs, theirs = _pins(workers, agents, False)
    share = memory.shares(workers)
    return [
        Device(f"cpu {i}", {"CUDA_VISIBLE_DEVICES": "", **_threads(workers, usable), **pinned, **share})
        for i, pinned in enumerate(runs)
    ], theirs


def _pins(count: int, agents: bool, on_gpu: bool) -> tuple[list[dict[str, str]], dict[str, str]]:
    """evaluator/cores.py's `pins` for `count` workers, with the agents' cores aside where they have a shell."""
    try:
        return pins(count, agent_cores(count, on_gpu) if agents else 0)
    except ValueError as err:
        raise AutoresearchError(
            str(err),
            # not "e.g. 1": on 2 cores with 2 workers, 1 was what had been refused (evaluator/cores.py says the
            # numbers; a word changed there would change the apparatus fingerprint of every workspace)
            hint=f"set {AGENT_CORES_ENV} to a number of whole cores the runs can spare (the cores less one per run), "
            "or 0 for none",
        ) from None


def _threads(workers: int, cores: int | None) -> dict[str, str]:
    """Each worker's share of the cores, for what runs on the CPU (training there; data and scoring beside a GPU)."""
    cores = cores or usable_cores()
    return {"OMP_NUM_THREADS": str(max(1, cores // workers))}


@dataclass
class Job:
    """One training run of one experiment, as a worker takes it."""

    exp_id: int
    run: int  # the run's index: it trains with SEED + run
    source: str  # train.py as it trains (the seed applied)
    spec: RunSpec | None = None  # filled in when a worker takes it
    ended_at: float | None = None  # time.time() when its outcome came back, set on the worker's thread
    handed_at: float | None = None  # the scheduler's clock when a worker took it


@dataclass
class Active:
    """An experiment in flight (or a kept one measured again): the runs it still wants and those being trained."""

    exp_id: int
    wanted: int  # runs it needs before it is judged (more after a marginal win)
    attempts: int  # its runs the loop saw interrupted before (by its death): one more while any run trains
    running: set[int] = field(default_factory=set)  # run indices being trained now
    lost: set[int] = field(default_factory=set)  # run indices once killed from outside: not retried again


class Worker:
    """A device, its executor and its worktree; runs one job at a time on a thread of its own."""

    def __init__(self, index: int, device: Device, executor: Executor, worktree: Path):
        self.index, self.device, self.executor, self.worktree = index, device, executor, worktree
        self.job: Job | None = None
        self._thread: threading.Thread | None = None

    @property
    def train_py(self) -> Path:
        return self.worktree / "train.py"

    def start(self, job: Job, done: Callable[[Worker, Job, Outcome | BaseException], None]) -> None:
        """Run `job` (its train.py already written to the worktree) and call `done` from the worker's thread."""
        self.job = job

        def work() -> None:
            try:
                with disk_full_is_an_error("writing a training run's files"):  # the loop stops saying so
                    outcome: Outcome | BaseException = self.executor.run(job.spec)
                result = outcome.result
                compile_cache.vouch(job.spec.run_dir / compile_cache.STAGED, result and result.compiled)
            except BaseException as exc:  # reported to the driver, which decides; never lost in a thread
                outcome = exc
            job.ended_at = time.time()  # the worker is free now, whenever the driver takes the report
            done(self, job, outcome)

        self._thread = threading.Thread(target=work, name=f"autoresearch-{self.device.label}", daemon=True)
        self._thread.start()

    def finished(self) -> None:
        self.job, self._thread = None, None

    def stop(self) -> None:
        """Kill the run in progress and wait for the thread to report it."""
        stop = getattr(self.executor, "stop", None)
        if self.job is not None and stop is not None:
            stop()
        if self._thread is not None:
            self._thread.join(timeout=30)


def stop_workers(workers: list[Worker]) -> None:
    """Stop every worker at once: each kill waits for its evaluator's end (seconds on a GPU), which one after the
    other would add up past what a Ctrl-C should take. What one raised is raised once all are stopped."""
    failed: list[BaseException] = []

    def stop(worker: Worker) -> None:
        try:
            worker.stop()
        except BaseException as exc:  # not lost in a thread
            failed.append(exc)

    stopping = [threading.Thread(target=stop, args=(worker,), name="autoresearch-stop") for worker in workers]
    for thread in stopping:
        thread.start()
    for thread in stopping:
        thread.join()
    if failed:
        raise failed[0]


def make_worktree(git: Git, path: Path, commit: str) -> Path:
    """A worker's worktree at `commit`, detached, made afresh (what a killed loop left there is gone)."""
    if path.exists():
        git("worktree", "remove", "--force", str(path), check=False)
        with contextlib.suppress(OSError):
            remove_tree(path)
    git("worktree", "prune")
    git("worktree", "add", "--quiet", "--detach", "--force", str(path), commit)
    return path


def remove_worktrees(git: Git, state: Path) -> None:
    """Every worker's worktree, this loop's and any an earlier loop with more workers left. Only once nothing is in
    flight: the commit of an experiment in flight may be in a worktree alone, where git's gc cannot take it."""
    folder = state / WORKERS_DIR
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        git("worktree", "remove", "--force", str(path), check=False)
    with contextlib.suppress(OSError):
        remove_tree(folder)
    git("worktree", "prune", check=False)


def check_out(git: Git, worktree: Path, commit: str) -> None:
    """Point the worktree at `commit`, its files as committed; made again where it has gone (its folder deleted
    by hand while the loop runs: git, run there, would fail), or where git fails there: its files in
    .git/worktrees/<n>/ are in an agent's reach, and a HEAD there that named no commit stopped the loop (red team)."""
    if (worktree / ".git").is_file():
        try:
            git.worktree(worktree)("checkout", "--quiet", "--detach", "--force", commit)
            return
        except GitError:
            pass
    make_worktree(git, worktree, commit)


def make_workers(loop: ResearchLoop, found: list[Device], executor_for=None) -> list[Worker]:
    """One worker per device, each with its executor (`executor_for(device)`, a LocalExecutor by default)
    and a fresh worktree at the branch's head. The loop's own executor, whose fork server started importing as
    the loop was made, is the first worker's where the device asks of the environment what it was made with; else it
    is closed at once, so no unused fork server holds a core or the exit."""
    own = loop.executor

    def local(device: Device) -> Executor:
        if isinstance(own, LocalExecutor) and device.env == own.device_env and own not in executors:
            return own
        return LocalExecutor(env=device.env)

    executors: list[Executor] = []
    for device in found:
        executors.append((executor_for or local)(device))
    if own not in executors and isinstance(own, LocalExecutor):
        own.close(wait=0)
    head = loop.git.head()
    return [
        Worker(i, device, executor, make_worktree(loop.git, loop.ws.state / WORKERS_DIR / str(i), head))
        for i, (device, executor) in enumerate(zip(found, executors, strict=True))
    ]


def close_workers(workers: list[Worker]) -> None:
    for worker in workers:
        with contextlib.suppress(OSError, AutoresearchError):
            worker.executor.close()
