"""Shared fixtures: a small real corpus, a prepared `tiny` dataset, and an environment that stays in tmp.

The corpus is a copy of a few standard-library packages of the running interpreter: real code and
docstrings (~1 MB), enough for the tiny preset's 65,536-token validation set plus training text, and
always there without a network. It is prepared once per session (under a second on 2 cores).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import sys
import sysconfig
from pathlib import Path

import pytest
from rich.console import Console

from autoresearch.agents import namespace
from autoresearch.config.presets import Preset, get_preset
from autoresearch.data.prepare import prepare
from autoresearch.evaluator import sandbox

pytest_plugins = ["fake_hub", "fake_llm", "loop_support", "web_support"]  # fixtures: fake HF hub, fake LLM APIs,
# workspaces, the web view's night

CORPUS_PACKAGES = ("json", "email", "asyncio")
# Variables that would point a test at the user's own workspace, data, device or result file.
ISOLATED_ENV = (
    "AUTORESEARCH_CHANNEL",
    "AUTORESEARCH_SANDBOX",
    "AUTORESEARCH_RESULT",
    "AUTORESEARCH_DEVICE",
    "AUTORESEARCH_PEAK_FLOPS",
)


# The test modules with a module-scoped fixture (`lab`: a baseline of two real runs, 10-13 s; test_ray's Ray; ...).
# pytest-xdist runs each of them whole on one worker, so that fixture is set up once: spread over both workers, as
# xdist spreads the other tests, each set it up (10 setups of `lab`, a minute of the suite).
ONE_WORKER_MODULES = {
    f"tests/{name}.py"
    for name in (
        "test_loop_real", "test_probe", "test_ray", "test_red_team", "test_red_team_downgrade",
        "test_red_team_fork", "test_red_team_h156", "test_show_diff", "test_tokenizer", "test_train_e2e", "test_web",
    )
}  # fmt: skip
# The test modules that start Ray in the pytest process. They run after all others (in each worker): Ray leaves
# gRPC's threads in the process after `ray.shutdown()`, and an experiment a later test forked from it (test_joining)
# crashed as it exited.
RAY_MODULES = {
    f"tests/{name}.py"
    for name in (
        "test_cores", "test_off_budget", "test_ray", "test_ray_agent", "test_ray_work", "test_red_team_driver",
        "test_scheduler",
    )
}  # fmt: skip
_GRPC_THREAD = "grpc_global_tim"  # a thread of Ray's gRPC, there from `ray.init()` on


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist's scheduling by scope, a scope being a whole module of ONE_WORKER_MODULES and each other test alone,
    handed out in the order of `pytest_collection_modifyitems`."""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False

    class ModulesWholeElseEachTest(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _module(nodeid) if _module(nodeid) in ONE_WORKER_MODULES else nodeid

    return ModulesWholeElseEachTest(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The order tests are handed out in: the modules run whole first (the most tests first), then the others,
    those that start Ray last. A module with a module-scoped fixture not in ONE_WORKER_MODULES is an error: it would
    be set up on each worker its tests land on."""
    counts: dict[str, int] = {}
    for item in items:
        module = _module(item.nodeid)
        counts[module] = counts.get(module, 0) + 1
        defs = getattr(item, "_fixtureinfo", None)
        if module not in ONE_WORKER_MODULES and any(
            d[-1].scope == "module" for d in (defs.name2fixturedefs.values() if defs else ())
        ):
            raise pytest.UsageError(f"{module} uses a module-scoped fixture: add it to ONE_WORKER_MODULES")

    def order(item: pytest.Item) -> tuple[bool, bool, int]:
        module = _module(item.nodeid)
        whole = module in ONE_WORKER_MODULES
        return module in RAY_MODULES, not whole, -counts[module] if whole else 0

    items.sort(key=order)  # stable: each module's tests stay in their order


@pytest.fixture(autouse=True)
def _ray_only_where_listed(request: pytest.FixtureRequest):
    yield
    module = _module(request.node.nodeid)
    if module not in RAY_MODULES and any(_GRPC_THREAD in name for name in _thread_names()):
        pytest.fail(f"{module} started Ray in the pytest process: add it to RAY_MODULES in tests/conftest.py")


def _thread_names() -> list[str]:
    names = []
    for task in Path("/proc/self/task").glob("*/comm"):
        with contextlib.suppress(OSError):
            names.append(task.read_text())
    return names


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """A test module's asserts as pytest rewrites them are cached (tests/__pycache__) even where
    PYTHONDONTWRITEBYTECODE is set, as on this project's machines: rewritten anew, they took ~8 s of each pytest
    worker's start, a seventh of the fast subset."""
    if not isinstance(collector, pytest.Module):
        return (yield)
    was, sys.dont_write_bytecode = sys.dont_write_bytecode, False
    try:
        return (yield)
    finally:
        sys.dont_write_bytecode = was


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory tree of real Python sources copied from the standard library."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    root = tmp_path_factory.mktemp("corpus")
    for package in CORPUS_PACKAGES:
        for src in sorted((stdlib / package).rglob("*.py")):
            dest = root / package / src.relative_to(stdlib / package)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's AUTORESEARCH_CACHE: prepared data never lands in ~/.cache."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_prepared(corpus_dir: Path, cache_dir: Path) -> Path:
    """`corpus_dir` prepared for the tiny preset (as `autoresearch prepare --root` does); its directory."""
    return prepare("python-source", get_preset("tiny"), cache_dir, root=corpus_dir, console=quiet_console())


@pytest.fixture(scope="session")
def subprocess_env(cache_dir: Path) -> dict[str, str]:
    """Environment for `autoresearch` and `python train.py` subprocesses: the session cache, nothing else."""
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED_ENV}
    env.update(AUTORESEARCH_CACHE=str(cache_dir), COLUMNS="300", PYTHONUNBUFFERED="1")
    return env


# A test that fills /tmp with sockets (marked `floods_tmp`) has it to itself: every agent turn of the other pytest
# worker meanwhile hid its thousands of sockets too, and failed to start (its command too long), at random. The lock
# file is in your home, which an agent turn of a test cannot write (in /tmp it could delete it).
FLOOD_LOCK = Path.home() / ".cache" / "autoresearch-tests-floods-tmp.lock"


@pytest.fixture(autouse=True)
def _tmp_not_flooded_by_another_test(request: pytest.FixtureRequest):
    FLOOD_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with FLOOD_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if request.node.get_closest_marker("floods_tmp") else fcntl.LOCK_SH)
        yield


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, cache_dir: Path):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache_dir))
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps at 80 columns otherwise, splitting messages tests look for
    for name in ISOLATED_ENV:
        monkeypatch.delenv(name, raising=False)
    yield
    from loop_support import OPEN_EXECUTORS

    while OPEN_EXECUTORS:  # the evaluator a loop started ahead for its next run
        OPEN_EXECUTORS.pop().close()
    # Probes cached per process: one a test made while its PATH pointed nowhere (bwrap, unshare "missing"), or its
    # bubblewrap failed, would hold for every later test of this pytest worker (its runs root, under bubblewrap's init:
    # `-m slow` once failed 3 tests so). (A test may have replaced a probe: it is put back later.)
    probes = (sandbox.unavailable_reason, sandbox.anchors_reason, sandbox.users_reason, namespace.pid_namespace)
    for probe in (*probes, sandbox.bwrap):  # bwrap's path too: found nowhere, a later test's runs had no sandbox
        # a way or a path found works; a reason says it failed
        works = bool if probe in (namespace.pid_namespace, sandbox.bwrap) else (lambda why: why is None)
        if hasattr(probe, "cache_info") and probe.cache_info().currsize and not works(probe()):
            probe.cache_clear()


