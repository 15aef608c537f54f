"""The web view's tests' night and server, shared by test_web.py, test_red_team_h156.py and test_walk_h157.py (a
plugin of tests/conftest.py): a workspace whose ledger holds four experiments, and the real server on a free port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from loop_support import FakeExecutor, ScriptedAgent, constant, make_loop, make_workspace, with_constants

from autoresearch.evaluator.sandbox import module_command
from autoresearch.loop.executor import Outcome
from autoresearch.vocabulary import RunEnd
from autoresearch.web import serve as web_serve
from autoresearch.workspace.workspace import Workspace

# An agent's description that a page putting it in as markup would run
PLANTED = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script> try LR 0.9"


def score(source: str) -> float | Outcome:
    if constant(source, "BATCH") == 64:
        return Outcome(RunEnd.CRASH, None, "out of memory", "step 0\nRuntimeError: out of memory\n", 1.0)
    return 1.0 + (constant(source, "LR") - 0.2) ** 2


def edit(description: str, **values):
    return lambda ctx: (description, with_constants(ctx.train_py, **values))


@pytest.fixture(scope="module")
def night_built(tmp_path_factory: pytest.TempPathFactory, tiny_prepared: Path, cache_dir: Path) -> Path:
    """exp 1 baseline, 2 LR 0.2 (kept), 3 the planted description (discarded), 4 BATCH 64 (crash)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_CACHE", str(cache_dir))
        workspace = make_workspace(tmp_path_factory.mktemp("night") / "ws", tiny_prepared)
        loop = make_loop(workspace, FakeExecutor(score))
        loop.baseline()
        agent = ScriptedAgent([edit("LR 0.05 -> 0.2", LR=0.2), edit(PLANTED, LR=0.9), edit("BATCH 64", BATCH=64)])
        for _ in range(3):
            loop.step(agent)
        loop.ledger.close()
    return workspace.root


@pytest.fixture
def night(night_built: Path, tmp_path: Path, cache_dir: Path, monkeypatch) -> Workspace:
    """A copy of the module's night, for a test to read or add to."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache_dir))
    root = tmp_path / "ws"
    shutil.copytree(night_built, root, symlinks=True)
    return Workspace(root)


@contextlib.contextmanager
def served(ws: Workspace):
    """The view of `ws` served on 127.0.0.1 (a free port) by uvicorn in a thread; its URL."""
    sock = web_serve.listening("127.0.0.1", 0)
    server = web_serve.server(ws, sock, "127.0.0.1")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        yield web_serve.url_of(sock, "127.0.0.1")
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "the web view's browser tests need Chromium: `apt-get install chromium` (.ci/run installs it)"
    return found


def web_command(ws: Workspace, background: bool = False) -> subprocess.Popen:
    """`autoresearch web --port 0` on `ws` in a process of its own, its output in pipes; started as from a terminal
    (Ctrl-C stops it, whatever the suite was started under: `nohup`, `&`), or, `background`, as a background job."""
    interrupt = signal.SIG_IGN if background else signal.SIG_DFL
    return subprocess.Popen(
        [*module_command(sys.executable, "autoresearch"), "web", "--port", "0", "--workspace", str(ws.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
        preexec_fn=lambda: signal.signal(signal.SIGINT, interrupt),
    )
