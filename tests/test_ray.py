"""Runs as Ray tasks (loop/ray_executor.py): a local Ray with two fake GPUs, the real loop and evaluator.

Ray pins each task to one of its GPUs with CUDA_VISIBLE_DEVICES; the runs train on the CPU (there is no
CUDA here), each seeing only the GPU Ray gave it. A run whose Ray worker dies is tried once more.
"""

from __future__ import annotations

import threading
import time

import psutil
import pytest
import ray
from loop_support import BIGRAM_TRAIN_PY, ScriptedAgent, make_loop, make_workspace, with_constants

from autoresearch.loop.executor import RunSpec
from autoresearch.loop.ray_executor import RayExecutor, connect, ray_devices
from autoresearch.loop.scheduler import run_workers
from autoresearch.vocabulary import RunEnd, Status

pytestmark = pytest.mark.slow
START = "    run = harness.start()\n"
SHOWS_GPU = START + "    import os\n    print('CUDA_VISIBLE_DEVICES=' + os.environ['CUDA_VISIBLE_DEVICES'])\n"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_every_run_is_a_ray_task_on_a_gpu_of_its_own_and_the_loop_judges_as_ever(cluster, tmp_path, tiny_prepared):
    ws = make_workspace(tmp_path / "ws", tiny_prepared, BIGRAM_TRAIN_PY.replace(START, SHOWS_GPU))
    loop = make_loop(ws, RayExecutor(), baseline_runs=2)
    found = ray_devices(connect(None))
    assert [d.label for d in found] == ["ray 0", "ray 1"]
    agent = ScriptedAgent([lambda ctx: ("LR 0.2", with_constants(ctx.train_py, LR=0.2))])
    run_workers(loop, agent, found, max_experiments=1, executor_for=lambda _device: RayExecutor())
    rows = loop.ledger.all()
    assert [r.status.final for r in rows] == [True, True] and rows[0].status == Status.KEEP
    assert len(rows[0].run_values) == 2 and rows[1].val_bpb is not None
    best = [r for r in rows if r.status == Status.KEEP][-1]
    assert ws.git.head() == best.commit and not ws.git.changed_paths()
    seen = {
        line
        for log in ws.state.glob("runs/*/log.txt")
        for line in log.read_text().splitlines()
        if line.startswith("CUDA_VISIBLE_DEVICES=")
    }
    assert seen <= {"CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"} and seen  # one GPU each, Ray's


def test_a_run_whose_ray_worker_dies_is_lost_and_leaves_nothing_running(cluster, tmp_path, tiny_prepared):
    ws = make_workspace(tmp_path / "ws", tiny_prepared, budget=30.0)
    executor, outcomes = RayExecutor(), []
    spec = RunSpec(ws.root, ws.state / "runs" / "1-0", 120.0, "x")
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
