"""`autoresearch init`: a git repository with train.py (sized for the preset), program.md and the locked config.

Everything is checked before anything is written (`check_init`): the budget, the directory (new or empty),
and that this machine can run the preset. A failure while writing removes what was written.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from datetime import datetime
from importlib import resources
from pathlib import Path

from autoresearch.config.apparatus import CONFIG_NAME, Apparatus, check_budget
from autoresearch.config.presets import Preset
from autoresearch.errors import ConfigError
from autoresearch.evaluator.cores import DEVICE_ENV
from autoresearch.workspace.constants import set_constants
from autoresearch.workspace.disk import disk_full_is_an_error
from autoresearch.workspace.git import Git, program
from autoresearch.workspace.workspace import workspace_above

log = logging.getLogger(__name__)
INIT_AGAIN = "what it had written is removed: run the same `autoresearch init` again (the prepared data is kept)"


def template(name: str) -> str:
    return resources.files("autoresearch.workspace").joinpath("templates", name).read_text()


def train_py_for(preset: Preset, compile_model: bool = True) -> str:
    """The train.py template with the preset's starting model constants filled in (and COMPILE)."""
    return set_constants(template("train.py"), {**preset.train_defaults, "COMPILE": compile_model})


def trains_on_cpu(preset: Preset) -> bool:
    """Whether python train.py will pick the CPU here (as autoresearch.device.pick_device does)."""
    if preset.needs_cuda:
        return False
    if forced := os.environ.get(DEVICE_ENV):
        return forced == "cpu"
    import torch  # only for a preset that may train on the CPU

    return not torch.cuda.is_available() and not torch.backends.mps.is_available()


def cpu_compiler_missing() -> str | None:
    """Why torch.compile cannot build train.py's model for the CPU here, or None: Inductor compiles C++ with
    $CXX (else g++, clang++ on macOS) against Python's headers."""
    compiler = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler}) is on PATH"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.is_file():
        return f"Python's C headers are missing ({headers})"
    return None


# Files the loop writes that are not part of any experiment.
GITIGNORE = """results.tsv
result.json
progress.png
report.md
.autoresearch/
__pycache__/
"""


def default_tag() -> str:
    return datetime.now().strftime("%b%d").lower()


