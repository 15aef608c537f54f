"""The experiments' compile caches: a run reads the shared one, writes only its own layer, and what it wrote
reaches the shared cache only when the loop keeps its train.py."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import time
from pathlib import Path

import pytest
from loop_support import (
    BIGRAM_TRAIN_PY,
    FakeExecutor,
    ScriptedAgent,
    constant,
    make_loop,
    make_workspace,
    with_constants,
)

from autoresearch import switches
from autoresearch.evaluator import compile_cache, memory
from autoresearch.files import remove_tree
from autoresearch.loop.executor import LocalExecutor, Outcome, RunSpec
from autoresearch.loop.scheduler import Scheduler
from autoresearch.loop.workers import devices, make_workers
from autoresearch.vocabulary import Status


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    monkeypatch.delenv(compile_cache.MODE_ENV, raising=False)
    dirs = compile_cache.shared_dirs()
    kernel = dirs["TORCHINDUCTOR_CACHE_DIR"] / "fxgraph" / "ab" / "entry"
    kernel.parent.mkdir(parents=True)
    kernel.write_text("compiled by the baseline")
    return dirs


def layer_of(box: Path) -> dict[str, Path]:
    """A confined run's layer, where it lies outside the sandbox (the run sees it at INSIDE)."""
    env, binds = compile_cache.layer({"PATH": "/bin"}, box, confined=True)
    assert env["PATH"] == "/bin" and binds == [(box / compile_cache.LAYER, compile_cache.INSIDE)]
    for name, sub in compile_cache.CACHES.items():
        assert env[name] == str(compile_cache.INSIDE / sub)  # the same path in every run
    compile_cache.fill(box)  # when the run starts
    return {name: box / compile_cache.LAYER / sub for name, sub in compile_cache.CACHES.items()}


def a_run(layer: dict[str, Path]) -> None:
    """What Inductor does in a run: read a cached entry, write a new one, and replace one atomically."""
    inductor = layer["TORCHINDUCTOR_CACHE_DIR"]
    assert (inductor / "fxgraph" / "ab" / "entry").read_text() == "compiled by the baseline"
    (inductor / "fxgraph" / "cd").mkdir()
    (inductor / "fxgraph" / "cd" / "new").write_text("compiled by this run")
    replacement = inductor / "fxgraph" / "ab" / "entry.tmp"
    replacement.write_text("a different entry under the baseline's key")
    os.replace(replacement, inductor / "fxgraph" / "ab" / "entry")
    (layer["TRITON_CACHE_DIR"] / "kernel.cubin").write_bytes(b"\x7fELF")


