"""Runs as Ray tasks (loop/ray_executor.py): a two-node Ray cluster on this machine, the real loop and evaluator.

Each node has one fake GPU. The head node reads the workspace where the loop wrote it (a shared
filesystem); the other ("far") node has a cache root of its own and is told to take nothing from the
loop's paths (AUTORESEARCH_RAY_COPY=1): it trains from what travels through Ray's object store, as a node
without the loop's filesystem must. Ray pins each task to its node's GPU with CUDA_VISIBLE_DEVICES; the
runs train on the CPU (there is no CUDA here). A run whose Ray worker dies is tried once more.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import ray
from loop_support import BIGRAM_TRAIN_PY, ScriptedAgent, evaluators_with, make_loop, make_workspace, with_constants
from ray.cluster_utils import Cluster

from autoresearch.agents.command_agent import CommandAgent
from autoresearch.config.paths import ray_dir
from autoresearch.data.shards import Manifest
from autoresearch.errors import AutoresearchError
from autoresearch.evaluator.fingerprint import fingerprint
from autoresearch.evaluator.result import Result
from autoresearch.loop import ray_cluster, ray_data, ray_executor
from autoresearch.loop.engine import LoopError
from autoresearch.loop.executor import RunSpec
from autoresearch.loop.parallel import run_workers
from autoresearch.loop.ray_cluster import connect, ray_devices
from autoresearch.loop.ray_executor import RayExecutor, Shipment
from autoresearch.loop.workers import Device
from autoresearch.vocabulary import RunEnd, Status
from autoresearch.workspace.disk import DiskFullError

pytestmark = pytest.mark.slow
START = "    run = harness.start()\n"
SHOWS_GPU = START + "    import os\n    print('CUDA_VISIBLE_DEVICES=' + os.environ['CUDA_VISIBLE_DEVICES'])\n"
SENT_NOTE = "autoresearch: trained on node"  # the first line of the log of a run trained from copies
# A node whose disk is full, as every Python process on it sees it (statvfs: no block left): its Ray worker, the fork
# server and evaluators started from it, and the experiments forked from those. Imported at their start, by PYTHONPATH.
FULL_DISK = """
import os
_statvfs = os.statvfs
def _full(path):
    st = _statvfs(path)
    return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0, st.f_files, st.f_ffree, st.f_favail,
                              st.f_flag, st.f_namemax))
