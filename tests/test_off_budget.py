"""Weights trained off the budget: an agent has a shell and the time of its turn, so it can train a model there and
leave the weights where its train.py's run could load them (red team, 2026-12-02). The run is shown only what it
needs (evaluator/shown.py; test_sandbox.py checks the view), what it is shown that an agent can write is checked
around every agent turn (loop/environment.py), and a train.py is too small to carry a model's worth of weights.
"""

from __future__ import annotations

import importlib.util
import marshal
import opcode
import os
import py_compile
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest
from loop_support import FakeExecutor, ScriptedAgent, constant, make_loop

from autoresearch import bytecode
from autoresearch.agents.base import Context, Proposal
from autoresearch.agents.tune import TuneAgent
from autoresearch.data.shards import Manifest
from autoresearch.evaluator.fingerprint import fingerprint
from autoresearch.loop import guard
from autoresearch.loop.environment import Environment, differences, signature
from autoresearch.loop.executor import LocalExecutor, RunSpec
from autoresearch.loop.settings import LoopError
from autoresearch.vocabulary import RunEnd, Status
from autoresearch.workspace.workspace import MAX_TRAIN_PY_BYTES

WEIGHTS = b"int8 weights trained during the agent's turn"


def reading(train_py: str, read_from: Path) -> str:
    """`train_py` that reads `read_from` once started, and prints whether it could."""
    reach = (
        "    run = harness.start()\n"
        "    try:\n"
        f"        print('REACHED weights', open({str(read_from)!r}, 'rb').read())\n"
        "    except OSError as exc:\n"
        "        print('blocked weights', type(exc).__name__)\n"
    )
    return train_py.replace("    run = harness.start()\n", reach, 1)


def planting_agent(plant: Path, read_from: Path) -> ScriptedAgent:
    """An agent that leaves weights at `plant` during its turn and proposes a train.py that reads `read_from`."""

    def edit(context: Context) -> tuple[str, str]:
        plant.parent.mkdir(parents=True, exist_ok=True)
        plant.write_bytes(WEIGHTS)
        return "load weights trained elsewhere", reading(context.train_py, read_from)

    return ScriptedAgent([edit])


def watching(workspace, site: Path):
    """A loop past its baseline that checks `site` (where the runs read Python) around each agent's turn."""
    score = FakeExecutor(lambda source: 1.0 + 0.001 * (constant(source, "SEED") % 2))
    loop = make_loop(workspace, score, baseline_runs=2, environment=Environment([site]))
    loop.baseline()
    return loop


def test_a_file_an_agent_leaves_where_the_runs_read_python_stops_the_loop_naming_it(workspace, tmp_path) -> None:
    site = tmp_path / "venv" / "site-packages"  # a venv in the home: on sys.path, so shown to every run
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("")
    loop = watching(workspace, site)
    with pytest.raises(LoopError, match=r"environment the runs read changed .* added .*weights\.bin") as raised:
        loop.step(planting_agent(site / "weights.bin", site / "weights.bin"))
    assert "pip uninstall" in str(raised.value.hint)
    assert [e.status for e in loop.ledger.all()] == [Status.KEEP]  # nothing of the proposal ran or was recorded


def test_tunes_turn_runs_no_program_so_a_change_made_meanwhile_by_someone_else_does_not_stop_the_loop(
    workspace, tmp_path
) -> None:
    site = tmp_path / "venv" / "site-packages"
    site.mkdir(parents=True)

    class Tune(TuneAgent):  # Optuna in the loop's own process, while you `pip install` into the venv
        def propose(self, context: Context) -> Proposal:
            (site / "newpkg.py").write_text("VALUE = 1\n")
            return super().propose(context)

    loop = watching(workspace, site)
    exp = loop.step(Tune())  # not "the environment the runs read changed while the tune agent worked"
    assert exp.description.startswith("tune: ") and exp.status in (Status.KEEP, Status.DISCARD)