@pytest.fixture
def mini_preset() -> Preset:
    """A preset small enough to prepare a hand-made corpus in well under a second."""
    return Preset(
        name="mini",
        description="tests: 32-token rows, 300-token vocabulary",
        seq_len=32,
        vocab_size=300,
        budget_seconds=5,
        eval_tokens=32 * 16,
        untimed_steps=1,
        tokenizer_train_chars=200_000,
        max_corpus_bytes=None,
    )


def quiet_console() -> Console:
    """A console that records into a string (read it with `console.file.getvalue()`), wide enough not to wrap."""
    return Console(file=io.StringIO(), width=300, color_system=None)


@pytest.fixture
def console() -> Console:
    return quiet_console()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_prepared: Path, cache_dir: Path):
    """A workspace with its baseline measured, and the loop that measured it (the red-team tests' base, and the real
    loop tests' whose edits do not depend on a workspace of their own)."""
    from loop_support import OPEN_EXECUTORS, make_loop, make_workspace

    from autoresearch.loop.executor import LocalExecutor
    from autoresearch.vocabulary import Status

    if (reason := sandbox.unavailable_reason()) is not None:  # unconfined, its runs would write this package's files
        pytest.fail(f"the sandbox does not work on this machine: {reason}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_CACHE", str(cache_dir))
        ws = make_workspace(tmp_path_factory.mktemp("red-team") / "ws", tiny_prepared)
        # Its fork server serves the runs of every test of the module that steps this loop: it is not among the
        # executors closed after each test (closed, it had every later run's evaluator start as a new process, and
        # the check below held for nothing). No evaluator is started ahead, so none outlives its test.
        loop = make_loop(ws, LocalExecutor(prewarm=False), baseline_runs=2)
        OPEN_EXECUTORS.remove(loop.executor)
        assert loop.baseline().status == Status.KEEP
        yield ws, loop
        assert loop.executor.fork_failure is None  # every evaluator was forked from the fork server
        loop.executor.close()


@pytest.fixture
def agent_unhidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shell agent's turn where its namespace can neither hide a place nor make one read-only (util-linux before
    2.36, say): what it leaves in the workspace's private state is then for the loop's check after the turn."""
    from autoresearch.agents import namespace

    way = namespace._namespaces()[-1]  # the last: the one that hides nothing
    monkeypatch.setattr(namespace, "pid_namespace", lambda: way)
