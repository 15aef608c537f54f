"""The experiment forked into a sandbox of its own (evaluator/confined.py, evaluator/joining.py).

The forked experiment must be exactly as confined as one bubblewrap started: it sees the anchor's
filesystem, PID tree and network, not this process's; it holds no capability and cannot gain one; it
cannot change what SIGCHLD does. Where joining fails the experiment is started the plain way, still
confined, unless the loop found at its start that runs join their sandboxes: then it is not started. Each test
forks a real experiment from this process and runs a train.py in it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from autoresearch.evaluator import gpu_nodes, joining, promises, sandbox, syscalls
from autoresearch.evaluator.confined import ExperimentProcess
from autoresearch.evaluator.gpu_nodes import Nodes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forking into a sandbox is Linux's"),
    pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="bubblewrap cannot confine here"),
]

PROBE = """
import json, os, signal, socket, sys
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
out = {"caps": {k: status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")}}
out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out["hidden"] = os.listdir(HIDDEN) if os.path.exists(HIDDEN) else None
out["write"] = {}
for target in (OUTSIDE, os.path.join(HIDDEN, "ledger.sqlite")):
    try:
        open(target, "w").write("pwned")
        out["write"][target] = "written"
    except OSError as exc:
        out["write"][target] = type(exc).__name__
try:
    socket.create_connection(("127.0.0.1", PORT), timeout=2)
    out["network"] = "REACHED"
except OSError as exc:
    out["network"] = type(exc).__name__
try:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    out["sigchld"] = "ALLOWED"
except OSError as exc:
    out["sigchld"] = exc.errno
open("written-inside", "w").write("ok")
print("PROBE " + json.dumps(out))
"""


def experiment(tmp_path: Path, code: str, hidden: list[Path]) -> tuple[ExperimentProcess, str, int]:
    """Fork an experiment whose train.py is `code`, tell it "go", and return it, its output and exit code."""
    box = tmp_path / "box"
    box.mkdir()
    (box / "train.py").write_text(code)
    exp = ExperimentProcess(box, dict(os.environ), sandbox.View(hidden=hidden))
    out = io.BytesIO()
    exp.output.attach(out)
    exp.channel.send({"op": "go"})
    code = exp.proc.wait()
    exp.stop()
    return exp, out.getvalue().decode(), code


@pytest.fixture
def layout(tmp_path: Path):
    hidden = tmp_path / "workspace"
    hidden.mkdir()
    (hidden / "ledger.sqlite").write_text("records")
    listener = socket.create_server(("127.0.0.1", 0))
    yield hidden, listener.getsockname()[1]
    listener.close()


def test_a_forked_experiment_is_confined_as_one_bubblewrap_started(tmp_path: Path, layout) -> None:
    hidden, port = layout
    outside = tmp_path / "outside.txt"
    code = f"HIDDEN, OUTSIDE, PORT = {str(hidden)!r}, {str(outside)!r}, {port}\n" + PROBE
    exp, output, exit_code = experiment(tmp_path, code, [hidden])
    assert exp.forked and exp.confined and exit_code == 0, output
    probe = json.loads(output.split("PROBE ", 1)[1].splitlines()[0])
    assert probe["hidden"] in ([], None)  # the workspace is an empty directory inside, or not there at all
    assert probe["write"][str(hidden / "ledger.sqlite")] != "written"
    assert (hidden / "ledger.sqlite").read_text() == "records"
    assert not outside.exists()  # written, if at all, into its private /tmp
    assert probe["network"] != "REACHED"
    assert max(probe["pids"]) < 10, probe["pids"]  # its own PID namespace: bwrap's init, the anchor, itself
    assert all(int(v, 16) == 0 for k, v in probe["caps"].items() if k != "NoNewPrivs"), probe["caps"]
    assert probe["caps"]["NoNewPrivs"] == "1"
    if syscalls.unavailable_reason() is None:
        assert probe["sigchld"] == 1  # EPERM
    assert (tmp_path / "box" / "written-inside").read_text() == "ok"  # its own directory is writable


def test_the_forked_experiment_gets_the_scrubbed_environment(tmp_path: Path, layout, monkeypatch) -> None:
    hidden, _ = layout
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-train-py")
    code = "import json, os\nprint('ENV ' + json.dumps(dict(os.environ)))\n"
    _, output, _ = experiment(tmp_path, code, [hidden])
    env = json.loads(output.split("ENV ", 1)[1].splitlines()[0])
    assert "OPENAI_API_KEY" not in env and "sk-not-for-train-py" not in json.dumps(env)
    assert env["HOME"] == "/tmp"  # where it can write


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM", "SIGSEGV"])
def test_an_experiment_killed_by_a_signal_ends_as_killed_by_it(tmp_path: Path, layout, sig: str) -> None:
    """The out-of-memory killer's SIGKILL too: the run is reported killed, not as a program that could not start."""
    hidden, _ = layout
    code = f"import os, signal\nos.kill(os.getpid(), signal.{sig})\n"
    exp, output, exit_code = experiment(tmp_path, code, [hidden])
    assert exp.forked, output
    assert exit_code == -getattr(signal, sig), output


def test_a_killed_experiment_takes_everything_it_started_along(tmp_path: Path, layout) -> None:
    hidden, _ = layout
    marker = tmp_path / "box" / "still-alive"
    code = (
        "import subprocess, time\n"
        f"subprocess.Popen(['sh', '-c', 'sleep 3; touch {marker}'], start_new_session=True)\n"
        "time.sleep(60)\n"
    )
    box = tmp_path / "box"
    box.mkdir()
    (box / "train.py").write_text(code)
    exp = ExperimentProcess(box, dict(os.environ), sandbox.View(hidden=[hidden]))
    exp.output.attach(io.BytesIO())
    exp.channel.send({"op": "go"})
    time.sleep(1)
    assert exp.exit_code() is None
    assert exp.stop() < 0  # killed
    time.sleep(4)
    assert not marker.exists()


def test_where_joining_fails_the_experiment_is_started_the_plain_way_still_confined(
    tmp_path: Path, layout, monkeypatch
) -> None:
    hidden, port = layout

    def refuse(pid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(joining, "join", refuse)
    outside = tmp_path / "outside.txt"
    code = f"HIDDEN, OUTSIDE, PORT = {str(hidden)!r}, {str(outside)!r}, {port}\n" + PROBE
    exp, output, exit_code = experiment(tmp_path, code, [hidden])
    assert not exp.forked and exp.confined and exit_code == 0, output
    assert "PermissionError" in exp.join_error
    probe = json.loads(output.split("PROBE ", 1)[1].splitlines()[0])
    assert probe["hidden"] in ([], None) and probe["network"] != "REACHED"
    assert (hidden / "ledger.sqlite").read_text() == "records" and not outside.exists()
    if syscalls.unavailable_reason() is None:
        assert probe["sigchld"] == 1  # the filter, through bwrap --seccomp


def test_where_the_loop_found_that_runs_join_their_sandbox_a_run_that_cannot_is_not_started_beside_bwraps_init(
    tmp_path: Path, layout, monkeypatch
) -> None:
    """Joining can fail for one run (EAGAIN or ENOMEM at setns or fork, a moment short of processes or memory) where
    it works at the loop's start. That run was started the plain way, under bubblewrap's own init, which it can trace
    (what the anchor is there to prevent), saying nothing the loop reads. Promised the anchor (evaluator/promises.py:
    the loop's probe forked a process into a sandbox of ours), the evaluator now refuses, and leaves nothing running."""
    hidden, _ = layout
    monkeypatch.setenv(promises.ENV, promises.said({promises.SANDBOX, promises.ANCHOR}))

    def short_of_processes(pid: int) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(joining, "join", short_of_processes)
    box = tmp_path / "box"
    box.mkdir()
    (box / "train.py").write_text("print('TRAINED')\n")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(sandbox.SandboxUnavailable, match=r"forked into its sandbox.*Resource temporarily unavailable"):
        ExperimentProcess(box, dict(os.environ), sandbox.View(hidden=[hidden]))
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_the_loops_probe_says_where_a_run_cannot_join_its_sandbox(tmp_path: Path, monkeypatch) -> None:
    """What decides that promise: the probe takes a run's steps (anchor, join, fork, drop privileges) in a process of
    its own, and says which failed; where they work, it says nothing."""
    sandbox.anchors_reason.cache_clear()
    try:
        assert sandbox.anchors_reason() is None
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(
            "from autoresearch.evaluator import joining\n"
            "def join(pid):\n    raise PermissionError(1, 'Operation not permitted')\n"
            "joining.join = join\n"
        )
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), *sys.path[1:]]))
        sandbox.anchors_reason.cache_clear()
        assert sandbox.anchors_reason() == (
            "a run cannot be forked into a sandbox here: a process cannot join it: PermissionError: [Errno 1] "
            "Operation not permitted"
        )
    finally:
        sandbox.anchors_reason.cache_clear()


@pytest.mark.parametrize("fork", ["1", "0"])
def test_the_experiment_numbers_its_gpu_as_it_sees_it_inside(tmp_path: Path, layout, monkeypatch, fork) -> None:
    """Was a break on a machine of two GPUs: only GPU 1's node is bound for its worker, but the forked experiment
    kept the evaluator's CUDA_VISIBLE_DEVICES=1, which names no GPU in there: torch found none and trained on the
    CPU until the hard timeout. Forked or started, the experiment gets the numbering of what it can see."""
    hidden, _ = layout
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("AUTORESEARCH_FORK_SERVER", fork)
    mine, every = Nodes([], "0", True), Nodes([], None, False)  # GPU 1 is GPU 0 in there
    monkeypatch.setattr(gpu_nodes, "own_nodes", lambda env: mine if env.get("CUDA_VISIBLE_DEVICES") == "1" else every)
    code = "import os\nprint('GPU ' + os.environ['CUDA_VISIBLE_DEVICES'])\n"
    exp, output, _ = experiment(tmp_path, code, [hidden])
    assert exp.forked == (fork == "1")
    assert "GPU 0" in output, output