def test_a_package_an_agent_installs_or_a_file_it_edits_there_is_a_change_too(tmp_path) -> None:
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "numpy.py").write_text("VALUE = 1\n")
    environment = Environment([site])
    start = environment.start()
    (site / "newpkg-1.0.dist-info").mkdir()  # what `pip install newpkg` leaves
    (site / "newpkg-1.0.dist-info" / "RECORD").write_text("newpkg.py\n")
    (site / "numpy.py").write_text("VALUE = 2\n")  # an installed file rewritten in place
    assert environment.changes(start) == [
        f"added {site / 'newpkg-1.0.dist-info'}",
        f"added {site / 'newpkg-1.0.dist-info/RECORD'}",
        f"changed {site / 'numpy.py'}",
    ]


def test_byte_code_python_writes_is_no_change_but_a_cache_carrying_anything_else_is(tmp_path) -> None:
    # Python writes __pycache__/*.pyc as it imports (the loop's processes; an agent trying train.py in a venv installed
    # without them, as uv leaves it): that is allowed. A cache file with more in it, or other code, is a change.
    (tmp_path / "mod.py").write_text("def f():\n    return 41 + 1\n")
    (tmp_path / "other.py").write_text("X = 1\n")
    before = signature([tmp_path])
    cache = Path(py_compile.compile(str(tmp_path / "mod.py")))
    assert differences(before, signature([tmp_path])) == []
    with cache.open("ab") as file:
        file.write(WEIGHTS)  # the code object, then weights after it
    assert differences(before, signature([tmp_path])) == [f"added {cache}"]
    other = Path(py_compile.compile(str(tmp_path / "other.py")))
    cache.write_bytes(other.read_bytes())  # another source's code under mod's name
    assert differences(before, signature([tmp_path])) == [f"added {cache}"]  # (other's own cache is faithful)
    (tmp_path / "__pycache__" / "weights.pyc").write_bytes(WEIGHTS)  # no source of that name
    assert f"added {tmp_path / '__pycache__' / 'weights.pyc'}" in differences(before, signature([tmp_path]))


def _cache_of(source: Path, code, header: bytes | None = None) -> Path:
    """Write the byte-code cache Python would read for `source`: its header (by default the one Python writes,
    the source's mtime and size), then `code`."""
    stat = source.stat()
    header = header or struct.pack("<III", 0, int(stat.st_mtime) & 0xFFFFFFFF, stat.st_size & 0xFFFFFFFF)
    cache = Path(importlib.util.cache_from_source(str(source)))
    cache.parent.mkdir(exist_ok=True)
    cache.write_bytes(importlib.util.MAGIC_NUMBER + header + marshal.dumps(code))
    return cache


@pytest.mark.parametrize("where", ["co_qualname", "co_stacksize", "a function's co_qualname", "header"])
def test_a_cache_of_its_source_with_weights_where_code_equality_does_not_look_is_a_change(tmp_path, where) -> None:
    # Code objects compare equal whatever their qualified name and stack size, of any length: a run can read the
    # cache file itself (marshal.load) and take weights from there; or from its header's mtime and size. (The file
    # name they compare equal whatever it is too: such a cache is written again, below.)
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    return 41 + 1\n")
    before = signature([tmp_path])
    code = compile(source.read_bytes(), str(source), "exec", dont_inherit=True)
    payload = WEIGHTS.hex() * 100
    if where == "co_qualname":
        code = code.replace(co_qualname=payload)
    elif where == "co_stacksize":
        code = code.replace(co_stacksize=2**31 - 1)
    elif where == "a function's co_qualname":
        inner = code.co_consts[0].replace(co_qualname=payload)
        code = code.replace(co_consts=(inner, *code.co_consts[1:]))
    cache = _cache_of(source, code, header=struct.pack("<III", 0, 0xDEADBEEF, 0xCAFE) if where == "header" else None)
    assert code == compile(source.read_bytes(), str(source), "exec", dont_inherit=True)  # what was checked
    assert differences(before, signature([tmp_path])) == [f"added {cache}"]