os.statvfs = _full
"""
# A run that fails on a full disk, as one whose writes (Inductor's cache, say) fail.
FAILS_ON_A_FULL_DISK = START + (
    "    import errno, os\n"
    "    if os.statvfs('.').f_bavail == 0:\n"
    "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
)


@pytest.fixture(scope="module")
def far_cache(tmp_path_factory) -> Path:
    """The far node's cache root: its copies of the data and its runs' directories."""
    return tmp_path_factory.mktemp("far-node-cache")


@pytest.fixture(scope="module")
def cluster(cache_dir, far_cache):
    near = {"num_cpus": 1, "num_gpus": 1, "resources": {"accelerator_type:NEAR": 1}}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**near, "include_dashboard": False, "env_vars": {"AUTORESEARCH_CACHE": str(cache_dir)}},
    )
    far_env = {"AUTORESEARCH_CACHE": str(far_cache), ray_executor.COPY_ENV: "1"}
    cluster.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:FAR": 1}, env_vars=far_env)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def copies_on_far_node(far_cache: Path) -> Path:
    return ray_dir(far_cache) / "data"


def fingerprint_of(ws) -> str:
    return fingerprint(ws.apparatus, Manifest.load(Path(ws.apparatus.data_dir) / "manifest.json"))


def test_every_run_is_a_ray_task_on_a_gpu_of_its_own_and_the_loop_judges_as_ever(
    cluster, tmp_path, tiny_prepared, far_cache
):
    ws = make_workspace(tmp_path / "ws", tiny_prepared, BIGRAM_TRAIN_PY.replace(START, SHOWS_GPU))
    loop = make_loop(ws, RayExecutor(), baseline_runs=2)
    found = ray_devices(connect(None))
    assert [d.label for d in found] == ["ray 0", "ray 1"]
    agent = ScriptedAgent([lambda ctx: ("LR 0.2", with_constants(ctx.train_py, LR=0.2))])
    shipment = Shipment()  # the loop's: the data goes into the object store once, for every worker
    run_workers(loop, agent, found, max_experiments=1, executor_for=lambda _device: RayExecutor(shipment=shipment))
    rows = loop.ledger.all()
    assert [r.status.final for r in rows] == [True, True] and rows[0].status == Status.KEEP
    assert len(rows[0].run_values) == 2 and rows[1].val_bpb is not None
    best = [r for r in rows if r.status == Status.KEEP][-1]
    assert ws.git.head() == best.commit and not ws.git.changed_paths()
    logs = [log.read_text() for log in ws.state.glob("runs/*/log.txt")]
    seen = {line for log in logs for line in log.splitlines() if line.startswith("CUDA_VISIBLE_DEVICES=")}
    assert seen == {"CUDA_VISIBLE_DEVICES=0"}  # one GPU each, Ray's (each node has one)
    # The baseline's two runs trained at once, one on each node: one in place, one from copies.
    sent = [log for log in logs if log.startswith(SENT_NOTE)]
    assert 1 <= len(sent) < len(logs)
    digest = Manifest.load(tiny_prepared / "manifest.json").digest()
    assert (copies_on_far_node(far_cache) / digest / "verified.json").is_file()


def test_a_node_without_the_workspace_trains_from_the_data_sent_through_ray_and_the_loop_gets_its_run(
    cluster, tmp_path, tiny_prepared, far_cache
):
    data = shutil.copytree(tiny_prepared, tmp_path / "data")
    ws = make_workspace(tmp_path / "ws", data)
    spec = RunSpec(ws.root, ws.state / "runs" / "1-0", 120.0, fingerprint_of(ws))
    shutil.rmtree(copies_on_far_node(far_cache), ignore_errors=True)  # the far node has no copy yet
    shipment = Shipment()
    shipment.request(spec, ship=True)  # the data is in Ray's object store now ...
    (tmp_path / "gone").mkdir()
    for name in ("tokenizer.json", "train-00000.bin", "val.bin"):  # ... and nowhere on the loop's filesystem
        (data / name).rename(tmp_path / "gone" / name)  # (but its manifest): only the sent copy can serve the run
    outcome = RayExecutor("FAR", shipment).run(spec)
    assert outcome.status == RunEnd.OK, outcome.reason + outcome.log_tail
    result = Result.load(spec.run_dir / "result.json")  # the run's directory came back to the loop
    assert result.harness_fingerprint == spec.fingerprint and result.val_bpb == outcome.val_bpb
    assert (spec.run_dir / "log.txt").read_text().startswith(SENT_NOTE)
    (copy,) = copies_on_far_node(far_cache).iterdir()  # fetched once, verified, kept for the next runs
    assert (copy / "verified.json").is_file() and sorted(p.name for p in copy.glob("*.bin")) == [
        "train-00000.bin",
        "val.bin",
    ]
    assert not list((ray_dir(far_cache) / "work").glob("*/*/runs/*"))  # sent back, not left there


def test_a_node_whose_copy_of_the_data_fails_its_manifest_refuses_and_nothing_is_judged(
    cluster, tmp_path, tiny_prepared, far_cache
):
    data = shutil.copytree(tiny_prepared, tmp_path / "data")
    shard = data / "train-00000.bin"
    damaged = bytearray(shard.read_bytes())
    damaged[100] ^= 0xFF  # same size: only the SHA-256 tells
    shard.write_bytes(bytes(damaged))
    ws = make_workspace(tmp_path / "ws", data)
    loop = make_loop(ws, RayExecutor("FAR"), baseline_runs=1)
    # A node with a verified copy of this manifest's data would train from it (it is the same data): this one has none.
    shutil.rmtree(copies_on_far_node(far_cache), ignore_errors=True)
    with pytest.raises(LoopError, match=r"refuses the run: the data it received .* shard train-00000") as refused:
        run_workers(loop, None, [Device("ray 0")], executor_for=lambda _device: RayExecutor("FAR"))
    assert "autoresearch prepare" in refused.value.hint
    rows = loop.ledger.all()
    assert rows and all(r.val_bpb is None and r.status != Status.KEEP for r in rows)
    assert not list(ws.state.glob("runs/*/result.json"))
    assert not list(copies_on_far_node(far_cache).iterdir())  # the damaged copy is not kept


@pytest.mark.parametrize(
    ("differs", "said"),
    [
        ("__version__", "its autoresearch is .*, the loop's 0.0.0-other"),
        ("code_digest", "its evaluator's code differs from the loop's"),
    ],
)
def test_a_node_whose_autoresearch_differs_from_the_loops_refuses_the_run(
    cluster, tmp_path, tiny_prepared, monkeypatch, differs, said
):
    ws = make_workspace(tmp_path / "ws", tiny_prepared)
    # The loop's side is changed here; the nodes' workers import their own, unchanged.
    monkeypatch.setattr(ray_executor, differs, "0.0.0-other" if differs == "__version__" else lambda: "0" * 64)
    spec = RunSpec(ws.root, ws.state / "runs" / "1-0", 120.0, fingerprint_of(ws))
    for accelerator in ("NEAR", "FAR"):  # the node that sees the workspace and the one that does not
        outcome = RayExecutor(accelerator, Shipment()).run(spec)
        assert outcome.status == RunEnd.CHANGED and outcome.result is None
        assert outcome.hint == ray_executor.SAME_HARNESS_HINT
        assert re.search(f"refuses the run: {said}", outcome.reason), outcome.reason
    assert not (spec.run_dir / "result.json").exists()


def test_an_accelerator_type_no_node_has_is_refused_at_the_start_naming_those_there_are(cluster):
    """BROKE, fixed (a README walk-through): `run --ray --accelerator H100` on a cluster without one started, and
    its first run waited for ever for a GPU that never comes, shown as a busy worker. Each type counts its GPUs."""
    assert connect(None, "NEAR") == connect(None, "FAR") == 1 and connect(None) == 2
    with pytest.raises(AutoresearchError, match="no node of the Ray cluster has a GPU of type H100") as err:
        connect(None, "H100")
    assert "the types its nodes have: FAR, NEAR" in err.value.hint and "leave --accelerator out" in err.value.hint


def test_the_loop_warns_at_its_start_that_a_cluster_without_token_authentication_would_run_an_agents_task(cluster):
    """This cluster asks for no token: an agent with a shell could send it a task (tests/test_ray_agent.py)."""
    warning = ray_cluster.open_to_agent(CommandAgent("true"))
    assert warning and "runs without token authentication" in warning and "the command agent" in warning
    assert ray_cluster.open_to_agent(SimpleNamespace(name="anthropic", answers_only=True)) is None  # an API call
    assert ray_cluster.open_to_agent(None) is None  # submitted experiments only


def test_with_no_address_the_loop_starts_a_ray_of_its_own_even_where_someone_elses_runs_on_this_machine(tmp_path):
    """Ray's own `ray.init()` joins a Ray running on the machine (`ray start --head`, here without token
    authentication, with a GPU): the loop must not send its runs there, but start its own as the README says (with a
    token only it holds), which here has no GPU."""
    mark = f"autoresearch-test-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"AUTORESEARCH_TEST_MARK": mark}
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    start = [*ray_cli, "start", "--head", f"--port={port}", "--num-cpus=1", "--num-gpus=1", "--include-dashboard=false",
             "--disable-usage-stats"]  # fmt: skip
    try:
        subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
        joined = subprocess.run(
            [sys.executable, "-c", "from autoresearch.loop.ray_cluster import connect; print(connect(None))"],
            env=env | {"AUTORESEARCH_CACHE": str(tmp_path)}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        for process in psutil.process_iter():  # that Ray's processes only (`ray stop` would stop every Ray here)
            with contextlib.suppress(psutil.Error):
                if process.environ().get("AUTORESEARCH_TEST_MARK") == mark:
                    process.kill()
    assert joined.returncode != 0 and "the Ray cluster has no GPU" in joined.stderr, joined.stdout + joined.stderr


def test_an_address_where_nothing_answers_is_refused_at_once_saying_so(tmp_path, tiny_prepared):
    """BROKE, fixed (a user's walk): `run --ray 127.0.0.1:6379` with no cluster there waited for more than 400 s,
    saying nothing of its own (Ray's log lines said it failed to connect, again every half minute)."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"AUTORESEARCH_CACHE": str(tmp_path)}
    started = time.monotonic()
    refused = subprocess.run(
        [sys.executable, "-m", "autoresearch", "run", "--ray", f"127.0.0.1:{port}", "--plain", "--workspace", "."],
        cwd=make_workspace(tmp_path / "ws", tiny_prepared).root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    said = " ".join(refused.stderr.split())
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}: nothing answers at 127.0.0.1:{port}" in said, said
    assert "Connection refused" in said
    assert "ray status" in said and "Traceback" not in said
    assert time.monotonic() - started < 60


def test_without_ray_the_loop_says_how_to_install_it_into_this_python(tmp_path, tiny_prepared):
    """BROKE, fixed (a README audit): the hint was `pip install 'autoresearch[ray]'`, which asks PyPI for a package of
    that name, not this checkout's (installed with `pip install -e`), and perhaps into another Python."""
    (tmp_path / "no_ray" / "ray").mkdir(parents=True)
    (tmp_path / "no_ray" / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "no_ray"), os.environ.get("PYTHONPATH", "")])}
    refused = subprocess.run(
        [sys.executable, "-m", "autoresearch", "run", "--ray", "--plain", "--workspace", "."],
        cwd=make_workspace(tmp_path / "ws", tiny_prepared).root, env=env | {"AUTORESEARCH_CACHE": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    said = " ".join(refused.stderr.split())
    assert "--ray needs Ray, which is not installed" in said and "Traceback" not in said, said
    assert f"{sys.executable} -m pip install 'ray<" in said and "autoresearch[ray]" not in said, said


def test_a_nodes_copy_of_the_data_is_fetched_once_and_again_only_after_a_file_of_it_changed(tmp_path, tiny_prepared):
    store: list[bytes] = []  # stands for the object store: a reference is an index into it
    fetched: list[int] = []

    def get(ref: int) -> bytes:
        fetched.append(ref)
        return store[ref]

    text = (tiny_prepared / "manifest.json").read_text()
    parcel = ray_data.ship_data(
        tiny_prepared, Manifest.parse(text, "test"), lambda piece: store.append(piece) or len(store) - 1
    )
    scratch = tmp_path / "worker"
    scratch.mkdir()
    copy = ray_data.node_copy(text, parcel, tmp_path / "node", get, scratch)
    assert sorted(fetched) == list(range(len(store))) and ray_data.verify(copy, copy.name) is None
    assert ray_data.node_copy(text, parcel, tmp_path / "node", get, scratch) == copy and len(fetched) == len(store)
    with (copy / "val.bin").open("r+b") as f:  # damaged at rest (the look before each run is size and mtime)
        f.truncate(100)
    assert ray_data.node_copy(text, parcel, tmp_path / "node", get, scratch) == copy
    assert len(fetched) == 2 * len(store) and not list(scratch.iterdir())
    assert ray_data.verify(copy, copy.name) is None


def test_a_file_sent_back_cannot_name_a_path_outside_the_run_directory(tmp_path):
    with pytest.raises(AutoresearchError, match="outside its directory"):
        ray_data.unpack(ray_data.Parcel({"../train.py": [b"print('hi')"]}), tmp_path / "run", lambda ref: b"")
    assert not (tmp_path / "train.py").exists()


def test_a_run_whose_ray_worker_dies_is_lost_and_leaves_nothing_running(cluster, tmp_path, tiny_prepared):
    ws = make_workspace(tmp_path / "ws", tiny_prepared, budget=30.0)
    executor, outcomes = RayExecutor("NEAR"), []
    spec = RunSpec(ws.root, ws.state / "runs" / "1-0", 120.0, fingerprint_of(ws))
    thread = threading.Thread(target=lambda: outcomes.append(executor.run(spec)))
    thread.start()
    deadline = time.monotonic() + 60
    while not (spec.run_dir / "pid").exists():
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.1)
    referee = psutil.Process(int((spec.run_dir / "pid").read_text().split()[0]))
    started = [referee, *referee.children(recursive=True)]
    worker = next(
        p for p in referee.parents() if "ray::" in " ".join(p.cmdline()) or "default_worker" in " ".join(p.cmdline())
    )
    worker.kill()  # as if the node went down
    thread.join(timeout=60)
    (outcome,) = outcomes
    assert outcome.status == RunEnd.LOST and "Ray task was lost" in outcome.reason
    _, alive = psutil.wait_procs(started, timeout=15)
    assert not alive, [p.cmdline() for p in alive]  # the evaluator and the experiment died with their worker


def test_a_run_cancelled_on_a_node_without_the_workspace_ends_and_leaves_no_run_directory_there(
    cluster, tmp_path, tiny_prepared, far_cache
):
    """Its directory stayed under the node's cache root when the loop stopped with the run in flight (CI: the
    baseline's other run failed), and there it stayed. And a task that never took Ray's cancel (CI, under load)
    trained on to its end, the loop's stop waiting for it: its worker is killed after STOP_GRACE_S, and what it left
    goes with the node's next run."""
    ws = make_workspace(tmp_path / "ws", tiny_prepared, budget=60.0)
    executor, outcomes = RayExecutor("FAR"), []
    spec = RunSpec(ws.root, ws.state / "runs" / "1-0", 120.0, fingerprint_of(ws))
    thread = threading.Thread(target=lambda: outcomes.append(executor.run(spec)))
    thread.start()
    runs = ray_dir(far_cache) / "work"
    deadline = time.monotonic() + 60
    while not list(runs.glob("*/*/runs/1-0/pid")):
        assert time.monotonic() < deadline, "the run never started on the far node"
        time.sleep(0.1)
    stopped = time.monotonic()
    executor.stop()  # the loop stopping
    thread.join(timeout=60)
    (outcome,) = outcomes
    assert outcome.status == RunEnd.LOST and "Ray task was lost" in outcome.reason
    assert time.monotonic() - stopped < ray_executor.STOP_GRACE_S + 10  # not the 60 s budget
    after = make_workspace(tmp_path / "after", tiny_prepared)  # the node's next run
    spec = RunSpec(after.root, after.state / "runs" / "1-0", 120.0, fingerprint_of(after))
    assert RayExecutor("FAR").run(spec).status == RunEnd.OK
    assert not list(runs.glob("*/*/runs/*"))


def test_a_task_that_does_not_take_the_cancel_is_ended_by_killing_its_worker(cluster, tmp_path, monkeypatch):
    """Ray's cancel is a KeyboardInterrupt, raised only when the task's thread runs Python: one blocked in a call
    (here a sleep) trained on to its end, and the loop's stop waited that long."""
    monkeypatch.setattr(ray_executor, "STOP_GRACE_S", 1.0)  # read by the loop's side, here
    started = tmp_path / "started"
    executor = RayExecutor("FAR")
    executor._task = ray.remote(lambda *_: (started.touch(), time.sleep(600))).options(
        num_gpus=1, max_retries=0, accelerator_type="FAR"
    )
    errors = []

    def ask() -> None:
        try:
            executor._ask(None, None)
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=ask)
    thread.start()
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.1)
    stopped = time.monotonic()
    executor.stop()
    thread.join(timeout=ray_executor.STOP_GRACE_S + 30)
    assert not thread.is_alive() and time.monotonic() - stopped < ray_executor.STOP_GRACE_S + 10
    (error,) = errors  # what `run` reports as a lost run
    assert isinstance(error, ray.exceptions.TaskCancelledError | ray.exceptions.WorkerCrashedError), repr(error)