def check_directory(directory: Path) -> None:
    """A workspace is made in a new or empty directory only: never among files of the user's own."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} already exists and is not a directory", hint=_elsewhere(directory))
    try:
        held = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    except OSError as err:
        raise ConfigError(f"cannot read {directory}: {err.strerror}", hint=_elsewhere(directory)) from None
    if held:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise ConfigError(f"{directory} already exists and is not empty (it holds {shown})", hint=_elsewhere(directory))
    # Inside another workspace, the new one is a file of its experiments that is not train.py: every step there
    # would be refused for it (a user's walk through the README).
    if outer := workspace_above(directory.absolute()):
        raise ConfigError(
            f"{directory} lies inside the workspace {outer}, where only train.py may change",
            hint=f"make it outside, e.g. `autoresearch init {outer.parent / Path(os.path.abspath(directory)).name}`",
        )
    _check_makeable(directory)


def _check_makeable(directory: Path) -> None:
    """A new directory must be one that can be made (under a file, in /proc or a read-only mount it cannot): made
    and removed again here, so that init says so before it prepares any data rather than with a traceback after."""
    created = _highest_missing(directory)
    if created is None:
        return
    try:
        created.mkdir()
    except OSError as err:
        raise ConfigError(
            f"cannot make {directory}: {err.strerror} ({created})",
            hint="give init a directory in a folder you can write, e.g. under your home",
        ) from None
    created.rmdir()


def _elsewhere(directory: Path) -> str:
    if directory.name in ("", ".."):  # `.`, `..`, `/`: named by where they are, as with_name cannot take them
        directory = Path(os.path.abspath(directory))
    if not directory.name:  # the root: no folder beside it
        return "init never writes among other files: choose a new directory"
    free = next(
        directory.with_name(f"{directory.name}-{n}")
        for n in range(2, 1000)
        if not directory.with_name(f"{directory.name}-{n}").exists()
    )
    return f"init never writes among other files: choose a new directory, e.g. `autoresearch init {free}`"


def cuda_available() -> bool:
    import torch  # only for a preset that needs CUDA

    return torch.cuda.is_available()


def check_device(preset: Preset) -> None:
    """Refuse a preset sized for a GPU where train.py would not get one (no CUDA, or AUTORESEARCH_DEVICE
    names another device): its train.py would run out of memory or take hours per step."""
    if not preset.needs_cuda:
        return
    forced = os.environ.get(DEVICE_ENV, "")
    if forced and not forced.startswith("cuda"):
        why = f"{DEVICE_ENV}={forced} sends train.py to another device"
    elif not cuda_available():
        why = "this machine has no CUDA GPU"
    else:
        return
    raise ConfigError(
        f"the {preset.name} preset needs a CUDA GPU and {why}",
        hint="use --preset tiny here, or run init on the GPU machine",
    )


def check_tag(tag: str) -> None:
    """The branch `autoresearch/<tag>` must be a name git accepts (and git must be installed)."""
    try:
        proc = subprocess.run([program(), "check-ref-format", f"refs/heads/autoresearch/{tag}"], capture_output=True)
    except FileNotFoundError:
        raise ConfigError(
            "git is not installed", hint="install git: the workspace keeps experiments as commits"
        ) from None
    if proc.returncode != 0 or not tag.strip():
        raise ConfigError(
            f"--tag {tag!r} cannot name a git branch", hint="use letters, digits, - and _, e.g. --tag nov22"
        )


def check_init(directory: Path, preset: Preset, budget: float | None, tag: str | None = None) -> None:
    """Everything `init` can check before it writes anything; ConfigError on the first problem."""
    if budget is not None:
        check_budget(budget)
    check_tag(tag or default_tag())
    check_directory(directory)
    check_device(preset)


def create_workspace(
    directory: Path, preset: Preset, dataset: str, data_dir: Path, budget: float | None, tag: str | None = None
) -> str:
    """Write the workspace files into `directory`, as the first commit of a git repository on branch
    `autoresearch/<tag>`; returns the branch name. Checks first (`check_init`); if writing fails, what
    was written is removed again."""
    check_init(directory, preset, budget, tag)
    if dataset.startswith("local:"):  # `local:corpus`, relative: the hint to prepare it again is pasted elsewhere
        dataset = f"local:{Path(dataset.removeprefix('local:')).expanduser().resolve()}"  # as the data's manifest
    created = _highest_missing(directory)
    try:
        with disk_full_is_an_error(f"writing the workspace in {directory}", INIT_AGAIN):
            write_workspace_files(directory, preset, dataset, data_dir, budget)
            branch = f"autoresearch/{tag or default_tag()}"
            git = Git(directory)
            git.init(branch)
            git.commit(
                f"workspace: {preset.name} preset, {dataset}", "train.py", "program.md", ".gitignore", CONFIG_NAME
            )
    except BaseException:  # Ctrl-C too: a half-made workspace would be refused by the next init
        _undo(directory, created)
        raise
    return branch


def _highest_missing(directory: Path) -> Path | None:
    """The outermost of `directory` and its parents that does not exist yet (None: the directory exists)."""
    missing = None
    for path in (directory, *directory.absolute().parents):
        if path.exists():
            return missing
        missing = path
    return missing


def _undo(directory: Path, created: Path | None) -> None:
    """Remove what a failed init made: the directories it created, or the contents of the empty one it was given."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for path in directory.iterdir() if directory.is_dir() else []:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def write_workspace_files(directory: Path, preset: Preset, dataset: str, data_dir: Path, budget: float | None) -> None:
    """train.py, program.md, .gitignore and the locked config (autoresearch.json), without git."""
    for name in ("train.py", CONFIG_NAME):
        if (directory / name).exists():
            raise ConfigError(f"{directory / name} already exists", hint="choose an empty or new directory")
    apparatus = Apparatus(  # checks the budget before anything is written
        preset=preset.name,
        dataset=dataset,
        budget_seconds=float(budget if budget is not None else preset.budget_seconds),
        data_dir=str(data_dir.resolve()),
    )
    missing = cpu_compiler_missing() if trains_on_cpu(preset) else None
    if missing:
        log.warning(
            "%s, so train.py is set not to compile its model (COMPILE = False): on the CPU a compiled model trains "
            "~1.45x the steps. Install one (Debian/Ubuntu: apt-get install g++ python3-dev) and set COMPILE = True.",
            missing,
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.py").write_text(train_py_for(preset, compile_model=not missing))
    (directory / "program.md").write_text(template("program.md"))
    (directory / ".gitignore").write_text(GITIGNORE)
    apparatus.save(directory / CONFIG_NAME)
