"""Training runs as Ray tasks: `autoresearch run --ray [ADDRESS]` (the optional extra `autoresearch[ray]`).

Each run is a task that needs one GPU (of an accelerator type, if given), on whichever node of the cluster
has one free; Ray pins it there with CUDA_VISIBLE_DEVICES. The task runs the run as this machine's loop
would (a LocalExecutor on that node: the evaluator, the confined experiment, the result file) and returns
the outcome. The loop, where the workspace is, stays the only writer of git, the ledger and results.tsv:
one worker per GPU of the cluster, each with this executor (loop/scheduler.py).

No shared filesystem is needed. Each task carries train.py and autoresearch.json as bytes, the data's
manifest as text and a token the loop wrote into the workspace's state. A node that reads all of them at
their paths (one machine, or NFS) trains in place, as before. Any other trains in a directory of its own
under its cache root (`<cache>/ray/work`) with a copy of the prepared data (loop/ray_data.py): the loop
puts the data into Ray's object store once, the first time a node asks for it, and each node fetches it
once into `<cache>/ray/data/<manifest digest>` and verifies it against the manifest before any run uses
it. The run's directory (result, log, compiled files) comes back as data and is written into the loop's run
directory, so the loop judges it exactly as a run of its own.

A node refuses a run, before training, when its autoresearch differs from the loop's (version or
evaluator code), when the loop's apparatus changed since it started, or when the data it received does
not match the manifest: the outcome is "apparatus changed", with the node's reason and what to do, and
the loop stops; no result of another apparatus is ever judged. A run whose task was lost with its worker
or node is reported as lost; the scheduler tries it once more. A node whose disk fills (the run's evaluator, the
copy of the data, the run's files) ends the task with the disk-full error, naming the node and its folder: the loop
stops as on a full disk of its own, and trains the experiment again on its next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoresearch import __version__
from autoresearch.config.apparatus import CONFIG_NAME, Apparatus
from autoresearch.config.paths import CACHE_ENV, cache_root, ray_dir
from autoresearch.data.shards import Manifest
from autoresearch.errors import AutoresearchError, ConfigError, DataError
from autoresearch.evaluator import memory, tasks
from autoresearch.evaluator.compile_cache import STAGED
from autoresearch.evaluator.cores import pins
from autoresearch.evaluator.fingerprint import code_digest, fingerprint
from autoresearch.evaluator.result import PROGRESS_NAME
from autoresearch.loop import ray_data, ray_work
from autoresearch.loop.clock import SIGNAL_CHECK_S
from autoresearch.loop.executor import LocalExecutor, Outcome, RunSpec
from autoresearch.loop.ray_cluster import ray_module
from autoresearch.loop.ray_data import MANIFEST, Parcel
from autoresearch.vocabulary import RunEnd
from autoresearch.workspace.disk import DiskFullError, disk_full_is_an_error

SAME_HARNESS_HINT = "install the same autoresearch on every node of the Ray cluster as where the loop runs"
COPY_ENV = "AUTORESEARCH_RAY_COPY"  # "1" on a node: train from copies even where it sees the workspace
TOKEN_NAME = "ray-token"  # in the workspace's .autoresearch/: a node that reads the loop's token sees its files
PRODUCTS = ("result.json", "log.txt", PROGRESS_NAME, STAGED)  # what a run leaves in its directory for the loop
STOP_GRACE_S = 5.0  # from a run's cancel to the kill of its Ray worker, where the cancel did not end it
_executors: dict[str, LocalExecutor] = {}  # in a Ray worker process: one per GPU it was given, kept warm


@dataclass(frozen=True)
class Request:
    """What a run's task carries beside its RunSpec: enough to check the node, and to train where it does not
    see the workspace."""

    version: str  # the loop's autoresearch
    code: str  # the loop's evaluator code digest (evaluator/fingerprint.py)
    token: str  # what the loop wrote in the workspace's state (TOKEN_NAME)
    apparatus: bytes  # autoresearch.json
    train_py: bytes
    manifest: str  # the prepared data's manifest.json
    data: Parcel | None  # the tokenizer and shards in the object store; None until a node has asked for them


@dataclass(frozen=True)
class Answer:
    """What a run's task returns."""

    node: str  # the host it ran on
    outcome: Outcome | None  # None: the node does not see the workspace and wants the data (Request.data)
    products: Parcel | None = None  # the run directory's files, if it trained in a directory of its own


