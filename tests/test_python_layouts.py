"""The Python a confined run is shown (evaluator/shown.py), for the ways researchers install one.

Each test builds a layout for real in a fake home (a venv, a user site, packages installed in editable mode), runs
a Python of that layout as the evaluator would, which makes the sandbox's command from what it finds of itself, and
runs a snippet confined in it: what the layout holds must import, what else lies in the home must stay unreadable.
Small stand-ins take the place of torch (a module; a shared library). These tests fail (never skip) when
bubblewrap cannot confine here, as tests/test_sandbox.py's do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import autoresearch
from autoresearch.evaluator import sandbox

SECRET = "WEIGHTS-LEFT-IN-THE-HOME-5c1e"
# A Python outside any venv (this one's base, where the tests run in a venv): its user site is enabled.
BASE_PYTHON = getattr(sys, "_base_executable", None) or sys.executable

# Run by the layout's Python, as the evaluator is: the confined command made from what that Python finds of itself,
# and what the loop's environment check watches of it (loop/environment.py).
DRIVER = """
import json, os, subprocess, sys
from pathlib import Path
from autoresearch.evaluator import sandbox, shown
box, code, *args = sys.argv[1:]
argv = sandbox.command([sys.executable, "-c", code, *args], workdir=Path(box), env=os.environ, gpu=False)
run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
watched = [str(path) for path in shown.writable_by_agents(os.environ)]
print(json.dumps({"code": run.returncode, "out": run.stdout, "err": run.stderr, "watched": watched}))
"""

# Run confined: imports each module named in argv[1] (its VALUE), reads each path after it.
IMPORT_AND_READ = """
import importlib, json, sys
out = {}
for name in sys.argv[1].split(","):
    try:
        out[name] = importlib.import_module(name).VALUE
    except (ImportError, OSError) as error:  # editables' finder names a file that may not be there
        out[name] = type(error).__name__
for path in sys.argv[2:]:
    try:
        out[path] = open(path).read()
    except OSError:
        out[path] = "unreadable"
print(json.dumps(out))
"""

# Written as setuptools writes it for `pip install -e` of a project not laid out in src/ (a flat layout): the
# .pth imports it, and it finds the project's top-level names in its folder, which is not on sys.path.
SETUPTOOLS_FINDER = """
import sys
from importlib.machinery import all_suffixes
from importlib.util import spec_from_file_location
from pathlib import Path

MAPPING: dict[str, str] = {mapping!r}
NAMESPACES: dict[str, list[str]] = {{}}


class _EditableFinder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname not in MAPPING:
            return None
        candidate = Path(MAPPING[fullname])
        for file in [candidate / "__init__.py", *(candidate.with_suffix(suffix) for suffix in all_suffixes())]:
            if file.exists():
                return spec_from_file_location(fullname, file)
        return None


def install():
    if _EditableFinder not in sys.meta_path:
        sys.meta_path.append(_EditableFinder)
"""

# The editables library's finder (hatchling's editable installs in exact mode), as its .pth installs it.
EDITABLES_FINDER = """
import importlib.util
import sys


class RedirectingFinder:
    _redirections = {redirections!r}

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if "." in fullname or path is not None or fullname not in cls._redirections:
            return None
        return importlib.util.spec_from_file_location(fullname, cls._redirections[fullname])


if RedirectingFinder not in sys.meta_path:
    sys.meta_path.append(RedirectingFinder)
