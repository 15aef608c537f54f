"""Fixtures for the loop's tests: workspaces with a fast bigram train.py, a fake executor, a scripted agent."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil
import pytest

from autoresearch.agents.base import Context, Proposal, ProposalError, Usage
from autoresearch.agents.namespace import AGENT_FILES
from autoresearch.config.presets import get_preset
from autoresearch.evaluator import cgroups, run_group
from autoresearch.evaluator.result import Result
from autoresearch.loop.engine import LoopConfig, ResearchLoop
from autoresearch.loop.environment import Environment
from autoresearch.loop.executor import Outcome, RunSpec, outcome_of
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.reporter import PlainReporter
from autoresearch.vocabulary import Status
from autoresearch.workspace.constants import read_constants, set_constants
from autoresearch.workspace.init import create_workspace
from autoresearch.workspace.workspace import Workspace

# A train.py that trains in a second: a bigram table, plain Adam. Same contract as the real template.
BIGRAM_TRAIN_PY = '''"""A bigram model: the smallest train.py that speaks to the harness."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoresearch import harness

LR = 0.05  # Adam learning rate (0.001-1)
BATCH = 8  # rows per step (1-64)
SEED = 42  # initialisation seed


class Bigram(nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx, targets=None):
        logits = self.table(idx)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


