"""`autoresearch init`: a git repository with train.py (sized for the preset), program.md and the locked config."""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from pathlib import Path

from autoresearch.config.apparatus import CONFIG_NAME, Apparatus
from autoresearch.config.presets import Preset
from autoresearch.errors import ConfigError
from autoresearch.workspace.constants import set_constants
from autoresearch.workspace.git import Git


def template(name: str) -> str:
    return resources.files("autoresearch.workspace").joinpath("templates", name).read_text()


def train_py_for(preset: Preset) -> str:
    """The train.py template with the preset's starting model constants filled in."""
    return set_constants(template("train.py"), dict(preset.train_defaults))


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


def create_workspace(
    directory: Path, preset: Preset, dataset: str, data_dir: Path, budget: float | None, tag: str | None = None
) -> str:
    """Write the workspace files into `directory`, as the first commit of a git repository on branch
    `autoresearch/<tag>`; returns the branch name."""
    if (directory / ".git").exists():
        raise ConfigError(f"{directory} is already a git repository", hint="choose an empty or new directory")
    write_workspace_files(directory, preset, dataset, data_dir, budget)
    branch = f"autoresearch/{tag or default_tag()}"
    git = Git(directory)
    git.init(branch)
    git.commit(f"workspace: {preset.name} preset, {dataset}", "train.py", "program.md", ".gitignore", CONFIG_NAME)
    return branch


def write_workspace_files(directory: Path, preset: Preset, dataset: str, data_dir: Path, budget: float | None) -> None:
    """train.py, program.md, .gitignore and the locked config (autoresearch.json), without git."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("train.py", CONFIG_NAME):
        if (directory / name).exists():
            raise ConfigError(f"{directory / name} already exists", hint="choose an empty or new directory")
    (directory / "train.py").write_text(train_py_for(preset))
    (directory / "program.md").write_text(template("program.md"))
    (directory / ".gitignore").write_text(GITIGNORE)
    Apparatus(
        preset=preset.name,
        dataset=dataset,
        budget_seconds=float(budget if budget is not None else preset.budget_seconds),
        data_dir=str(data_dir.resolve()),
    ).save(directory / CONFIG_NAME)
