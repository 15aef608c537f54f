"""Training runs as Ray tasks: `autoresearch run --ray [ADDRESS]` (the optional extra `autoresearch[ray]`).

Each run is a task that needs one GPU (of an accelerator type, if given), on whichever node of the cluster
has one free; Ray pins it there with CUDA_VISIBLE_DEVICES. The task runs the run as this machine's loop
would (a LocalExecutor on that node: the evaluator, the confined experiment, the result file) and returns
the outcome. The loop, where the workspace is, stays the only writer of git, the ledger and results.tsv:
one worker per GPU of the cluster, each with this executor (loop/scheduler.py).

This first version needs the workspace and the cache directory on a filesystem every node sees at the same
paths (one machine, or NFS): a node that cannot see them refuses with that reason, and the result of a
node whose evaluator or data differ carries another apparatus fingerprint, which stops the loop
(executor.py: the apparatus changed). A run whose task was lost with its worker or node is reported as
lost; the scheduler tries it once more.
"""

from __future__ import annotations

import os
import socket
import time

from autoresearch.errors import AutoresearchError
from autoresearch.loop.executor import LocalExecutor, Outcome, RunSpec
from autoresearch.loop.workers import Device
from autoresearch.vocabulary import RunEnd

INSTALL_HINT = "pip install 'autoresearch[ray]'"
_executors: dict[str, LocalExecutor] = {}  # in a Ray worker process: one per GPU it was given, kept warm


def ray_module():
    try:
        import ray
    except ImportError:
        raise AutoresearchError("--ray needs Ray, which is not installed", hint=INSTALL_HINT) from None
    return ray


def connect(address: str | None) -> int:
    """Join the Ray cluster at `address` (or RAY_ADDRESS; none: start Ray on this machine); its GPU count."""
    ray = ray_module()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        try:
            # A cluster of one's own (no address) needs no dashboard; one that exists keeps its settings.
            ray.init(address=address, log_to_driver=False, **({} if address else {"include_dashboard": False}))
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise AutoresearchError(
                f"cannot reach the Ray cluster at {address}: {exc}",
                hint="start it with `ray start --head` (and `ray start --address=HEAD:6379` on the other machines)",
            ) from None
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus < 1:
        raise AutoresearchError("the Ray cluster has no GPU", hint="every run is a Ray task that needs one GPU")
    return gpus


class RayExecutor:
    """Runs each training run as a Ray task needing one GPU (`accelerator`: a Ray accelerator type, e.g. H100)."""

    def __init__(self, accelerator: str | None = None):
        ray = ray_module()
        options = {"num_gpus": 1, "max_retries": 0}  # a lost run is the scheduler's to retry, once
        if accelerator:
            options["accelerator_type"] = accelerator
        self._task = ray.remote(_train).options(**options)
        self._running = None

    def run(self, spec: RunSpec) -> Outcome:
        ray = ray_module()
        started = time.monotonic()
        self._running = self._task.remote(spec)
        try:
            return ray.get(self._running)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.TaskCancelledError,
                ray.exceptions.ObjectLostError) as exc:  # fmt: skip
            why = f"its Ray task was lost ({type(exc).__name__})"
            return Outcome(RunEnd.LOST, None, why, "", time.monotonic() - started)
        finally:
            self._running = None

    def stop(self) -> None:
        """Cancel the run in progress: the task's executor kills its evaluator and everything it started."""
        if (running := self._running) is not None:
            ray_module().cancel(running)

    def close(self) -> None:
        pass


def _train(spec: RunSpec) -> Outcome:
    """In a Ray worker on some node: run `spec` there, with a warm executor per GPU this worker was given."""
    for path in (spec.directory / "autoresearch.json", spec.source):
        if not path.is_file():
            why = (
                f"node {socket.gethostname()} cannot see {path}: runs through Ray need the workspace and the cache "
                "on a filesystem every node sees at the same paths"
            )
            return Outcome(RunEnd.CHANGED, None, why, "", 0.0)
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    executor = _executors.get(gpu)
    if executor is None:
        executor = _executors[gpu] = LocalExecutor(prewarm=False, env={"CUDA_VISIBLE_DEVICES": gpu})
    return executor.run(spec)


def ray_devices(count: int) -> list[Device]:
    """One worker per GPU of the cluster; Ray, not the worker, picks the GPU of each run."""
    return [Device(f"ray {i}", {}) for i in range(count)]
