"""What a confined run is shown of the machine: only what it needs, nothing by default.

A run needs the system's programs and libraries (CUDA's driver among them, and the compiler Inductor and
Triton build with), the dynamic linker's configuration, the user database, and the Python it runs on: the
interpreter's installation and the directories on its `sys.path` (a `pip install --user` site and the folders
.pth files add among them), a conda environment whole, the folders of packages installed in editable mode
through an import hook. Nothing else of the filesystem is shown:
not the home directory, /var/tmp, /opt, /srv, /mnt, /media, /run, other users' homes. Why: an agent has a
shell and the time of its turn; it could train a model there, off the budget, and leave the weights anywhere
it can write for train.py to load (red team, 2026-12-02). What is shown and lies where an agent can write (a
venv in the home, a library directory of LD_LIBRARY_PATH) is checked unchanged around every agent turn
(loop/environment.py); the system's directories are root's.
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from pathlib import Path

# The system's programs and libraries (on a merged-/usr system /bin, /lib... are links into /usr), and /sys,
# which torch and the driver read (CPU topology, PCI devices). Only root writes these.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/sys")
# Of /etc, what the dynamic linker (ld.so.cache: where libcuda and the multiarch libraries are found), the
# C library (the user database, for getpass), the clock and compilers (`cc` is an alternative) read.
SYSTEM_FILES = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/ld.so.preload", "/etc/alternatives",
    "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/localtime", "/etc/timezone", "/etc/os-release",
)  # fmt: skip
# More places a run needs, where a Python or CUDA lives elsewhere (NixOS's /nix/store, a CUDA under /opt): set by
# the person who starts the loop, never by an agent (a run's environment is the loop's).
EXTRA_ENV = "AUTORESEARCH_SANDBOX_READ"
# Of a conda installation (conda, mamba, micromamba, pixi: a prefix with conda-meta/), what is not the environment
# Python runs in: the package cache and, in a base installation, the other environments.
CONDA_NOT_THE_ENVIRONMENT = ("pkgs", "envs")


def python_paths() -> list[Path]:
    """Where this Python and its packages live: the directories on sys.path (the user's site of `pip install
    --user` and what .pth files add among them), of each of the interpreter's prefixes its programs, libraries and
    headers (Triton and Inductor compile against Python.h) and a venv's pyvenv.cfg, or all of it where it is a
    conda environment, the folders of packages installed in editable mode through an import hook, and this
    package's own directory (which may be one of those)."""
    import autoresearch

    paths = {Path(sys.executable).parent, Path(sys.executable).resolve().parent}
    paths |= {Path(p) for p in sys.path[1:] if p}  # not [0]: the current directory, which may be a workspace
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        paths |= {Path(prefix, part) for part in ("bin", "lib", "lib64", "include", "pyvenv.cfg")}
        paths |= set(conda_environment(Path(prefix)))
    paths |= {Path(sysconfig.get_paths()[name]) for name in ("include", "platinclude")}
    paths |= set(editable_paths())
    paths.add(Path(autoresearch.__file__).parent.parent)
    return sorted({p.absolute() for p in paths if p.exists()})


def conda_environment(prefix: Path) -> list[Path]:
    """What of `prefix` is shown besides its bin, lib and include where it is a conda environment: the rest of it,
    but for conda's package cache and other environments (a base installation's pkgs/ and envs/). Its libraries
    are links into it (conda-forge's CUDA: lib/libcudart.so.12 -> ../targets/x86_64-linux/lib/...), its compilers
    run programs and headers of libexec/ and a sysroot of their own. Nothing where it is not one."""
    if not (prefix / "conda-meta").is_dir():
        return []
    return sorted(child for child in prefix.iterdir() if child.name not in CONDA_NOT_THE_ENVIRONMENT)


def editable_paths() -> list[Path]:
    """The folders (a module: its file) of the packages installed in editable mode through an import hook rather
    than a .pth file's line, so not on sys.path: setuptools' (`pip install -e` of a project not laid out in src/:
    module `__editable___NAME_finder`, its MAPPING of top-level names to folders and NAMESPACES) and the editables
    library's (hatchling). Only those: not the project's folder around them (a checkout in the home, with whatever
    else lies there)."""
    from importlib.machinery import all_suffixes

    found: list[Path] = []
    for finder in sys.meta_path:
        module = sys.modules.get(getattr(finder, "__module__", None) or "")
        if module is not None and module.__name__.startswith("__editable__"):
            mapping, namespaces = getattr(module, "MAPPING", None), getattr(module, "NAMESPACES", None)
            for target in map(Path, mapping.values() if isinstance(mapping, dict) else ()):
                # A package's folder; a module's path without its suffix, which the finder adds.
                found += [target] if target.is_dir() else [target.with_suffix(suffix) for suffix in all_suffixes()]
            for folders in namespaces.values() if isinstance(namespaces, dict) else ():
                found += map(Path, folders)
        redirections = getattr(finder, "_redirections", None)  # editables' RedirectingFinder: name -> file
        for target in map(Path, redirections.values() if isinstance(redirections, dict) else ()):
            found.append(target.parent if target.name == "__init__.py" else target)
    return [path for path in found if path.is_absolute() and path.exists()]


def python_environment() -> dict[str, str]:
    """The variables a run needs to find this Python's packages: where the user's site (`pip install --user`) is,
    when it is on sys.path. Python finds it from $HOME, and a run's HOME is its own (the real one is not shown), so
    a run started afresh (not forked), or a Python it starts, would lack it. Nothing where it is not used."""
    import site

    if not site.ENABLE_USER_SITE or os.path.abspath(site.getusersitepackages()) not in map(os.path.abspath, sys.path):
        return {}
    return {"PYTHONUSERBASE": site.getuserbase()}


def unused_site_packages() -> list[Path]:
    """The interpreter's own site-packages where it is not on sys.path (a venv's base Python's): shown with the
    prefix's lib, and hidden again, since the run imports nothing from there (in this project's pyenv Python,
    51,000 files: half of what the environment check would walk)."""
    import site

    on_path = [Path(p).resolve() for p in sys.path if p]
    prefixes = list({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})
    dirs = {Path(d).resolve() for d in site.getsitepackages(prefixes)}
    return sorted(d for d in dirs if d.is_dir() and d not in on_path)


def library_dirs(env: Mapping[str, str]) -> list[Path]:
    """Where the dynamic linker looks besides the system's directories: LD_LIBRARY_PATH (passed to the run) and
    the directories /etc/ld.so.conf names (a driver or CUDA installed under /opt, say)."""
    dirs = [Path(d) for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]
    dirs += _ld_so_conf(Path("/etc/ld.so.conf"), depth=0)
    return [d.resolve() for d in dirs if d.is_absolute() and d.is_dir()]


def _ld_so_conf(path: Path, depth: int) -> list[Path]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    dirs: list[Path] = []
    for line in (line.split("#", 1)[0].strip() for line in lines):
        if line.startswith("include") and depth < 4:  # includes nest; a loop of them must end
            pattern = line.split(None, 1)[1] if " " in line else ""
            pattern = pattern if pattern.startswith("/") else str(path.parent / pattern)
            dirs += [d for name in sorted(glob.glob(pattern)) for d in _ld_so_conf(Path(name), depth + 1)]
        elif line.startswith("/"):
            dirs.append(Path(line))
    return dirs


def extra_paths(env: Mapping[str, str]) -> list[Path]:
    """The places the person listed in $AUTORESEARCH_SANDBOX_READ (colon-separated), where they exist."""
    return [Path(p).resolve() for p in env.get(EXTRA_ENV, "").split(":") if p]


def readable(env: Mapping[str, str]) -> list[Path]:
    """Everything a run is shown read-only besides the system's directories and files (those: `system()`), as
    real paths: bwrap cannot mount through a link (it resolves an absolute one against its own empty root)."""
    paths = {*python_paths(), *library_dirs(env), *extra_paths(env)}
    return sorted({p.resolve() for p in paths if p.exists()})


def links(env: Mapping[str, str], shown: Iterable[Path]) -> list[tuple[Path, str]]:
    """The links (path, target) to make so that each of `readable(env)` is also found at the path Python has for
    it (a venv that is a link to another: sys.path names the link), but for those inside the `shown` directories,
    which are there already."""
    shown = list(shown)
    made: dict[Path, str] = {}
    for path in {*python_paths(), *library_dirs(env), *extra_paths(env)}:
        for _ in range(40):  # as many links as the kernel follows
            link = next((q for q in [*reversed(path.parents), path] if q.is_symlink()), None)
            if link is None:
                break
            target = os.readlink(link)
            if not any(link == d or d in link.parents for d in shown):
                made[link] = target
            path = Path(os.path.normpath(link.parent / target / path.relative_to(link)))
    return sorted(made.items())


def system() -> list[Path]:
    """The system's directories and files that exist here (links among them: /bin -> usr/bin)."""
    return [Path(p) for p in (*SYSTEM_DIRS, *SYSTEM_FILES) if os.path.lexists(p)]


def is_system(path: Path) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in SYSTEM_DIRS)


def outermost(paths: Iterable[Path]) -> list[Path]:
    """`paths` without those that lie inside another of them."""
    ordered = sorted(set(paths), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in ordered:
        if not any(path == k or k in path.parents for k in kept):
            kept.append(path)
    return sorted(kept)


def writable_by_agents(env: Mapping[str, str], exclude: Iterable[Path] = ()) -> list[Path]:
    """What a run is shown that an agent of this user may be able to write: `readable(env)` outside the system's
    directories (root's) and outside `exclude` (the workspace: checked by workspace/integrity.py), outermost only."""
    excluded = [p.resolve() for p in exclude]
    paths = [p.resolve() for p in readable(env)]
    paths = [p for p in paths if not is_system(p) and not any(p == e or e in p.parents for e in excluded)]
    return outermost(paths)