if __name__ == "__main__":
    run = harness.start()
    torch.manual_seed(SEED)
    model = Bigram(run.vocab_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    run.set_model(model)
    batches = run.train_batches(BATCH)
    while not run.time_up:
        x, y = next(batches)
        loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        run.step_done(loss)
    run.finish()
'''


FAKE_SETUP = "AMD EPYC; CPU time / 2 cores"  # what a fake result says it was measured on (Result.setup)
# A GPU's: on the wall clock, where one initialisation's runs can repeat closely (judge.tells_copies).
GPU_SETUP = "NVIDIA H100 80GB HBM3; wall clock"


# What a process does to take the CPUs it is not pinned to (a run beside other workers' runs, an agent's turn beside
# the runs): every CPU asked for; an io_uring ring whose polling thread spins on the CPU it names (SQPOLL | SQ_AFF),
# whatever the process is pinned to; a user namespace of its own, where a run as root mounted the cgroup filesystem
# and moved into another cpuset. Its lines: "cores: widened" or "cores: refused ERRNO", "io_uring: set up" or
# "io_uring: refused ERRNO", "user namespace: made" or "... refused ERRNO", then "cores: CPU CPU ...".
TAKE_EVERY_CORE = """
import ctypes, os
try:
    os.sched_setaffinity(0, range(os.cpu_count()))
    print("cores: widened", flush=True)
except OSError as exc:
    print("cores: refused", exc.errno, flush=True)
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(bytes(8) + (6).to_bytes(4, "little"), 120)
ok = libc.syscall(425, 4, params) >= 0
print("io_uring:", "set up" if ok else f"refused {ctypes.get_errno()}", flush=True)
ok = libc.unshare(0x10000000) == 0
print("user namespace:", "made" if ok else f"refused {ctypes.get_errno()}", flush=True)
print("cores:", *sorted(os.sched_getaffinity(0)), flush=True)
"""


def make_workspace(path: Path, data_dir: Path, train_py: str = BIGRAM_TRAIN_PY, budget: float = 1.0) -> Workspace:
    """A tiny workspace on `data_dir` whose branch has `train_py` committed: a copy of one made once per process for
    these arguments (making one takes 0.2 s of git; hundreds of tests make one; nothing in it names its path)."""
    key = (str(data_dir), train_py, budget)
    if key not in _TEMPLATES:
        template = Path(_template_root()) / str(len(_TEMPLATES))
        create_workspace(template, get_preset("tiny"), "python-source", data_dir, budget, tag="test")
        made = Workspace(template)
        made.write_train_py(train_py)
        made.git.commit("bigram train.py for tests", "train.py")
        _TEMPLATES[key] = template
    shutil.copytree(_TEMPLATES[key], path, symlinks=True, dirs_exist_ok=True)
    return Workspace(path)


_TEMPLATES: dict[tuple[str, str, float], Path] = {}


@functools.cache
def _template_root() -> str:
    root = tempfile.mkdtemp(prefix="autoresearch-test-workspaces-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@pytest.fixture
def workspace(tmp_path, tiny_prepared) -> Workspace:
    return make_workspace(tmp_path / "ws", tiny_prepared)


def agent_channel(ws: Workspace) -> Path:
    """A folder an agent's turn in `ws` writes for real, where a test reads what its script said or left: the coding
    agents' own files (.autoresearch/agents/), writable in its namespace, and not judged by the loop. (What it writes
    in /tmp, where pytest's tmp_path lies, or in /var/tmp is its own: gone at the end of its turn.)"""
    folder = ws.root / AGENT_FILES / "test-channel"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def peak_growth() -> Iterator[list[int]]:
    """How far this process's resident memory rose above where it was at the start of the block, at its highest:
    [bytes], read after the block (sampled every 5 ms meanwhile, by a thread)."""
    this, grown, done = psutil.Process(), [0], threading.Event()

    def watch(start: int) -> None:
        while not done.is_set():
            grown[0] = max(grown[0], this.memory_info().rss - start)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, args=(this.memory_info().rss,))
    watcher.start()
    try:
        yield grown
    finally:
        done.set()
        watcher.join()


def with_constants(source: str, **values) -> str:
    return set_constants(source, values)


def set_lr(value: float):
    """A ScriptedAgent's edit: LR set to `value`."""
    return lambda ctx: (f"LR {value}", with_constants(ctx.train_py, LR=value))


def constant(source: str, name: str):
    return read_constants(source)[name].value


@dataclass
class FakeExecutor:
    """Scores train.py with a function of its source instead of training it."""

    score: Callable[[str], float | Outcome]
    calls: list[str] = field(default_factory=list)
    setup: str = FAKE_SETUP  # the kind of device and clock its results say they ran on
    confined: bool = True  # what its results say: False, a run that could reach the workspace (not believed if it did)
    torch: str = ""  # the torch its results say trained them ("": not recorded, as before the field)

    def run(self, spec: RunSpec) -> Outcome:
        source = spec.source.read_text()
        self.calls.append(source)
        value = self.score(source)
        if isinstance(value, Outcome):
            return value
        result = replace(fake_result(value, spec.fingerprint, self.setup), confined=self.confined, torch=self.torch)
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        result.save(spec.run_dir / "result.json")  # where the evaluator leaves it
        return outcome_of(0, result, "", "", 0.01, spec.fingerprint)  # judged as a real evaluator's result is

    def close(self) -> None:
        pass


def fake_result(bpb: float, fingerprint: str, setup: str = FAKE_SETUP) -> Result:
    return Result(
        val_bpb=bpb,
        valid=True,
        invalid_reason=None,
        training_seconds=1.0,
        total_seconds=2.0,
        untimed_seconds=0.5,
        eval_seconds=0.5,
        peak_memory_mb=100.0,
        mfu_percent=None,
        tokens_per_second=1.0,
        total_tokens_M=0.1,
        num_steps=10,
        num_params_M=1.0,
        epochs=1,
        device="cpu",
        preset="tiny",
        dataset="python-source",
        budget_seconds=1.0,
        harness_fingerprint=fingerprint,
        confined=True,
        training_clock=setup.partition("; ")[2],
        setup=setup,
    )


@dataclass
class ScriptedAgent:
    """Proposes the given edits in order: each a function of the context giving (description, new source)."""

    edits: list[Callable[[Context], tuple[str, str]]]
    name: str = "scripted"
    model: str = "test"
    seen: list[Context] = field(default_factory=list)

    def propose(self, context: Context) -> Proposal:
        self.seen.append(context)
        if not self.edits:
            raise ProposalError("script exhausted")
        description, source = self.edits.pop(0)(context)
        return Proposal(description, source, Usage(100, 20, 0.001))


def one_edit(description: str, replacements: list[tuple[str, str]]) -> ScriptedAgent:
    """An agent that proposes one change: each `old` in train.py replaced by its `new`."""

    def edit(context: Context) -> tuple[str, str]:
        source = context.train_py
        for old, new in replacements:
            assert old in source, old
            source = source.replace(old, new, 1)
        return description, source

    return ScriptedAgent([edit])


OPEN_EXECUTORS: list = []  # closed after each test (conftest): a warm evaluator must not outlive its test


def make_loop(
    ws: Workspace,
    executor,
    baseline_runs: int = 3,
    timeout: float | None = None,
    events=None,
    environment: Environment | None = None,
):
    """A loop on `ws`; the files outside the workspace it checks around agent turns are `environment`'s, by default
    none (walking this Python's costs most of a second a turn: test_environment.py checks that)."""
    if hasattr(executor, "close"):
        OPEN_EXECUTORS.append(executor)
    echo = events.append if events is not None else (lambda _text: None)
    config = LoopConfig(baseline_runs=baseline_runs, timeout=timeout)
    return ResearchLoop(ws, executor, PlainReporter(echo), config, environment=environment or Environment(()))


def killed_loop(workspace: Workspace, body: str) -> subprocess.CompletedProcess:
    """Run `body` (Python, with `ws` the workspace and this module's names at hand) in a process of its own, which
    something in it SIGKILLs: what a kill leaves, no `finally` run. Its exit must say it was killed."""
    preamble = f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from loop_support import *
        from autoresearch.workspace.workspace import Workspace
        from pathlib import Path
        ws = Workspace(Path({str(workspace.root)!r}))
        def kill():
            os.kill(os.getpid(), signal.SIGKILL)
    """
    code = textwrap.dedent(preamble) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    return proc


def pending_experiment(workspace, loop, attempts: int, source: str, exp_id: int = 2):
    """The ledger and git as a loop killed while training experiment `exp_id` leaves them."""
    workspace.write_train_py(source)
    commit = workspace.git.commit(f"exp {exp_id}: an edit", "train.py")
    parent = loop.best().commit
    exp = Experiment(
        id=exp_id, kind="experiment", status=Status.RUNNING, description="an edit", parent=parent, source=source
    )
    exp.commit, exp.attempts, exp.agent = commit, attempts, "try"
    Ledger(workspace.root).insert(exp)
    return exp


def run_groups(controller: str) -> list[tuple[int, Path]]:
    """(the pid of the evaluator that made it, its folder) of each run's group in `controller`'s hierarchy: below this
    process's cgroup, or beside it on cgroup v2 (evaluator/run_group.py)."""
    found = []
    for own, top in cgroups.own_folders(controller):
        found += own.glob(f"{run_group.PREFIX}*")
        if own != top:
            found += own.parent.glob(f"{run_group.PREFIX}*-{own.name}")
    return [(int(folder.name.removeprefix(run_group.PREFIX).split("-")[0]), folder) for folder in found]


def groups_left(controller: str) -> list[Path]:
    """The run groups of evaluators that no longer run (what the next run's evaluator sweeps)."""
    return [folder for pid, folder in run_groups(controller) if not psutil.pid_exists(pid)]


def evaluators_with(tmp_path: Path, name: str, text: str) -> dict[str, str]:
    """An environment whose Python finds the module `name` (`text`) first: what the loop's evaluators (and their fork
    server) import, not the loop itself, which has imported what it needs already. (The sandbox's /tmp is its own:
    the experiment does not see it.)"""
    folder = tmp_path / "evaluators-site"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(text))
    return {"PYTHONPATH": os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH", "")])])}


def on_a_read_only_mount(root: str, commands: str, env: dict) -> str:
    """Run `commands` (bash) with `root` bind-mounted read-only onto itself, in a mount namespace of its own."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here")
    script = f"mount --bind {root} {root} && mount -o remount,bind,ro {root} || exit 99; {commands}"
    done = subprocess.run(
        ["unshare", "-m", *(["--map-root-user"] if os.getuid() else []), "bash", "-c", script],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    if done.returncode == 99 or "unshare failed" in done.stderr:
        pytest.skip(f"cannot make a read-only mount here: {done.stderr}")
    return done.stdout + done.stderr