class Shipment:
    """The loop's side of what travels: one per loop, shared by its RayExecutors, so that the prepared data is
    put into the object store once (and only once a node needs it)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._tokens: dict[Path, str] = {}  # workspace -> the token written in it
        self._data: tuple[Path, str, Parcel] | None = None  # the data dir, its manifest, its files once shipped
        self._code = code_digest()

    def request(self, spec: RunSpec, ship: bool = False) -> Request:
        """The request of a run of `spec`; with the data if `ship` (put into the object store now, if it is not
        there yet) or if it was shipped before."""
        try:
            apparatus = (spec.directory / CONFIG_NAME).read_bytes()
            train_py = spec.source_bytes()
            data_dir = Path(Apparatus(**json.loads(apparatus)).data_dir)
            manifest = (data_dir / MANIFEST).read_text()
        except (OSError, ValueError, TypeError, ConfigError) as exc:
            raise DataError(f"cannot read what a run of {spec.directory} needs: {exc}") from exc
        with self._lock:
            token = self._token(spec.directory)
            shipped = self._data
            if shipped is not None and shipped[:2] != (data_dir, manifest):
                shipped = self._data = None  # the data changed under the loop: its nodes will say so
            if shipped is None and ship:
                try:
                    parcel = ray_data.ship_data(
                        data_dir, Manifest.parse(manifest, data_dir / MANIFEST), ray_module().put
                    )
                except ray_module().exceptions.OutOfDiskError:  # its object store spills to this machine's disk
                    raise DiskFullError("putting the prepared data into Ray's object store") from None
                shipped = self._data = (data_dir, manifest, parcel)
        data = shipped[2] if shipped is not None else None
        return Request(__version__, self._code, token, apparatus, train_py, manifest, data)

    def _token(self, workspace: Path) -> str:
        if workspace not in self._tokens:
            token = secrets.token_hex(16)
            (workspace / ".autoresearch").mkdir(exist_ok=True)
            (workspace / ".autoresearch" / TOKEN_NAME).write_text(token)
            self._tokens[workspace] = token
        return self._tokens[workspace]


class RayExecutor:
    """Runs each training run as a Ray task needing one GPU (`accelerator`: a Ray accelerator type, e.g. H100).
    `shipment`: the loop's, shared by all its executors (one of its own if not given)."""

    def __init__(self, accelerator: str | None = None, shipment: Shipment | None = None):
        ray = ray_module()
        options = {"num_gpus": 1, "max_retries": 0}  # a lost run is the scheduler's to retry, once
        if accelerator:
            options["accelerator_type"] = accelerator
        self._task = ray.remote(_train).options(**options)
        self._shipment = shipment or Shipment()
        self._stopped = threading.Event()  # set by stop(): `_ask` cancels its task, the one in progress or the next

    def run(self, spec: RunSpec) -> Outcome:
        ray = ray_module()
        started = time.monotonic()
        try:
            answer = self._ask(spec, self._shipment.request(spec))
            if answer.outcome is None:  # a node without the workspace: the data goes out, the run again
                answer = self._ask(spec, self._shipment.request(spec, ship=True))
            if answer.products is not None:
                _receive(answer, spec.run_dir, ray.get)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.TaskCancelledError,
                ray.exceptions.ObjectLostError) as exc:  # fmt: skip
            why = f"its Ray task was lost ({type(exc).__name__})"
            return Outcome(RunEnd.LOST, None, why, "", time.monotonic() - started)
        except ray.exceptions.RayTaskError as exc:  # the node's side failed: no traceback for the user
            if isinstance(full := exc.cause, DiskFullError):  # its disk: the loop stops as on a full disk of its own
                raise DiskFullError(full.what, full.then, full.where) from None
            raise AutoresearchError(
                f"a run's Ray task failed on its node: {exc.cause!r}", hint=_failed_task_hint(exc.cause)
            ) from None
        if answer.outcome is None:
            raise AutoresearchError(f"node {answer.node} asked twice for the data of a run")
        return answer.outcome

    def _ask(self, spec: RunSpec, request: Request) -> Answer:
        """The answer of a task sent for `request`. Once the loop stops, the task is cancelled: a KeyboardInterrupt in
        it, on which its executor kills the evaluator and its run, and its directory goes. Ray delivers that only when
        the task's thread runs Python, and a task that never took it trained on to its end under load (CI), the loop's
        Ctrl-C waiting for it: after STOP_GRACE_S, its worker is killed, and the run with it (its death signal)."""
        ray = ray_module()
        task = self._task.remote(spec, request)
        while not ray.wait([task], timeout=SIGNAL_CHECK_S)[0]:
            if self._stopped.is_set():
                ray.cancel(task)
                if not ray.wait([task], timeout=STOP_GRACE_S)[0]:
                    ray.cancel(task, force=True)
                break
        return ray.get(task)

    def stop(self) -> None:
        """Cancel the run in progress, or the next one sent: the loop is stopping."""
        self._stopped.set()

    def close(self) -> None:
        pass


