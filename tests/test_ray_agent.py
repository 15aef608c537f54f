"""The Ray the loop starts (`autoresearch run --ray`, no address) against an agent's turn.

An agent's shell shares this machine's network (its LLM is on the internet). A task it sent the loop's Ray would
run outside its namespace, as the user, where the validation data can be read. The loop's Ray asks for a token that
only the loop's processes hold; the agent's namespace shows neither Ray's folder nor a token file.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import ray
from loop_support import make_workspace
from ray._private.authentication_test_utils import reset_auth_token_state

from autoresearch.agents import fence
from autoresearch.agents.command_agent import CommandAgent, run_process
from autoresearch.data.shards import Manifest
from autoresearch.evaluator.fingerprint import fingerprint
from autoresearch.loop import ray_cluster
from autoresearch.loop.executor import RunSpec
from autoresearch.loop.ray_cluster import connect
from autoresearch.loop.ray_executor import RayExecutor
from autoresearch.vocabulary import RunEnd

pytestmark = pytest.mark.slow
RAY_VARIABLES = (ray_cluster.AUTH_MODE, ray_cluster.AUTH_TOKEN, ray_cluster.AUTH_TOKEN_PATH, "RAY_TMPDIR", "HOME")
# What an agent would try: join the Ray it finds (address "auto", with the token in ~/.ray where Ray's own default
# puts it), or the address it found by scanning this machine's ports, with the raylets its PID namespace hides from
# Ray's search asked of the GCS; last, with Ray's token check on the driver's side off. A task that runs writes the
# file named second.
JOIN = """
import sys, ray
from ray._private import services
from ray._raylet import GcsClient
@ray.remote
def escape(path):
    open(path, "w").write("ran outside the agent's namespace")
address = sys.argv[1]
if address != "auto":
    services.find_node_ids = lambda: [node.hex() for node in GcsClient(address=address).get_all_node_info()]
try:
    ray.init(address=address, log_to_driver=False)
    ray.get(escape.remote(sys.argv[2]), timeout=60)
    print("joined", address)
except Exception as exc:
    print("refused", address, type(exc).__name__)
"""


@pytest.fixture
def loops_ray(tmp_path, monkeypatch):
    """Ray started as `connect(None)` starts it for the loop, with one GPU of its own; its address. Ray's variables
    (which connect sets in this process) and its token state are put back after."""
    saved = {name: os.environ.get(name) for name in RAY_VARIABLES}
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's sockets need a short path; no other test's Ray is here
    os.environ.update(HOME=str(tmp_path / "home"), RAY_TMPDIR=temp)  # where Ray's default writes a token file
    for name in RAY_VARIABLES[:3]:
        os.environ.pop(name, None)
    monkeypatch.setattr(ray, "init", functools.partial(ray.init, num_cpus=2, num_gpus=1))
    assert not ray.is_initialized()
    try:
        assert connect(None) == 1
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_auth_token_state()
        shutil.rmtree(temp, ignore_errors=True)


def test_an_agent_cannot_join_the_ray_the_loop_started_and_the_loop_still_trains_there(
    loops_ray, tmp_path, tiny_prepared
):
    """BROKE, fixed: Ray (2.60) starts a local cluster with token authentication, but writes its token to
    ~/.ray/auth_token, where an agent could read it: with the GCS's address (a scan of this machine's ports finds it)
    it joined the loop's Ray and ran a task as the user, outside its namespace. The loop's Ray now has a token only
    the loop's processes hold (in their environment, not the agent's), and the agent's namespace hides Ray's folder
    and ~/.ray."""
    assert ray_cluster.open_to_agent(CommandAgent("true")) is None  # no warning at the start
    assert not (Path.home() / ".ray").exists()  # the token is in no file
    ws = make_workspace(tmp_path / "ws", tiny_prepared)
    escaped = tmp_path / "escaped"
    joins = [
        f"{shlex.quote(sys.executable)} -c {shlex.quote(JOIN)} {address} {escaped}" for address in ("auto", loops_ray)
    ]
    # One try of 5 s, not Ray's two of 40 s: a cluster that took the driver would answer within milliseconds.
    quick = "RAY_gcs_server_port_wait_time_s=1 RAY_py_gcs_connect_timeout_s=5"
    joins.append(f"RAY_AUTH_MODE=disabled {quick} {joins[-1]}")
    # The GCS's port let through the agent's fence (where Landlock restricts TCP): the token is what refuses, at once.
    # Fenced, the last join was refused by the fence alone, after Ray's three timeouts (15 s).
    env = dict(os.environ) | {fence.PORTS_ENV: loops_ray.rsplit(":", 1)[1]}
    code, out, err = run_process("; ".join(joins), ws.root, "", env, 300, "an agent")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["refused"] * 3, out + err
    assert out.splitlines()[1:] == [
        f"refused {loops_ray} AuthenticationError",  # no token to send: none in its environment, nor in a file
        f"refused {loops_ray} ConnectionError",  # the cluster refuses a driver without its token
    ], out + err
    assert not escaped.exists()
    # The loop's own runs still train on it: the Ray worker that runs one has the token.
    manifest = Manifest.load(tiny_prepared / "manifest.json")
    spec = RunSpec(ws.root, ws.state / "runs" / "1-0", 120.0, fingerprint(ws.apparatus, manifest))
    outcome = RayExecutor().run(spec)
    assert outcome.status == RunEnd.OK, outcome.reason + outcome.log_tail