def test_a_full_disk_on_the_node_stops_the_loop_naming_the_node_and_the_experiment_is_trained_again(
    cluster, tmp_path, tiny_prepared
):
    """BROKE, fixed: a node whose disk filled during a run (its evaluator's DISK_FULL, confirmed by the executor on the
    node) raised DiskFullError in the Ray task, which came to the loop as "a run's Ray task failed on its node:
    DiskFullError('the disk is full: ...')", with a hint to look at the worker's log and to install the same
    autoresearch: not whose disk, nor that the experiment is trained again. Now the loop stops with the disk-full
    error naming the node and its folder; nothing is recorded, and the next start trains the experiment."""
    python_path = evaluators_with(tmp_path, "sitecustomize", FULL_DISK)["PYTHONPATH"]  # in the node's Ray workers

    def on_a_full_node(_device) -> RayExecutor:
        executor = RayExecutor("NEAR")
        full = {"runtime_env": {"env_vars": {"PYTHONPATH": python_path}}}  # in Ray workers of their own
        executor._task = ray.remote(ray_executor._train).options(
            num_gpus=1, max_retries=0, accelerator_type="NEAR", **full
        )
        return executor

    ws = make_workspace(tmp_path / "ws", tiny_prepared, BIGRAM_TRAIN_PY.replace(START, FAILS_ON_A_FULL_DISK))
    loop = make_loop(ws, RayExecutor("NEAR"), baseline_runs=1)
    with pytest.raises(DiskFullError) as stopped:
        run_workers(loop, None, [Device("ray 0")], executor_for=on_a_full_node)
    said = str(stopped.value)
    assert said.startswith(f"the disk is full on Ray node {socket.gethostname()} ("), said
    assert "a training run (its evaluator's writes) failed for lack of space" in said
    assert "trained again on the next start" in said and "Ray task failed" not in said
    (baseline,) = loop.ledger.all()
    assert baseline.status == Status.RUNNING and baseline.attempts == 0 and baseline.val_bpb is None
    assert not list(ws.state.glob("runs/*/result.json"))
    loop = make_loop(ws, RayExecutor("NEAR"), baseline_runs=1)  # space freed: the next start
    run_workers(loop, None, [Device("ray 0")], executor_for=lambda _device: RayExecutor("NEAR"))
    (baseline,) = loop.ledger.all()
    assert baseline.status == Status.KEEP and baseline.val_bpb is not None


