"""The fork server the loop starts runs from: a forked run must behave like `python train.py`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from autoresearch.loop.executor import CRASH, FORK_SERVER_ENV, LocalExecutor, RunSpec, reap_orphan, write_pid_file
from autoresearch.loop.launcher import MAX_FAILURES, Launcher, _Replies, available

pytestmark = pytest.mark.skipif(not available(), reason="the fork server is Linux-only")

PROBE = """
import os, sys
print("name", __name__, "cwd", os.getcwd(), "env", os.environ.get("PROBE_VALUE"))
print("torch already imported", "torch" in sys.modules, "own group", os.getpgid(0) == os.getpid())
print("to stderr", file=sys.stderr)
print("path", sys.path[0], "loop's directory on it", os.environ.get("PROBE_LOOP_CWD") in sys.path)
if os.environ.get("PROBE_FAIL") == "exit":
    sys.exit(3)
if os.environ.get("PROBE_FAIL") == "raise":
    raise ValueError("train.py broke")
"""


@pytest.fixture(scope="module")
def launcher():
    with Launcher() as launcher:
        yield launcher


def run_probe(launcher: Launcher, tmp_path: Path, **env: str) -> tuple[int, str]:
    directory = tmp_path / env.get("PROBE_VALUE", env.get("PROBE_FAIL", "run"))
    directory.mkdir()
    (directory / "train.py").write_text(PROBE)
    log = tmp_path / "log.txt"
    child = launcher.start(directory, {**os.environ, **env}, log)
    return child.wait(timeout=120), log.read_text()


def test_a_forked_run_sees_what_python_train_py_would_with_torch_already_imported(launcher, tmp_path):
    code, log = run_probe(launcher, tmp_path, PROBE_VALUE="42", PROBE_LOOP_CWD=os.getcwd())
    assert code == 0
    assert f"name __main__ cwd {tmp_path / '42'} env 42" in log
    assert "torch already imported True own group True" in log
    assert "to stderr" in log
    assert f"path {tmp_path / '42'} loop's directory on it False" in log  # as `python train.py` would have it


def test_exit_codes_and_tracebacks_reach_the_executor(launcher, tmp_path):
    code, log = run_probe(launcher, tmp_path, PROBE_FAIL="exit")
    assert code == 3
    code, log = run_probe(launcher, tmp_path, PROBE_FAIL="raise")
    assert code == 1 and "ValueError: train.py broke" in log and "Traceback" in log


def test_a_dead_fork_server_costs_one_plain_start_then_comes_back(tmp_path):
    (tmp_path / "train.py").write_text("import sys\nprint('torch' in sys.modules)\n")
    executor = LocalExecutor()
    try:
        executor.launcher._server.kill()
        spec = RunSpec(tmp_path, tmp_path / "run1", timeout=120, fingerprint="x")
        outcome = executor.run(spec)  # no result file: a crash, but the run itself happened
        assert outcome.status == CRASH and "exit code 0" in outcome.reason
        assert "False" in outcome.log_tail  # started as a plain `python train.py`
        outcome = executor.run(RunSpec(tmp_path, tmp_path / "run2", timeout=120, fingerprint="x"))
        assert "True" in outcome.log_tail  # forked again from a fresh server
    finally:
        executor.close()


def test_an_orphan_is_reaped_only_if_its_pid_still_names_the_same_process(tmp_path):
    proc = psutil.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        write_pid_file(tmp_path / "pid", proc.pid)
        created = (tmp_path / "pid").read_text().split()[1]
        (tmp_path / "pid").write_text(f"{proc.pid} {float(created) - 100}")  # a reused pid
        assert not reap_orphan(tmp_path) and proc.is_running()
        write_pid_file(tmp_path / "pid", proc.pid)
        assert reap_orphan(tmp_path)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.is_running():
            proc.kill()


def test_a_server_that_cannot_start_is_given_up_on_and_runs_start_plainly(tmp_path):
    (tmp_path / "train.py").write_text("print('ran')\n")
    executor = LocalExecutor()
    executor.launcher.close()
    executor.launcher._python = "/bin/false"  # every server it starts dies at once
    executor.launcher._start_server()
    try:
        for i in range(MAX_FAILURES + 1):
            outcome = executor.run(RunSpec(tmp_path, tmp_path / f"run{i}", timeout=120, fingerprint="x"))
            assert "ran" in outcome.log_tail  # each run still happened, the plain way
        assert executor.launcher._server is None  # no more servers started after MAX_FAILURES
    finally:
        executor.close()


def test_two_answers_that_arrive_together_are_both_read():
    # A run that ends at once makes the server answer "pid" and "exit" in one go; reading the first must
    # not swallow the second, or the run would look like a hang until the timeout.
    read, write = os.pipe()
    try:
        os.write(write, b'{"pid": 7}\n{"exit": 0}\n')
        replies = _Replies(read)
        assert replies.next(timeout=1) == {"pid": 7}
        assert replies.next(timeout=1) == {"exit": 0}
        assert replies.next(timeout=0.1) is None
    finally:
        os.close(read)
        os.close(write)


DRIVER = """
import sys
from pathlib import Path
from autoresearch.loop.executor import LocalExecutor, RunSpec
workspace = Path(sys.argv[1])
executor = LocalExecutor()
print("running", flush=True)
try:
    executor.run(RunSpec(workspace, workspace / "run", timeout=300, fingerprint="x"))
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_ctrl_c_stops_the_loop_and_takes_a_forked_run_down_with_it(tmp_path):
    marker = f"autoresearch-ctrl-c-{os.getpid()}"
    (tmp_path / "train.py").write_text(
        f"import subprocess, time\nsubprocess.Popen(['sleep', '300', '{marker}'])\nprint('training', flush=True)\n"
        "time.sleep(300)\n"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert driver.stdout.readline() == "running\n"
        deadline = time.monotonic() + 60
        log = tmp_path / "run" / "log.txt"
        while not log.exists() or "training" not in log.read_text():
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.2)
        os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        out, _ = driver.communicate(timeout=60)
        assert "interrupted" in out
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    time.sleep(0.5)
    assert not [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]


def test_the_fork_server_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv(FORK_SERVER_ENV, "0")
    (tmp_path / "train.py").write_text("import sys\nprint('torch' in sys.modules)\n")
    executor = LocalExecutor()
    assert executor.launcher is None
    outcome = executor.run(RunSpec(tmp_path, tmp_path / "run", timeout=120, fingerprint="x"))
    assert outcome.log_tail.strip() == "False"  # a fresh interpreter: nothing imported in advance
