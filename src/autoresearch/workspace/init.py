"""`autoresearch init`: a directory with train.py (sized for the preset) and the locked apparatus config."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from autoresearch.errors import ConfigError
from autoresearch.harness.apparatus import CONFIG_NAME, Apparatus
from autoresearch.harness.presets import Preset
from autoresearch.workspace.constants import set_constants


def template(name: str) -> str:
    return resources.files("autoresearch.workspace").joinpath("templates", name).read_text()


def train_py_for(preset: Preset) -> str:
    """The train.py template with the preset's starting model constants filled in."""
    return set_constants(template("train.py"), dict(preset.train_defaults))


def create_workspace(directory: Path, preset: Preset, dataset: str, data_dir: Path, budget: float | None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("train.py", CONFIG_NAME):
        if (directory / name).exists():
            raise ConfigError(f"{directory / name} already exists", hint="choose an empty or new directory")
    (directory / "train.py").write_text(train_py_for(preset))
    Apparatus(
        preset=preset.name,
        dataset=dataset,
        budget_seconds=float(budget if budget is not None else preset.budget_seconds),
        data_dir=str(data_dir.resolve()),
    ).save(directory / CONFIG_NAME)