def test_a_cache_python_writes_as_it_imports_or_checked_by_hash_is_no_change(tmp_path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    return 41 + 1\n")
    before = signature([tmp_path])
    code = compile(source.read_bytes(), str(source), "exec", dont_inherit=True)
    _cache_of(source, code)
    assert differences(before, signature([tmp_path])) == []
    _cache_of(source, code, header=struct.pack("<I", 3) + importlib.util.source_hash(source.read_bytes()))
    assert differences(before, signature([tmp_path])) == []


@pytest.mark.parametrize(
    "source", ["x = " + "-" * 100_000 + "1\n", "x = a" + ".y" * 100_000 + "\n", "x = 1\n"], ids=["-", ".y", "fifo"]
)
def test_a_cache_that_cannot_be_compared_is_a_change_and_stops_nothing(tmp_path, source) -> None:
    """BROKE, fixed: a source nested 100,000 deep (with a cache whose header names it) made the check's own compile
    raise MemoryError or RecursionError, out of the loop; a FIFO named as its cache made the check wait for ever, and a
    link named so was followed, to a file that could change unseen."""
    path = tmp_path / "mod.py"
    path.write_text(source)
    before = signature([tmp_path])
    cache = _cache_of(path, compile("x = 1\n", str(path), "exec"))
    if source == "x = 1\n":
        cache.unlink()
        os.mkfifo(cache)
        (tmp_path / "link.py").write_text(source)
        Path(importlib.util.cache_from_source(str(tmp_path / "link.py"))).symlink_to(cache)
    assert differences(before, signature([tmp_path])) == sorted(
        f"added {p}" for p in (tmp_path / "__pycache__").iterdir()
    ) + [f"added {tmp_path / 'link.py'}"] * (source == "x = 1\n")


def _plant_in_inline_caches(cache: Path, data: bytes) -> int:
    """Write `data` into the inline caches of the instructions (3.11's CACHE entries) of the byte-code cache `cache`,
    which code objects' `==` does not compare and `co_code` reads as zeros; how many bytes went in."""
    raw = bytearray(cache.read_bytes())
    codes, at, planted = [marshal.loads(raw[16:])], 16, 0
    while codes:
        code = codes.pop(0)
        codes[:0] = [c for c in code.co_consts if isinstance(c, types.CodeType)]  # in the order marshal wrote them
        body = code.co_code
        at = raw.index(struct.pack("<i", len(body)) + body, at) + 4
        i = 0
        while i < len(body):
            entries = 2 * opcode._inline_cache_entries[body[i]]
            for k in range(min(entries, len(data) - planted)):
                raw[at + i + 2 + k] = data[planted]
                planted += 1
            i += 2 + entries
        at += len(body)
    cache.write_bytes(raw)
    return planted


def _plant(where: str, source: Path, cache: Path, outside: Path) -> None:
    """Data of a turn's in or on `source`'s cache `cache`, which stays its source's code; `outside`: a folder the
    check does not watch."""
    if where == "inline caches":
        assert _plant_in_inline_caches(cache, WEIGHTS * 4) == len(WEIGHTS) * 4
    elif where == "its name for the source":  # through a link elsewhere, named with the data, removed afterwards
        link = outside / WEIGHTS.hex()
        link.symlink_to(source.parent)
        code = compile(source.read_bytes(), str(link / source.name), "exec", dont_inherit=True)
        cache.write_bytes(cache.read_bytes()[:16] + marshal.dumps(code))
        link.unlink()
    elif where == "its header's kind":
        py_compile.compile(str(source), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    elif where == "times and mode":
        os.utime(cache, ns=(123456789, 987654321))
        os.chmod(cache, 0o601)
    else:
        os.setxattr(cache, "user.weights", WEIGHTS * 40)


@pytest.mark.parametrize(
    "where",
    ["inline caches", "its name for the source", "its header's kind", "times and mode", "an extended attribute"],
)
def test_a_cache_of_its_source_is_written_again_as_an_import_writes_it(tmp_path, where) -> None:
    """BROKE, fixed (red teams): a cache that is its source's code carried data where its code's equality does not
    look: in the inline caches of 3.11's instructions (every byte of them), in the path it names its source by (any
    number of folders of a link elsewhere, named with the data: KiB a cache), in its header's kind, its times, its
    mode, its extended attributes. Now such a cache is replaced by the file an import writes; the next turn starts
    from it as it is then."""
    venv, outside = tmp_path / "venv", tmp_path / "outside"
    venv.mkdir()
    outside.mkdir()
    source = venv / "mod.py"
    source.write_text("def f(x):\n    return [x.real + len(str(x)) for _ in range(3)]\n" * 20)
    environment = Environment([venv])
    start = environment.start()
    cache = Path(py_compile.compile(str(source)))
    try:
        _plant(where, source, cache, outside)
    except OSError as error:  # no user extended attributes on this file system
        pytest.skip(str(error))
    assert environment.changes(start) == []
    code = compile(source.read_bytes(), str(source), "exec", dont_inherit=True)
    stat = source.stat()
    header = struct.pack("<III", 0, int(stat.st_mtime), stat.st_size)
    assert cache.read_bytes() == importlib.util.MAGIC_NUMBER + header + marshal.dumps(code)
    assert os.listxattr(cache) == [] and cache.stat().st_mode & 0o777 == (stat.st_mode | 0o200) & 0o666
    assert cache.stat().st_mtime_ns > stat.st_mtime_ns
    written = cache.stat().st_ino
    assert environment.changes(environment.start()) == [] and cache.stat().st_ino == written  # not written again


@pytest.mark.parametrize("entry", ["{venv}/sub/..", "{venv}/./"])
def test_a_cache_an_import_writes_through_a_path_not_normalised_is_no_change(tmp_path, entry) -> None:
    """BROKE, fixed (red team): a program that puts `dirname(__file__)/..` on sys.path (an idiom) imported a module
    whose cache named `.../sub/../mod.py`, which the check refused: an innocent import stopped the loop."""
    venv = tmp_path / "venv"
    (venv / "sub").mkdir(parents=True)
    (venv / "mod.py").write_text("X = 1\n")
    environment = Environment([venv])
    start = environment.start()
    imports = f"import sys; sys.path.insert(0, {entry.format(venv=venv)!r}); import mod"
    writes = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", imports], check=True, env=writes)
    assert Path(importlib.util.cache_from_source(str(venv / "mod.py"))).exists()
    assert environment.changes(start) == []


def test_a_cache_marshal_refuses_or_a_link_named_as_one_is_a_change_and_stops_nothing(tmp_path) -> None:
    """BROKE, fixed (red team): a code object with a negative count made marshal raise SystemError, out of the check;
    and a link named as a cache, to a folder (`/`), was walked as the check took the signature of what it wrote."""
    venv, outside = tmp_path / "venv", tmp_path / "outside"
    venv.mkdir()
    outside.mkdir()
    (outside / "f").touch()
    (venv / "mod.py").write_text("X = 1\n")
    environment = Environment([venv])
    start = environment.start()
    cache = Path(py_compile.compile(str(venv / "mod.py")))
    raw = bytearray(cache.read_bytes())
    raw[16 + 1 + 4 : 16 + 1 + 8] = struct.pack("<i", -1)  # the code object's posonlyargcount
    cache.write_bytes(raw)
    link = Path(importlib.util.cache_from_source(str(venv / "link.py")))
    link.symlink_to(outside)
    assert environment.changes(start) == [f"added {link}", f"added {cache}"]
    assert str(link / "f") not in environment.start()


@pytest.mark.parametrize("name", ["mod.{data}.pyc", "mod.{tag}.opt-99999999999999999999.pyc", "mod.{tag}.opt-3.pyc"])
def test_a_copy_of_a_faithful_cache_under_a_name_python_does_not_give_it_is_a_change(tmp_path, name) -> None:
    """BROKE, fixed (red team): importlib takes `mod.<anything>.pyc` for mod.py's cache, so copies of a faithful one
    under names that carry data passed; an optimisation level past a C int was an OverflowError out of the loop."""
    source = tmp_path / "mod.py"
    source.write_text("X = 1\n")
    before = signature([tmp_path])
    cache = Path(py_compile.compile(str(source)))
    other = cache.with_name(name.format(data=WEIGHTS.hex(), tag=sys.implementation.cache_tag))
    os.link(cache, other)
    assert differences(before, signature([tmp_path])) == [f"added {other}"]


@pytest.mark.parametrize(
    "how", [{"PYTHONNODEBUGRANGES": "1"}, {"PYTHONINTMAXSTRDIGITS": "0"}], ids=["columns", "digits"]
)
def test_a_cache_an_import_writes_under_other_settings_is_no_change(tmp_path, how) -> None:
    """BROKE, fixed (red team): a process without debug ranges compiles no column table, and one with the int digit
    limit raised compiles a literal of 5,000 digits: the check compiled otherwise, and their caches stopped the loop."""
    venv = tmp_path / "venv"
    venv.mkdir()
    literal = "7" * (5000 if "PYTHONINTMAXSTRDIGITS" in how else 4)
    (venv / "mod.py").write_text(f"def f(x):\n    return x.a + x.b + {literal}\n")
    environment = Environment([venv])
    start = environment.start()
    writes = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | how
    subprocess.run([sys.executable, "-c", "import mod"], check=True, env=writes | {"PYTHONPATH": str(venv)})
    assert Path(importlib.util.cache_from_source(str(venv / "mod.py"))).exists()
    assert environment.changes(start) == []


def test_a_cache_that_claims_16_gib_is_a_change_judged_in_bounded_memory(tmp_path) -> None:
    """BROKE, fixed (red team): marshal makes the tuple a cache says it holds before it reads an item; 21 bytes
    claimed 16 GiB, zeroed (or, nested, more than the machine holds), in the loop's own process. Caches are judged in a
    process of their own now, its address space bounded."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / "mod.py").write_text("X = 1\n")
    environment = Environment([venv])
    start = environment.start()
    cache = Path(py_compile.compile(str(venv / "mod.py")))
    cache.write_bytes(cache.read_bytes()[:16] + b"(" + struct.pack("<i", 2**31 - 1))
    began = time.monotonic()
    assert environment.changes(start) == [f"added {cache}"]
    assert time.monotonic() - began < 10


def test_folders_a_turn_adds_or_marks_are_a_change_but_a_cache_folder_python_makes_is_not(tmp_path) -> None:
    """BROKE, fixed (red team): folders were not recorded, so an empty one named with data (255 bytes a name, as many
    as the turn likes), a folder's extended attributes (a block) and its mode carried data past the check. A folder's
    times still change as Python writes a cache in it, and are not compared: a few bytes a folder."""
    venv = tmp_path / "venv"
    (venv / "pkg").mkdir(parents=True)
    (venv / "pkg" / "mod.py").write_text("X = 1\n")
    environment = Environment([venv])
    start = environment.start()
    py_compile.compile(str(venv / "pkg" / "mod.py"))  # makes pkg/__pycache__, and moves pkg's times
    (venv / WEIGHTS.hex()).mkdir()
    os.chmod(venv / "pkg", 0o751)
    assert environment.changes(start) == [f"added {venv / WEIGHTS.hex()}", f"changed {venv / 'pkg'}"]
    start = environment.start()
    try:
        os.setxattr(venv / "pkg" / "__pycache__", "user.weights", WEIGHTS)
    except OSError as error:
        pytest.skip(f"no user extended attributes here: {error}")
    assert environment.changes(start) == [f"changed {venv / 'pkg' / '__pycache__'}"]


def test_a_folders_times_and_a_cache_folders_mode_carry_nothing_past_the_check(tmp_path) -> None:
    """BROKE, fixed (red team): a folder's mtime and atime (one far in the future, which no read moves) carried 14
    bytes a folder, and a cache folder a turn made, any mode. A folder whose ctime moved has its times set to now, and
    a cache folder made, its parent's mode."""
    venv = tmp_path / "venv"
    (venv / "pkg").mkdir(parents=True)
    os.chmod(venv / "pkg", 0o750)
    environment = Environment([venv])
    start = environment.start()
    os.utime(venv / "pkg", ns=(1 << 62, 123456789012345678))
    (venv / "pkg" / "__pycache__").mkdir()
    os.chmod(venv / "pkg" / "__pycache__", 0o7421)
    began = time.time_ns()
    assert environment.changes(start) == []
    for folder in (venv / "pkg", venv / "pkg" / "__pycache__"):
        st = os.stat(folder)
        assert began <= st.st_mtime_ns and st.st_atime_ns <= time.time_ns() and stat.S_IMODE(st.st_mode) == 0o750
    assert environment.changes(environment.start()) == []


def test_what_the_walk_cannot_reach_is_a_change(tmp_path) -> None:
    """BROKE, fixed (red team): cache folders within cache folders were let be, and past PATH_MAX the walk could list
    nothing: 512 KiB of files 352 folders down were never seen. A cache folder within another is a change now, and so
    is a folder the walk cannot list or read."""
    venv = tmp_path / "venv"
    venv.mkdir()
    environment = Environment([venv])
    start = environment.start()
    fd = os.open(venv, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(4200 // len("__pycache__/") + 2):
        os.mkdir("__pycache__", dir_fd=fd)
        below = os.open("__pycache__", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    with open(os.open("weights.bin", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as file:
        file.write(WEIGHTS)
    os.close(fd)
    try:
        found = environment.changes(start)
        assert f"added {venv / '__pycache__' / '__pycache__'}" in found
        assert any(len(line) > 4096 for line in found)  # where the walk stopped, named
    finally:  # not left for other tests' walks of the temporary folders (rglob fails past PATH_MAX)
        shutil.rmtree(venv / "__pycache__")


def test_a_cache_folder_python_makes_under_a_default_access_list_is_no_change(tmp_path) -> None:
    """BROKE, fixed (red team): in a venv a group shares through a default access list (`setfacl -d`), the __pycache__
    an import makes inherits it, an extended attribute, and the check stopped the loop. Now such a folder is let be,
    without the lists (whose entries could carry data)."""
    venv = tmp_path / "venv"
    (venv / "pkg").mkdir(parents=True)
    (venv / "pkg" / "mod.py").write_text("X = 1\n")
    entries = [(0x01, 7), (0x04, 5), (0x20, 5)]  # user::rwx, group::r-x, other::r-x
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in entries)
    try:
        os.setxattr(venv / "pkg", "system.posix_acl_default", acl)
    except OSError as error:
        pytest.skip(f"no access lists here: {error}")
    environment = Environment([venv])
    start = environment.start()
    writes = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "import pkg.mod"], cwd=venv, env=writes, check=True)
    assert os.listxattr(venv / "pkg" / "__pycache__")
    assert environment.changes(start) == [] and os.listxattr(venv / "pkg" / "__pycache__") == []


def test_the_process_that_judges_caches_reads_the_standard_library_first(tmp_path) -> None:
    """BROKE, fixed (red team): it put the package's folder first on its path; where that is site-packages, a
    backport there (enum34's enum, without IntFlag: `re` failed to import) shadowed the standard library, and no
    cache was vouched for: every cache an import wrote stopped the loop."""
    site = tmp_path / "site-packages"
    shutil.copytree(Path(bytecode.__file__).parent, site / "autoresearch", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "enum").mkdir()  # as enum34 installs it
    (site / "enum" / "__init__.py").write_text("class Enum:\n    pass\n")
    (tmp_path / "m.py").write_text("Y = 2\n")
    cache = py_compile.compile(str(tmp_path / "m.py"))
    probe = f"import sys; sys.path.append({str(site)!r}); from autoresearch import bytecode; "
    probe += f"print(bytecode.vouched([{cache!r}]))"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, check=True).stdout
    assert cache in out


def test_a_judge_stopped_mid_write_leaves_nothing_beside_the_caches(tmp_path, monkeypatch) -> None:
    """BROKE, fixed: the process that judges caches writes each anew beside it, then renames it over it; stopped between
    the two (its time limit, a Ctrl-C), it left that file in a folder runs read, where the next check found a file
    no one wrote and stopped the loop, blaming the agent. What a judge stopped left is removed; nothing else is."""
    (tmp_path / "m.py").write_text("Y = 2\n")
    cache = Path(py_compile.compile(str(tmp_path / "m.py")))
    left = cache.with_name(cache.name + bytecode.TEMPORARY + "k3x9_q2a")  # as `_write` names its new file
    yours = cache.with_name(cache.name + ".bak")
    left.write_bytes(b"half")
    yours.write_bytes(b"mine")
    monkeypatch.setattr(bytecode, "JUDGE_TIMEOUT_S", 0.001)  # stopped before it judged anything
    assert bytecode.vouched([str(cache)]) == set()
    assert not left.exists() and yours.read_bytes() == b"mine" and cache.exists()
    monkeypatch.setattr(bytecode, "JUDGE_TIMEOUT_S", 60)
    assert bytecode.vouched([str(cache)]) == {str(cache)}
    assert sorted(p.name for p in cache.parent.iterdir()) == sorted([cache.name, yours.name])


def test_a_pth_file_a_turn_adds_to_the_venv_runs_nothing_in_the_process_that_judges_caches(tmp_path) -> None:
    """BROKE, fixed (red team): the process that judges caches started with `site`, during the check, so a .pth file a
    turn added to a venv it can write (one in the workspace) ran there, as you, outside the turn's confinement, before
    the check said "added ...pth". It starts without `site` now."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(subprocess.run([python, "-c", where], capture_output=True, text=True, check=True).stdout.strip())
    (site / "autoresearch.pth").write_text(str(Path(bytecode.__file__).parents[1]) + "\n")  # this package
    (site / "mod.py").write_text("X = 1\n")
    ran = tmp_path / "ran"
    turn = f"""
from pathlib import Path
from autoresearch.loop.environment import Environment
environment = Environment([Path({str(site)!r})])
start = environment.start()
Path({str(site / "zz.pth")!r}).write_text("import pathlib; pathlib.Path({str(ran)!r}).touch()\\n")  # the turn's
Path({str(site / "__pycache__")!r}).mkdir()
Path({str(site / "__pycache__" / "mod.pyc")!r}).write_bytes(b"any cache, for the judge to start")
print(environment.changes(start))
"""
    out = subprocess.run([python, "-c", turn], capture_output=True, text=True, check=True).stdout
    assert "zz.pth" in out and not ran.exists()


def test_a_file_left_in_the_shared_compile_cache_is_a_change_but_the_loops_own_additions_between_turns_are_not(
    tmp_path,
) -> None:
    cache = tmp_path / "compile" / "inductor"
    cache.mkdir(parents=True)
    environment = Environment([tmp_path / "venv"], fresh=[cache])
    assert environment.changes(environment.start()) == []
    (cache / "kept-run-kernel.py").write_text("# what the loop adds when a run is kept, between turns\n")
    start = environment.start()
    (cache / "fxgraph-weights").write_bytes(WEIGHTS)  # during the turn
    assert environment.changes(start) == [f"added {cache / 'fxgraph-weights'}"]


def test_what_runs_do_not_see_is_not_walked(tmp_path) -> None:
    hidden = tmp_path / "lib" / "python3" / "site-packages"  # the base Python's, not on sys.path: hidden in runs
    hidden.mkdir(parents=True)
    environment = Environment([tmp_path], skip=[hidden])
    start = environment.start()
    (hidden / "weights.bin").write_bytes(WEIGHTS)
    (tmp_path / "lib" / "weights.bin").write_bytes(WEIGHTS)
    assert environment.changes(start) == [f"added {tmp_path / 'lib' / 'weights.bin'}"]


def test_each_turn_walks_the_environment_once(tmp_path, monkeypatch) -> None:
    import autoresearch.loop.environment as module

    walks = []
    monkeypatch.setattr(module, "signature", lambda roots, skip=(): walks.extend(roots) or {})
    environment = Environment([tmp_path])
    for _ in range(3):  # a turn starts where the last one ended: one walk each, and one at the first start
        assert environment.changes(environment.start()) == []
    assert len(walks) == 4


def test_a_train_py_over_256_kib_is_rejected_before_anything_runs(workspace) -> None:
    best = workspace.read_train_py()
    padded = best + "# " + "x" * (MAX_TRAIN_PY_BYTES - len(best.encode())) + "\n"  # just over, in a comment
    assert "over the 256 KiB a train.py may be" in guard.rejection(best, padded)
    assert guard.rejection(best, best + "# a comment\n") is None


def test_a_baseline_over_256_kib_is_refused(workspace) -> None:
    workspace.write_train_py(workspace.read_train_py() + "#" * MAX_TRAIN_PY_BYTES + "\n")
    workspace.git.commit("weights in a comment", "train.py")
    loop = make_loop(
        workspace, FakeExecutor(lambda source: 1.0 + 0.001 * (constant(source, "SEED") % 2)), baseline_runs=2
    )
    with pytest.raises(LoopError, match=r"baseline's train.py is \d+ KiB, over the 256 KiB"):
        loop.baseline()


@pytest.mark.slow
def test_weights_an_agent_leaves_in_the_home_or_var_tmp_cannot_be_read_by_its_run(workspace) -> None:
    # One run tries both places, trained as the loop's executor trains an experiment: what a run can read is the
    # evaluator's sandbox, whatever the baseline (a baseline of two real runs here took 10-16 s).
    base = Path(tempfile.mkdtemp(prefix="autoresearch-off-budget-", dir="/var/tmp"))  # outside the private /tmp
    plants = (base / "home" / ".cache" / "weights.bin", base / "weights.bin")
    source = workspace.read_train_py()
    try:
        for plant in plants:  # left as an agent's turn would leave them
            plant.parent.mkdir(parents=True, exist_ok=True)
            plant.write_bytes(WEIGHTS)
            source = reading(source, plant)
        manifest = Manifest.load(Path(workspace.apparatus.data_dir) / "manifest.json")
        spec = RunSpec(workspace.root, workspace.state / "runs" / "2-0", 120,
                       fingerprint(workspace.apparatus, manifest), code=source.encode())  # fmt: skip
        executor = LocalExecutor(prewarm=False)
        try:
            outcome = executor.run(spec)
        finally:
            executor.close()
        log = (spec.run_dir / "log.txt").read_text()
        assert outcome.status == RunEnd.OK, outcome.reason + log
        for plant in plants:
            assert plant.read_bytes() == WEIGHTS  # it is there, outside
        assert log.count("blocked weights FileNotFoundError") == 2 and "REACHED" not in log, log
    finally:
        shutil.rmtree(base)  # /var/tmp outlives the session


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_a_user_site_packages_an_agent_makes_where_none_was_is_a_change(tmp_path, monkeypatch) -> None:
    """BROKE, fixed: outside a venv Python reads the user's site-packages (~/.local/lib/python3.X/site-packages)
    where it exists, and runs its .pth files and usercustomize.py in every process it starts: the evaluators, the
    fork server, the loop's next start. Where it did not exist when the loop started it was on no sys.path, so
    not watched, and an agent could make it in its turn, code for every later evaluator to run unconfined."""
    import site

    user_site = tmp_path / "home" / ".local" / "lib" / "python3" / "site-packages"
    monkeypatch.setattr(site, "ENABLE_USER_SITE", True)
    monkeypatch.setattr(site, "USER_SITE", str(user_site))
    environment = Environment.of_runs({}, tmp_path / "workspace")
    start = environment.start()
    user_site.mkdir(parents=True)
    (user_site / "usercustomize.py").write_text("import autoresearch.evaluator.score  # and change it\n")
    assert environment.changes(start) == [f"added {user_site / 'usercustomize.py'}"]


def test_the_ray_warning_about_an_agents_shell_is_not_given_for_tune() -> None:
    """BROKE, fixed: `run --ray` with the default agent, on a cluster without token authentication, warned that
    "the tune agent, whose shell shares this machine's network" could send the cluster a task: tune has no shell."""
    from autoresearch.loop.ray_cluster import open_to_agent

    assert open_to_agent(TuneAgent()) is None


def test_a_ctrl_c_while_the_loop_leaves_ray_takes_effect_once_ray_has_stopped() -> None:
    """BROKE, fixed (a README walk-through): a second Ctrl-C during Ray's own shutdown at exit (a second or two for
    a Ray of the loop's own) printed a traceback ("Exception ignored in atexit callback") and left two of Ray's
    processes running. The loop leaves Ray itself, and a Ctrl-C meanwhile is the usual "interrupted" after. (In a
    process of its own: signals are held back in a main thread, which a test under xdist does not run in.)"""
    code = """
import signal
from autoresearch.loop import ray_cluster
signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal (a job started with & ignores it)
stopped = []
class Ray:  # a Ray whose shutdown the person interrupts
    def is_initialized(self):
        return not stopped
    def shutdown(self):
        signal.raise_signal(signal.SIGINT)
        stopped.append("all of it")
ray_cluster.ray_module = Ray
try:
    ray_cluster.disconnect()
except KeyboardInterrupt:
    print("interrupted after", stopped)
ray_cluster.disconnect()  # no Ray left: nothing to do
print("done")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout == "interrupted after ['all of it']\ndone\n", done.stdout + done.stderr