def cached(path: Path, size: int, days_old: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    then = time.time() - days_old * 86400
    os.utime(path, (then, then))
    return path


@pytest.fixture
def new_evaluator(monkeypatch: pytest.MonkeyPatch):
    """This process as a new evaluator would be: not yet marking the caches in use; its mark let go after; the run's
    share of memory it sets in the environment taken back after (it would reach the next test's workers)."""
    monkeypatch.setattr(compile_cache, "_held", None)
    monkeypatch.setenv(memory.MEMORY_ENV, str(memory.share(1)))
    yield
    if compile_cache._held is not None:
        os.close(compile_cache._held)


def test_a_run_reads_the_shared_cache_through_its_own_layer_and_leaves_the_shared_one_as_it_was(
    shared: dict[str, Path], tmp_path: Path
) -> None:
    a_run(layer_of(tmp_path / "box"))
    inductor = shared["TORCHINDUCTOR_CACHE_DIR"]
    assert (inductor / "fxgraph" / "ab" / "entry").read_text() == "compiled by the baseline"
    assert not (inductor / "fxgraph" / "cd").exists()
    assert not list(shared["TRITON_CACHE_DIR"].glob("*"))


def test_what_a_kept_run_compiled_joins_the_shared_cache_but_replaces_nothing_in_it(
    shared: dict[str, Path], tmp_path: Path
) -> None:
    box, staged = tmp_path / "box", tmp_path / "runs" / "7-0" / compile_cache.STAGED
    a_run(layer_of(box))
    compile_cache.vouch(staged, compile_cache.harvest(box, staged))
    assert compile_cache.settle([staged], keep=True) == 2  # the new entry and the kernel, not the replacement
    inductor = shared["TORCHINDUCTOR_CACHE_DIR"]
    assert (inductor / "fxgraph" / "cd" / "new").read_text() == "compiled by this run"
    assert (inductor / "fxgraph" / "ab" / "entry").read_text() == "compiled by the baseline"
    assert (shared["TRITON_CACHE_DIR"] / "kernel.cubin").read_bytes() == b"\x7fELF"
    assert not staged.exists()
    # The next run sees all of it.
    inductor = layer_of(tmp_path / "next-box")["TORCHINDUCTOR_CACHE_DIR"]
    assert (inductor / "fxgraph" / "cd" / "new").read_text() == "compiled by this run"


def test_what_a_discarded_run_compiled_is_deleted(shared: dict[str, Path], tmp_path: Path) -> None:
    box, staged = tmp_path / "box", tmp_path / "runs" / "7-0" / compile_cache.STAGED
    a_run(layer_of(box))
    compile_cache.vouch(staged, compile_cache.harvest(box, staged))
    assert compile_cache.settle([staged], keep=False) == 0
    assert not staged.exists()
    assert not (layer_of(tmp_path / "next-box")["TORCHINDUCTOR_CACHE_DIR"] / "fxgraph" / "cd").exists()


@pytest.mark.parametrize("after", ["plants a file", "edits a file", "no result vouched"])
def test_files_an_agent_adds_to_a_kept_runs_staged_output_do_not_reach_the_shared_cache(
    shared: dict[str, Path], tmp_path: Path, after: str
) -> None:
    """BROKE, fixed: what a run compiled waits in the workspace's state until the verdict, and a coding agent whose
    turn fell meanwhile (several workers, a re-run) could add a file there, or change one: kept, it joined the shared
    cache, for every later run to load (weights dressed up as a kernel). Only what the run's sealed result vouched
    for joins it now; a run whose result said nothing (a loop started again since) adds nothing."""
    box, staged = tmp_path / "box", tmp_path / "runs" / "7-0" / compile_cache.STAGED
    a_run(layer_of(box))
    compiled = compile_cache.harvest(box, staged)
    if after != "no result vouched":
        compile_cache.vouch(staged, compiled)
    if after == "plants a file":
        (staged / "inductor" / "fxgraph" / "ef").mkdir()
        (staged / "inductor" / "fxgraph" / "ef" / "weights").write_bytes(b"trained during the turn")
    elif after == "edits a file":
        (staged / "triton" / "kernel.cubin").write_bytes(b"trained during the turn")
    assert compile_cache.settle([staged], keep=True) == 0
    assert not staged.exists()
    assert not (shared["TORCHINDUCTOR_CACHE_DIR"] / "fxgraph" / "cd").exists()
    assert not (shared["TRITON_CACHE_DIR"] / "kernel.cubin").exists()


def test_links_and_oversized_output_or_too_many_files_are_not_taken(
    shared: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box, staged = tmp_path / "box", tmp_path / "staged"
    inductor = layer_of(box)["TORCHINDUCTOR_CACHE_DIR"]
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("not the run's")
    (inductor / "link-out").symlink_to(secret)
    (inductor / "dir-link").symlink_to(tmp_path, target_is_directory=True)
    compile_cache.vouch(staged, compile_cache.harvest(box, staged))
    assert compile_cache.settle([staged], keep=True) == 0
    assert secret.read_text() == "not the run's"

    monkeypatch.setattr(compile_cache, "MAX_STAGED_BYTES", 10)
    (inductor / "big").write_bytes(b"x" * 11)
    compile_cache.vouch(staged, compile_cache.harvest(box, staged))
    assert compile_cache.settle([staged], keep=True) == 0
    assert not (shared["TORCHINDUCTOR_CACHE_DIR"] / "big").exists()
    (inductor / "big").unlink()

    # Empty files, no bytes: past MAX_STAGED_FILES files and the folders that hold them, none is taken (a kept run's
    # 100,000 slowed every later run).
    monkeypatch.setattr(compile_cache, "MAX_STAGED_FILES", 3)
    monkeypatch.setattr(compile_cache, "MAX_STAGED_BYTES", 3 * compile_cache.BLOCK)  # an empty file counts a block
    for n in range(3):
        (inductor / f"empty{n}").touch()
    (inductor / "a" / "b").mkdir(parents=True)
    (inductor / "a" / "b" / "deep").touch()  # with its two folders: 6
    compile_cache.vouch(staged, compile_cache.harvest(box, staged))
    assert compile_cache.settle([staged], keep=True) == 0
    assert not list(shared["TORCHINDUCTOR_CACHE_DIR"].glob("empty*"))
    remove_tree(inductor / "a")  # three: taken
    compile_cache.vouch(staged, compile_cache.harvest(box, staged))
    assert compile_cache.settle([staged], keep=True) == 3


def test_the_shared_caches_folders_a_run_sees_do_not_count_against_what_it_may_add(
    shared: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's layer holds a copy of every folder of the shared cache (one a Triton kernel): counted as the run's, a
    few nights of honest kept runs brought every later run past the cap, and none added what it compiled (red team)."""
    monkeypatch.setattr(compile_cache, "MAX_STAGED_FILES", 5)
    for n in range(10):
        cached(shared["TRITON_CACHE_DIR"] / f"kernel{n}" / "k.cubin", 10, 1)
    box, staged = tmp_path / "box", tmp_path / "staged"
    triton = layer_of(box)["TRITON_CACHE_DIR"]
    assert len([p for p in triton.iterdir() if p.is_dir()]) == 10
    (triton / "new" / "k.cubin").parent.mkdir()
    (triton / "new" / "k.cubin").write_bytes(b"compiled")  # two: the file and its folder
    compile_cache.vouch(staged, compile_cache.harvest(box, staged))
    assert compile_cache.settle([staged], keep=True) == 1
    assert (shared["TRITON_CACHE_DIR"] / "new" / "k.cubin").read_bytes() == b"compiled"


def test_lock_files_are_neither_taken_nor_linked(shared: dict[str, Path], tmp_path: Path) -> None:
    """Was a break: a run's lock files joined the shared cache and the next run got links to them, which a lock
    cannot be taken through (Inductor on the CPU failed the run: ELOOP)."""
    box, staged = tmp_path / "box", tmp_path / "staged"
    inductor = layer_of(box)["TORCHINDUCTOR_CACHE_DIR"]
    (inductor / "locks").mkdir()
    (inductor / "locks" / "abc.lock").write_text("")
    (inductor / "kernel.py").write_text("compiled")
    compile_cache.vouch(staged, compile_cache.harvest(box, staged))
    assert compile_cache.settle([staged], keep=True) == 1
    assert not (shared["TORCHINDUCTOR_CACHE_DIR"] / "locks" / "abc.lock").exists()
    (shared["TORCHINDUCTOR_CACHE_DIR"] / "locks").mkdir(exist_ok=True)
    (shared["TORCHINDUCTOR_CACHE_DIR"] / "locks" / "left.lock").write_text("")  # by an older version, say
    later = layer_of(tmp_path / "later")["TORCHINDUCTOR_CACHE_DIR"]
    assert (later / "kernel.py").is_symlink() and not (later / "locks" / "left.lock").exists()


def test_a_compile_cache_per_run_sees_nothing_shared_and_adds_nothing(
    shared: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(compile_cache.MODE_ENV, "run")
    box, staged = tmp_path / "box", tmp_path / "staged"
    inductor = layer_of(box)["TORCHINDUCTOR_CACHE_DIR"]
    assert inductor.is_dir() and not any(inductor.iterdir())
    (inductor / "new").write_text("compiled by this run")
    compile_cache.vouch(staged, compile_cache.harvest(box, staged))
    assert compile_cache.settle([staged], keep=True) == 0


@pytest.mark.parametrize("written", ["RUN", " run", "Run\n"])
def test_a_compile_cache_per_run_is_taken_whatever_its_case_and_spaces(
    shared: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: str
) -> None:
    """BROKE, fixed: `run` warned of no unknown value for `AUTORESEARCH_COMPILE_CACHE=RUN` (switches.py ignores case
    and spaces), yet every run read the shared cache: a channel between runs the person meant to close stayed open."""
    monkeypatch.setenv(compile_cache.MODE_ENV, written)
    assert switches.unknown() == []
    inductor = layer_of(tmp_path / "box")["TORCHINDUCTOR_CACHE_DIR"]
    assert inductor.is_dir() and not any(inductor.iterdir())  # nothing shared linked in


@pytest.mark.parametrize("name", list(switches.KNOWN))
def test_every_switch_is_switched_by_what_run_takes_as_its_value(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each switch's readers ask `switches.switched`, which reads a value as `unknown` does (case and spaces ignored):
    BROKE, fixed (helper 146): `AUTORESEARCH_SANDBOX=' off'`, `AUTORESEARCH_PREWARM=' 0'` and the like were warned of
    as known, and switched nothing."""
    switching, default = switches.KNOWN[name]
    for written in (switching, switching.upper(), f" {switching} "):
        monkeypatch.setenv(name, written)
        assert switches.unknown() == [] and switches.switched(name), written
    for written in (default, f" {default.upper()}", ""):
        monkeypatch.setenv(name, written)
        assert switches.unknown() == [] and not switches.switched(name), written
    monkeypatch.delenv(name)
    assert not switches.switched(name)


def test_confinement_switched_off_with_spaces_and_capitals_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from autoresearch.evaluator import sandbox

    monkeypatch.setenv(switches.SANDBOX, " Off ")
    sandbox.unavailable_reason.cache_clear()
    try:
        assert sandbox.unavailable_reason() == "confinement is switched off ($AUTORESEARCH_SANDBOX=off)"
    finally:
        sandbox.unavailable_reason.cache_clear()


def test_an_unconfined_run_uses_the_shared_cache_as_it_is(shared: dict[str, Path], tmp_path: Path) -> None:
    env, binds = compile_cache.layer({}, tmp_path / "box", confined=False)
    assert binds == [] and all(env[name] == str(path) for name, path in shared.items())


def test_the_shared_cache_is_under_the_cache_root_whatever_inductor_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_someone")  # what importing Inductor does
    assert compile_cache.shared_dirs()["TORCHINDUCTOR_CACHE_DIR"] == tmp_path / "compile" / "inductor"


class CompilingExecutor(FakeExecutor):
    """Leaves, beside each run's result, an entry named after its train.py, as the evaluator does (referee.run)."""

    def run(self, spec: RunSpec) -> Outcome:
        outcome = super().run(spec)
        source = self.calls[-1]
        entry = f"lr{constant(source, 'LR')}-seed{constant(source, 'SEED')}"
        staged = spec.run_dir / compile_cache.STAGED
        (staged / "inductor").mkdir(parents=True)
        (staged / "inductor" / entry).write_text("compiled")
        return dataclasses.replace(
            outcome, result=dataclasses.replace(outcome.result, compiled=compile_cache.digest(staged))
        )


def test_the_loop_adds_what_the_baseline_and_kept_changes_compiled_and_deletes_the_rest(
    workspace, shared: dict[str, Path]
) -> None:
    loop = make_loop(workspace, CompilingExecutor(lambda source: 1.0 + (constant(source, "LR") - 0.2) ** 2))
    loop.baseline()
    baseline_lr = constant(workspace.read_train_py(), "LR")
    agent = ScriptedAgent([lambda ctx: ("LR 0.2", with_constants(ctx.train_py, LR=0.2)),
                           lambda ctx: ("LR 0.9", with_constants(ctx.train_py, LR=0.9))])  # fmt: skip
    assert loop.step(agent).status == Status.KEEP
    assert loop.step(agent).status == Status.DISCARD
    shared_names = sorted(p.name for p in shared["TORCHINDUCTOR_CACHE_DIR"].iterdir() if p.is_file())
    assert shared_names == sorted([*(f"lr{baseline_lr}-seed{seed}" for seed in (42, 43, 44)), "lr0.2-seed42"])
    assert not list(workspace.state.glob(f"runs/*/{compile_cache.STAGED}"))  # nothing left behind either way


def test_with_workers_the_baselines_next_seed_finds_what_the_first_compiled(workspace, shared: dict[str, Path]) -> None:
    """Was 40-50 s lost per run on an H200: the scheduler added the baseline's compiled files only once every
    seed was judged, so one worker's second seed, and each change started meanwhile, compiled everything again."""
    found: list[list[str]] = []

    class Recording(CompilingExecutor):
        def run(self, spec: RunSpec) -> Outcome:
            found.append(sorted(p.name for p in shared["TORCHINDUCTOR_CACHE_DIR"].glob("lr*")))
            return super().run(spec)

        def close(self) -> None:
            pass

    loop = make_loop(workspace, FakeExecutor(lambda source: 1.0), baseline_runs=2)
    workers = make_workers(loop, devices("0", None, cores=2), lambda device: Recording(lambda source: 1.0))
    Scheduler(loop, workers, None).run(None, max_experiments=0)
    lr = constant(workspace.read_train_py(), "LR")
    assert found == [[], [f"lr{lr}-seed42"]]


# The baseline's seeds, through the real loop: each leaves an entry in its compile cache and lists what it
# found there, and reads it. The second seed's processes are made while the first trains, before its entry is
# kept, and before the shared cache exists (a fresh cache): was a break where the cache lies under /tmp, the
# sandbox's own there. The link to the entry pointed nowhere, and every run on a fresh machine compiled anew.
SEEDS_COMPILE = """\
    import os
    cache = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    found = sorted(name for name in os.listdir(cache) if name.startswith("seed-"))
    print("FOUND", found, [open(os.path.join(cache, name)).read() for name in found])
    with open(os.path.join(cache, f"seed-{SEED}"), "w") as f:
        f.write("compiled")
"""


@pytest.mark.slow
def test_the_baselines_second_seed_finds_what_the_first_compiled(
    tmp_path: Path, tiny_prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(compile_cache.MODE_ENV, raising=False)
    start = "    run = harness.start()\n"
    ws = make_workspace(tmp_path / "ws", tiny_prepared, BIGRAM_TRAIN_PY.replace(start, start + SEEDS_COMPILE))
    loop = make_loop(ws, LocalExecutor(), baseline_runs=2)  # the next run's processes start early (prewarm)
    assert loop.baseline().status == Status.KEEP
    logs = [(ws.state / "runs" / f"1-{run}" / "log.txt").read_text() for run in (0, 1)]
    assert "FOUND [] []" in logs[0] and "FOUND ['seed-42'] ['compiled']" in logs[1], logs[1]
    assert (tmp_path / "cache" / "compile" / "inductor" / "seed-43").is_file()


def test_the_evaluator_compiles_with_caches_of_its_own_kept_warm_from_run_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_evaluator
) -> None:
    """The evaluator's compilers, the CUDA driver's JIT cache and torch's kernel cache all point into one folder of
    the evaluators' own (never the experiments' shared cache, never ~/.nv or ~/.cache/torch, where an agent could
    write unseen), the same for every evaluator, so that the next evaluation finds its compiled graph (4 s an
    evaluation on an H200). An agent's turn does not see it: test_red_team_agent.py."""
    from autoresearch.evaluator import referee

    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    for name in compile_cache.EVALUATOR_CACHES:  # main sets them in this process's environment: put back after
        monkeypatch.setenv(name, str(tmp_path / "home" / name))
    seen: list[dict[str, str]] = []

    class Seen:
        def __init__(self, train_py: Path, env: dict[str, str], own_group=None):
            self.experiment = None

        def run(self, *args) -> int:
            seen.append({name: os.environ[name] for name in compile_cache.EVALUATOR_CACHES})
            return 0

    monkeypatch.setattr(referee, "Referee", Seen)
    (tmp_path / "train.py").write_text("print(1)\n")
    for _ in range(2):
        assert referee.main(["--train-py", str(tmp_path / "train.py")]) == 0
    first, second = seen
    assert first == second and len(set(first.values())) == len(first)
    mine, shared = compile_cache.evaluator_dir(), list(compile_cache.shared_dirs().values())
    for place in map(Path, first.values()):
        assert place.is_dir() and mine in place.parents and not any(s == place or s in place.parents for s in shared)


@pytest.mark.parametrize("swap", ["a file rewritten", "a folder made a link", "the staged folder made a link"])
def test_what_an_agent_swaps_in_after_the_digest_is_checked_does_not_reach_the_shared_cache(
    shared: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: str
) -> None:
    """BROKE, fixed: `settle` checked the staged files' digest, then moved them, by path, from the workspace's state,
    where an agent whose turn overlaps the verdict (several workers) can write: a file rewritten (or a folder, or
    the staged folder itself, made a link to a copy of its own) between the check and the move joined the shared
    cache unchecked, weights dressed up as a kernel for every later run. What joins it now is a private copy, whose
    digest is checked after it is made."""
    box, staged = tmp_path / "box", tmp_path / "runs" / "7-0" / compile_cache.STAGED
    a_run(layer_of(box))
    compile_cache.vouch(staged, compile_cache.harvest(box, staged))
    forged = tmp_path / "forged"
    real_digest, checked = compile_cache.digest, []

    def digest_then_swap(folder: Path) -> str:
        found = real_digest(folder)
        if not checked:  # the agent's turn, right after the check
            checked.append(folder)
            if swap == "a file rewritten":
                (staged / "triton" / "kernel.cubin").write_bytes(b"trained during the turn")
            else:
                forged.mkdir(exist_ok=True)
                (forged / "kernel.cubin").write_bytes(b"trained during the turn")
                copy = tmp_path / "copy"
                os.rename(staged if swap == "the staged folder made a link" else staged / "triton", copy)
                if swap == "the staged folder made a link":
                    (copy / "triton" / "kernel.cubin").write_bytes(b"trained during the turn")
                    staged.symlink_to(copy, target_is_directory=True)
                else:
                    (staged / "triton").symlink_to(forged, target_is_directory=True)
        return found

    monkeypatch.setattr(compile_cache, "digest", digest_then_swap)
    compile_cache.settle([staged], keep=True)
    kernel = shared["TRITON_CACHE_DIR"] / "kernel.cubin"
    assert not kernel.exists() or kernel.read_bytes() == b"\x7fELF"


def test_the_compile_caches_are_trimmed_oldest_first_to_their_limit_only_where_no_other_evaluator_runs(
    shared: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_evaluator
) -> None:
    """They grew without end: ~60 MB a kept model shape, a few GB a week of nights. An entry is a folder's files (a
    Triton kernel's are one folder), as old as its newest file: a kernel read back yesterday is not the oldest. Empty
    files count too, as a block each, and the folders an entry leaves empty go with it (red team: a kept run's 20,000
    files of one byte, each 8 folders down, took 740 MB of disk counted as 20 KB, and no trim took them)."""
    inductor, triton = shared["TORCHINDUCTOR_CACHE_DIR"], shared["TRITON_CACHE_DIR"]
    os.utime(inductor / "fxgraph" / "ab" / "entry", (time.time() - 5 * 86400,) * 2)  # 24 bytes, 5 days old
    kernel = [cached(triton / "k1" / "k1.cubin", 600, 9), cached(triton / "k1" / "k1.json", 100, 1)]
    evaluators = cached(compile_cache.evaluator_dir() / "inductor" / "xy" / "graph.py", 800, 3)
    newest = cached(triton / "k2" / "k2.cubin", 900, 0.5)
    lock = cached(inductor / "locks" / "a.lock", 50, 10)
    yours = cached(tmp_path / "yours" / "weights.pt", 5000, 20)  # a link in a cache leads there: never followed
    (triton / "k3").symlink_to(yours.parent)
    compile_cache.evaluator_dir().joinpath("triton").symlink_to(yours.parent)  # a whole cache made a link, too
    # Each file counted as a block at least (4,096 bytes): 20,480 are there; past 13,000, the two oldest entries.
    monkeypatch.setenv(compile_cache.LIMIT_ENV, "0.000013")

    other = os.open(compile_cache.evaluator_dir() / compile_cache.IN_USE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(other, fcntl.LOCK_SH)  # another evaluator: its run reads through links to these files
        assert compile_cache.in_use() == 0
        assert (inductor / "fxgraph" / "ab" / "entry").exists() and evaluators.exists()
    finally:
        os.close(other)
        os.close(compile_cache._held)
        compile_cache._held = None

    assert compile_cache.in_use() == 2 * compile_cache.BLOCK  # the two oldest entries, and no more than that
    assert not (inductor / "fxgraph" / "ab" / "entry").exists() and not evaluators.exists()
    assert not (inductor / "fxgraph").exists() and not evaluators.parent.exists()  # the folders they left empty
    assert all(p.exists() for p in [*kernel, newest, lock, yours])
    # It marks them in use now: an evaluator started next finds it so, trims nothing, and goes on.
    monkeypatch.setenv(compile_cache.LIMIT_ENV, "0")
    second = os.open(compile_cache.evaluator_dir() / compile_cache.IN_USE, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(second, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(second)


def test_every_evaluator_marks_the_caches_in_use_and_a_limit_that_is_not_a_size_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], new_evaluator
) -> None:
    from autoresearch.evaluator import referee

    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    for name in compile_cache.EVALUATOR_CACHES:
        monkeypatch.setenv(name, str(tmp_path / "home" / name))
    old = cached(compile_cache.evaluator_dir() / "triton" / "k" / "k.cubin", 100, 1)

    class Scores:
        def __init__(self, train_py: Path, env: dict[str, str], own_group=None):
            self.experiment = None

        def run(self, *args) -> int:
            return 0

    monkeypatch.setattr(referee, "Referee", Scores)
    (tmp_path / "train.py").write_text("print(1)\n")
    monkeypatch.setenv(compile_cache.LIMIT_ENV, "lots")
    assert referee.main(["--train-py", str(tmp_path / "train.py")]) == 2
    assert "AUTORESEARCH_COMPILE_CACHE_GB takes a size in GB (got 'lots')" in capsys.readouterr().err
    assert old.exists()
    monkeypatch.setenv(compile_cache.LIMIT_ENV, "0")
    mark = compile_cache.evaluator_dir() / compile_cache.IN_USE
    mark.symlink_to(tmp_path / "train.py")  # where an agent can write there: never opened through a link
    assert referee.main(["--train-py", str(tmp_path / "train.py")]) == 2
    assert f"cannot open {mark}" in capsys.readouterr().err and old.exists()
    mark.unlink()
    assert referee.main(["--train-py", str(tmp_path / "train.py")]) == 0
    assert not old.exists() and compile_cache._held is not None


def test_a_full_compile_cache_disk_adds_nothing_half_copied_and_the_baselines_seeds_are_recorded(
    workspace, shared: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """BROKE, fixed (red team): with the compile cache on a full disk, copying a seed's compiled files towards the
    shared cache raised ENOSPC out of the loop as a traceback, and the seed, trained, was not recorded (it was
    trained again on the next start). The cache is an optimisation: the loop warns once a seed and goes on, and a
    file half copied never reaches the cache, where later runs would load it."""
    real_open = open

    class HalfWritten:
        def __init__(self, f) -> None:
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.f.close()

        def write(self, data: bytes) -> int:
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return HalfWritten(f) if mode == "xb" else f  # the copy into the cache's disk, not the reading of the run's

    monkeypatch.setattr(compile_cache, "open", full_open, raising=False)
    events: list[str] = []
    loop = make_loop(workspace, CompilingExecutor(lambda source: 1.0), events=events)
    assert loop.baseline().status == Status.KEEP
    assert json.loads(loop.ledger.get(1).runs) == [1.0, 1.0, 1.0]
    warned = [e for e in events if "compile cache" in e and "is full" in e]
    assert len(warned) == 3, events  # one line a seed
    assert not [p for p in compile_cache.shared_root().iterdir() if p.name.startswith(".")]  # no half copies left
    assert not list(shared["TORCHINDUCTOR_CACHE_DIR"].glob("lr*"))
    assert not list(workspace.state.glob(f"runs/*/{compile_cache.STAGED}"))