def _receive(answer: Answer, run_dir: Path, get) -> None:
    """Write the run directory a node sent into the loop's `run_dir`, its log headed by where it trained."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in PRODUCTS:  # left by an earlier attempt of this run
        ray_data.remove_tree(run_dir / name)
    ray_data.unpack(answer.products, run_dir, get)
    log = run_dir / "log.txt"
    note = f"autoresearch: trained on node {answer.node}, from copies sent through Ray's object store\n"
    log.write_bytes(note.encode() + (log.read_bytes() if log.exists() else b""))


# -- on a node --------------------------------------------------------------------------------------


def _train(spec: RunSpec, request: Request) -> Answer:
    """In a Ray worker on some node: check the node, then run `spec` in place if it sees the workspace, else
    in a directory of its own with the data's verified copy (or ask for the data)."""
    node = socket.gethostname()
    if (refusal := _refusal(spec, request)) is not None:
        return Answer(node, refusal)
    if _sees(spec, request):
        with _disk_of(node, spec.directory):
            return Answer(node, _executor().run(spec))
    if request.data is None:
        return Answer(node, None)
    own = ray_dir(cache_root())
    with _disk_of(node, own):
        # Under the node's name: nodes whose cache root is one shared folder (a home on NFS) lock apart only as well
        # as the file system's locks reach across machines.
        work = ray_work.claim(own / "work" / node, os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        try:
            data_dir = ray_data.node_copy(request.manifest, request.data, own / "data", ray_module().get, work)
        except ray_data.DataRefused as exc:
            return Answer(node, _refused(exc.args[0], exc.hint or ""))
        return _train_apart(spec, request, data_dir, node, work)


@contextlib.contextmanager
def _disk_of(node: str, folder: Path) -> Iterator[None]:
    """A full disk on this node (the executor's DiskFullError, or a write here failing for lack of space) as the
    DiskFullError the loop raises, naming the node and `folder`, where the run wrote: it crosses to the loop whole
    (RayExecutor.run), where it was "a run's Ray task failed on its node: OSError(28, ...)"."""
    try:
        with disk_full_is_an_error("writing a training run's files"):
            yield
    except DiskFullError as exc:
        raise DiskFullError(exc.what, exc.then, f"Ray node {node} ({folder})") from None
    except ray_module().exceptions.OutOfDiskError:  # Ray's object store, spilling to this node's disk
        raise DiskFullError("sending a run's files back through Ray's object store", where=f"Ray node {node}") from None


def _refusal(spec: RunSpec, request: Request) -> Outcome | None:
    """Why this node must not train the run (its harness or the apparatus differ from the loop's), or None."""
    if request.version != __version__:
        return _refused(f"its autoresearch is {__version__}, the loop's {request.version}", SAME_HARNESS_HINT)
    if request.code != code_digest():
        return _refused("its evaluator's code differs from the loop's", SAME_HARNESS_HINT)
    try:
        apparatus = Apparatus(**json.loads(request.apparatus))
        manifest = Manifest.parse(request.manifest, "the loop's manifest")
    except (ValueError, TypeError, AutoresearchError) as exc:
        return _refused(f"it cannot read the loop's apparatus: {exc}", "")
    if fingerprint(apparatus, manifest) != spec.fingerprint:
        return _refused("the loop's data or budget changed since the loop started", "")
    return None


def _failed_task_hint(cause: BaseException | None) -> str:
    """What to do about a run's Ray task that failed on its node for `cause`."""
    if isinstance(cause, OSError) and not isinstance(cause, (ConnectionError, TimeoutError)):
        return (
            "the node's Ray worker could not read or write a file it needs (its copies of the data and its runs go "
            f"under ${CACHE_ENV} on that node, else ~/.cache/autoresearch): see that node's Ray worker log (`ray logs`)"
        )
    return "see that node's Ray worker log (`ray logs`); " + SAME_HARNESS_HINT


def _refused(why: str, hint: str) -> Outcome:
    return Outcome(RunEnd.CHANGED, None, f"node {socket.gethostname()} refuses the run: {why}", "", 0.0, hint)


def _sees(spec: RunSpec, request: Request) -> bool:
    """Whether this node reads, at their paths, the very files the loop sent (its token, autoresearch.json,
    train.py and the data's manifest): a shared filesystem, where the run trains in place."""
    if os.environ.get(COPY_ENV, "0") == "1":
        return False
    try:
        data_dir = Path(json.loads(request.apparatus)["data_dir"])
        return (
            (spec.directory / ".autoresearch" / TOKEN_NAME).read_text() == request.token
            and (spec.directory / CONFIG_NAME).read_bytes() == request.apparatus
            and spec.source.read_bytes() == request.train_py
            and (data_dir / MANIFEST).read_text() == request.manifest
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _train_apart(spec: RunSpec, request: Request, data_dir: Path, node: str, work: Path) -> Answer:
    """Train in this worker's own directory `work` (autoresearch.json pointing at the node's copy of the data) and
    send back what the run left in its run directory."""
    executor = _executor()
    apparatus = json.loads(request.apparatus)
    Apparatus(**{**apparatus, "data_dir": str(data_dir)}).save(work / CONFIG_NAME)
    (work / "train.py").write_bytes(request.train_py)
    # The bytes sent, not the file read again when the evaluator is at hand: what lies there by then is not the loop's.
    here = RunSpec(work, work / "runs" / spec.run_dir.name, spec.timeout, spec.fingerprint, code=request.train_py)
    ray_data.remove_tree(here.run_dir)
    try:
        outcome = executor.run(here)
        names = [name for name in PRODUCTS if (here.run_dir / name).is_file()]
        names += [p.relative_to(here.run_dir).as_posix() for p in _regular_files(here.run_dir / STAGED)]
        products = ray_data.pack(here.run_dir, names, _travelling)
    finally:  # sent back, or cancelled (the loop stopped): nothing of it stays on the node
        ray_data.remove_tree(here.run_dir)
    return Answer(node, outcome, products)


def _travelling(piece: bytes) -> Any:
    """A piece of a run's product as it goes back: carried in the answer if small, else in the object store."""
    return piece if len(piece) <= ray_data.INLINE_BYTES else ray_module().put(piece)


def _regular_files(top: Path) -> list[Path]:
    return sorted(p for p in top.rglob("*") if p.is_file() and not p.is_symlink()) if top.is_dir() else []


def _executor() -> LocalExecutor:
    """This worker's executor for the GPU Ray gave the task, kept warm between tasks."""
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if (executor := _executors.get(gpu)) is None:
        env = {"CUDA_VISIBLE_DEVICES": gpu, **_share_of(gpu)}
        executor = _executors[gpu] = LocalExecutor(prewarm=False, env=env)
    return executor


def _share_of(gpu: str) -> dict[str, str]:
    """The share of this node's CPUs that the runs on its GPU `gpu` are pinned to, and of its memory (and of a low
    `ulimit -u` of the node's Ray, not root), split by the GPUs Ray gives the node, as local workers' are
    (evaluator/cores.py, evaluator/memory.py, evaluator/tasks.py); {} where that cannot be told (GPU ids Ray took from
    a CUDA_VISIBLE_DEVICES that skips some)."""
    ray = ray_module()
    try:
        node = ray.get_runtime_context().get_node_id()
        gpus = next((n.get("Resources", {}).get("GPU", 0) for n in ray.nodes() if n.get("NodeID") == node), 0)
    except Exception:  # the cluster's state not at hand: a pin is never worth a lost run
        return {}
    index, found = int(gpu) if gpu.isdigit() else -1, pins(int(gpus))[0]
    shares = {**memory.shares(int(gpus)), **tasks.shares(int(gpus))}
    return {**found[index], **shares} if 0 <= index < len(found) else {}