def test_a_write_on_a_node_that_fails_for_lack_of_space_is_the_disk_full_error_naming_the_node(tmp_path):
    """The copy of the data, the run's own folder and files: not "a run's Ray task failed on its node: OSError(28)"."""
    with pytest.raises(DiskFullError) as stopped, ray_executor._disk_of("gpu-7", tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(stopped.value).startswith(f"the disk is full on Ray node gpu-7 ({tmp_path}): free space there")
    assert "writing a training run's files failed for lack of space" in stopped.value.hint
    with pytest.raises(OSError, match="Permission denied"), ray_executor._disk_of("gpu-7", tmp_path):
        raise OSError(errno.EACCES, "Permission denied")
    with pytest.raises(DiskFullError) as stopped, ray_executor._disk_of("gpu-7", tmp_path):
        raise ray.exceptions.OutOfDiskError()  # Ray's object store, spilling the run's files to a full disk
    assert str(stopped.value).startswith("the disk is full on Ray node gpu-7: free space there")
    assert "sending a run's files back through Ray's object store failed" in stopped.value.hint


def test_data_the_object_store_cannot_take_for_a_full_disk_is_the_disk_full_error(
    cluster, tmp_path, tiny_prepared, monkeypatch
):
    """Ray's OutOfDiskError as the loop put the data into its object store was a traceback."""
    ws = make_workspace(tmp_path / "ws", tiny_prepared)
    spec = RunSpec(ws.root, ws.state / "runs" / "1-0", 120.0, fingerprint_of(ws))

    def full(piece):
        raise ray.exceptions.OutOfDiskError()

    monkeypatch.setattr(ray, "put", full)
    with pytest.raises(DiskFullError, match="the disk is full: free space, then run again") as stopped:
        Shipment().request(spec, ship=True)
    assert "putting the prepared data into Ray's object store failed for lack of space" in stopped.value.hint


@pytest.mark.parametrize(
    ("cause", "said"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/srv/cache"), "could not read or write a file it needs"),
        (ModuleNotFoundError("No module named 'autoresearch'"), "install the same autoresearch on every node"),
    ],
)
def test_a_task_that_failed_on_its_node_says_what_to_do_about_its_cause(
    tmp_path, tiny_prepared, monkeypatch, cause, said
):
    """A node's cache folder it cannot write was "install the same autoresearch on every node" too."""
    ws = make_workspace(tmp_path / "ws", tiny_prepared)
    spec = RunSpec(ws.root, ws.state / "runs" / "1-0", 120.0, fingerprint_of(ws))
    executor = RayExecutor()

    def failed(*args):
        raise ray.exceptions.RayTaskError("_train", "Traceback ...", cause)

    monkeypatch.setattr(executor, "_ask", failed)
    with pytest.raises(AutoresearchError, match="a run's Ray task failed on its node") as stopped:
        executor.run(spec)
    assert said in stopped.value.hint