"""


@pytest.fixture(autouse=True)
def _confinement_works() -> None:
    reason = sandbox.unavailable_reason()
    if reason is not None:
        pytest.fail(f"the sandbox does not work on this machine: {reason}")


@pytest.fixture
def home() -> Iterator[Path]:
    # Outside /tmp, as a home is: the run's private /tmp would hide it for the wrong reason.
    base = Path(tempfile.mkdtemp(prefix="autoresearch-layout-test-", dir="/var/tmp"))
    (base / "home").mkdir()
    (base / "home" / "weights.bin").write_text(SECRET)
    (base / "box").mkdir()
    yield base / "home"
    shutil.rmtree(base)


def python_env(home: Path) -> dict[str, str]:
    """The environment of the user's shell, as far as it matters here; autoresearch from this checkout."""
    src = str(Path(autoresearch.__file__).parent.parent)
    return {"HOME": str(home), "PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "PYTHONPATH": src}


def ask(python: Path | str, home: Path, code: str) -> str:
    """What `code` prints, run by `python` in the user's environment."""
    return subprocess.run([python, "-c", code], env=python_env(home), capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def confined(python: Path | str, home: Path, code: str, *args: object) -> dict:
    """`code` run confined as the evaluator of `python` would run it: its output (JSON) and what is watched."""
    box = home.parent / "box"
    driver = subprocess.run([python, "-c", DRIVER, box, code, *map(str, args)], env=python_env(home),
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert driver.returncode == 0, driver.stderr
    result = json.loads(driver.stdout)
    assert result["code"] == 0, result["err"]
    return {**json.loads(result["out"]), "watched": result["watched"]}


def venv(path: Path, *options: str) -> Path:
    subprocess.run([BASE_PYTHON, "-m", "venv", "--without-pip", *options, path], check=True)
    return path / "bin" / "python"


@pytest.mark.parametrize("layout", ["python", "venv --system-site-packages"])
def test_a_user_site_and_the_folders_its_pth_files_add_are_importable_but_not_the_rest_of_the_home(
    home: Path, layout: str
) -> None:
    # `pip install --user`: packages in ~/.local/lib/pythonX.Y/site-packages, which Python finds from $HOME. A run's
    # HOME is its own (/tmp), so a run started afresh, or a Python it starts, did not find them: torch was
    # "ModuleNotFoundError: No module named 'torch'".
    python = BASE_PYTHON if layout == "python" else venv(home / "venvs" / "research", "--system-site-packages")
    user_site = Path(ask(python, home, "import site; print(site.getusersitepackages())"))
    user_site.mkdir(parents=True)
    (user_site / "usermod.py").write_text("VALUE = 'from the user site'\n")
    (home / "extra").mkdir()
    (home / "extra" / "extramod.py").write_text("VALUE = 'from a folder a .pth adds'\n")
    (user_site / "extra.pth").write_text(f"{home / 'extra'}\n")
    (home / ".local" / "weights.bin").write_text(SECRET)
    secrets = [home / "weights.bin", home / ".local" / "weights.bin"]
    out = confined(python, home, IMPORT_AND_READ, "usermod,extramod", *secrets)
    assert out["usermod"] == "from the user site"
    assert out["extramod"] == "from a folder a .pth adds"
    assert [out[str(path)] for path in secrets] == ["unreadable", "unreadable"]


def test_packages_installed_editable_through_an_import_hook_are_importable_but_not_their_projects_folder(
    home: Path,
) -> None:
    # `pip install -e` of a flat project: setuptools installs a finder that maps the project's names to its folder,
    # which is not on sys.path, so it was not shown: "ModuleNotFoundError: No module named 'flatpkg'".
    python = venv(home / "venvs" / "dev")
    site_packages = Path(ask(python, home, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    project = home / "code" / "flatproj"
    (project / "flatpkg").mkdir(parents=True)
    (project / "flatpkg" / "__init__.py").write_text("VALUE = 'an editable package'\n")
    (project / "flatmod.py").write_text("VALUE = 'an editable module'\n")
    (project / "weights.bin").write_text(SECRET)  # beside the package, in the project's folder
    mapping = {"flatpkg": str(project / "flatpkg"), "flatmod": str(project / "flatmod")}  # a module: no suffix
    (site_packages / "__editable___flatpkg_0_1_finder.py").write_text(SETUPTOOLS_FINDER.format(mapping=mapping))
    (site_packages / "__editable__.flatpkg-0.1.pth").write_text(
        "import __editable___flatpkg_0_1_finder; __editable___flatpkg_0_1_finder.install()\n"
    )
    hatched = home / "code" / "hatchproj" / "hatchpkg"
    hatched.mkdir(parents=True)
    (hatched / "__init__.py").write_text("VALUE = 'an editable package of hatchling'\n")
    redirections = {"hatchpkg": str(hatched / "__init__.py")}
    (site_packages / "_hatchpkg.py").write_text(EDITABLES_FINDER.format(redirections=redirections))
    (site_packages / "_hatchpkg.pth").write_text("import _hatchpkg\n")
    out = confined(python, home, IMPORT_AND_READ, "flatpkg,flatmod,hatchpkg", project / "weights.bin")
    assert [out["flatpkg"], out["flatmod"], out["hatchpkg"]] == [
        "an editable package", "an editable module", "an editable package of hatchling"
    ]  # fmt: skip
    assert out[str(project / "weights.bin")] == "unreadable"
    # What a run reads of them an agent could change: the loop checks it unchanged around every turn.
    assert {str(project / "flatpkg"), str(project / "flatmod.py"), str(hatched)} <= set(out["watched"])


@pytest.mark.parametrize("prefix", ["miniconda3/envs/research", "miniconda3"])
def test_a_conda_environment_is_shown_whole_but_for_condas_package_cache_and_other_environments(
    home: Path, prefix: str
) -> None:
    # conda-forge's CUDA libraries lie in the environment's targets/x86_64-linux/lib, with links to them in its lib,
    # where torch's RPATH finds them: only bin, lib and include were shown, so the links led nowhere and torch was
    # "ImportError: libcudart.so.12: cannot open shared object file". Stand-ins: a venv with conda-meta/ is the
    # environment (a base installation when it holds pkgs/ and envs/), an extension module of Python's the library.
    conda = home / "miniconda3"
    (conda / "pkgs").mkdir(parents=True)
    (conda / "pkgs" / "weights.bin").write_text(SECRET)
    (conda / "envs" / "other").mkdir(parents=True)
    (conda / "envs" / "other" / "weights.bin").write_text(SECRET)
    environment = home / prefix
    python = venv(environment)
    (environment / "conda-meta").mkdir()
    targets = environment / "targets" / "x86_64-linux" / "lib"
    targets.mkdir(parents=True)
    import _ctypes

    shutil.copy(_ctypes.__file__, targets / "libstandin.so.12")
    (environment / "lib" / "libstandin.so.12").symlink_to("../targets/x86_64-linux/lib/libstandin.so.12")
    code = (
        "import ctypes, json, os, sys\n"
        "out = {}\n"
        "try:\n"
        "    ctypes.CDLL(os.path.join(sys.prefix, 'lib', 'libstandin.so.12'))\n"
        "    out['library'] = 'loaded'\n"
        "except OSError as error:\n"
        "    out['library'] = str(error)\n"
        "out['secrets'] = [open(path).read() if os.path.exists(path) else 'absent' for path in sys.argv[1:]]\n"
        "print(json.dumps(out))\n"
    )
    out = confined(python, home, code, home / "weights.bin", conda / "pkgs" / "weights.bin",
                   conda / "envs" / "other" / "weights.bin")  # fmt: skip
    assert out["library"] == "loaded"
    assert out["secrets"] == ["absent", "absent", "absent"]


def test_a_venv_of_copies_on_a_python_outside_usr_runs_with_its_own_packages(home: Path) -> None:
    # A relocated Python (/opt/python3.11, pyenv's; here: this one's base, outside /usr where the tests run in a
    # pyenv) and a venv of copies of it in the home: the interpreter and its standard library are found through
    # the venv's pyvenv.cfg, its packages on sys.path.
    python = venv(home / "venvs" / "copies", "--copies")
    site_packages = Path(ask(python, home, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    (site_packages / "venvmod.py").write_text("VALUE = 'from the venv'\n")
    out = confined(python, home, IMPORT_AND_READ, "venvmod", home / "weights.bin")
    assert out["venvmod"] == "from the venv"
    assert out[str(home / "weights.bin")] == "unreadable"


def test_a_venv_reached_through_a_link_is_never_taken_for_a_corpus_to_hide(home: Path) -> None:
    """BROKE, fixed (a user's walk through the README): `.venv` a link to another checkout's venv, a python-source
    workspace's corpus (named by its real path at `prepare`) was the venv's own site-packages, which Python run
    through the link imports from by the link's path. The run hid it as raw corpus, and torch's lazy imports failed
    in every `python train.py`."""
    real = venv(home / "elsewhere" / ".venv").parent.parent
    (home / "project").mkdir()
    (home / "project" / ".venv").symlink_to(real)
    python = home / "project" / ".venv" / "bin" / "python"
    site_packages = ask(python, home, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    assert not Path(site_packages).is_relative_to(real)  # Python names it by the link
    (Path(site_packages) / "venvmod.py").write_text("VALUE = 'from the venv'\n")
    needed = (
        "from pathlib import Path; from autoresearch.evaluator.sandbox import python_needs; "
        f"print(python_needs(Path({site_packages!r}).resolve()), python_needs(Path({str(home)!r})))"
    )
    assert ask(python, home, needed) == "True False"
    out = confined(python, home, IMPORT_AND_READ, "venvmod", home / "weights.bin")
    assert out["venvmod"] == "from the venv" and out[str(home / "weights.bin")] == "unreadable"
