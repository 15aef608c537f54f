"""The locked apparatus config of a research workspace (`autoresearch.json`), written by `init`.

It names the preset, the dataset, the training budget and where the prepared data lives. train.py
never reads or writes it: the evaluator does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from autoresearch.errors import ConfigError
from autoresearch.files import write_json_atomic

CONFIG_NAME = "autoresearch.json"
# The budgets `init` accepts: under a second nothing trains; past a day the loop would do one experiment.
MIN_BUDGET_SECONDS = 1.0
MAX_BUDGET_SECONDS = 24 * 3600.0


def check_budget(seconds: float) -> float:
    """`seconds` if it is a budget `init` accepts, else ConfigError."""
    if not (math.isfinite(seconds) and MIN_BUDGET_SECONDS <= seconds <= MAX_BUDGET_SECONDS):
        raise ConfigError(
            f"the budget must be between {MIN_BUDGET_SECONDS:g} and {MAX_BUDGET_SECONDS:g} seconds, got {seconds:g}",
            hint="give --budget in seconds of training per experiment, e.g. --budget 60 (or leave it out: "
            "the preset's default)",
        )
    return seconds


def budget_argument(text: str) -> float:
    """argparse `type` for --budget: the number of seconds, checked, so a bad one stops before any work."""
    try:
        return check_budget(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


@dataclass(frozen=True)
class Apparatus:
    preset: str
    dataset: str
    budget_seconds: float
    data_dir: str  # the prepared (dataset, preset) directory, absolute

    def __post_init__(self) -> None:
        if not all(isinstance(value, str) for value in (self.preset, self.dataset, self.data_dir)):
            raise ConfigError("preset, dataset and data_dir must be strings")
        budget = self.budget_seconds
        number = isinstance(budget, int | float) and not isinstance(budget, bool)
        if not (number and math.isfinite(budget) and budget > 0):
            raise ConfigError(f"budget_seconds must be a positive number of seconds, got {budget!r}")

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> Apparatus:
        restore = f"it is written by `autoresearch init` and committed: `git checkout {CONFIG_NAME}` puts it back"
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # garbled, or bytes that are no UTF-8 text
            raise ConfigError(f"cannot read {path}: {exc}", hint=restore) from exc
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != known:
            raise ConfigError(f"{path} must have exactly the keys {sorted(known)}", hint=restore)
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}", hint=restore) from None


def prepare_again_hint(a: Apparatus) -> str:
    """How to make the data a workspace reads again, where it reads it: into the cache it was prepared in (the one
    of today's $AUTORESEARCH_CACHE may be another) and, for python-source, from the same Python's files."""
    path = Path(a.data_dir)
    if len(path.parents) < 3 or path.parents[1].name != "data":  # not <cache>/data/<dataset>/<preset>, as `prepare`
        # makes and `init` writes: autoresearch.json was edited by hand (it has no cache to name)
        return (
            "autoresearch.json's data_dir is no folder `autoresearch prepare` makes: put the file back (`git checkout "
            f"autoresearch.json`), or make a new workspace, whose data `autoresearch init DIR --dataset "
            f"{shlex.quote(a.dataset)} --preset {a.preset}` prepares again"
        )
    cache = path.parents[2]  # <cache>/data/<dataset>/<preset>
    # python-source of a tree of one's own (`--root DIR`) is prepared into python-source-<DIR's name>-<digest>, the
    # Python's own files into python-source-<digest>: autoresearch.json does not hold DIR, its folder's name does.
    root = re.fullmatch(r"python-source-(.+)-[0-9a-f]{8}", path.parent.name)
    tree = " --root DIR" if a.dataset == "python-source" and root else ""
    shards, note = _shards_option(a)
    dataset, where = shlex.quote(a.dataset), shlex.quote(str(cache))  # a folder named with a space: one argument
    prepare = f"autoresearch prepare --dataset {dataset}{tree}{shards} --preset {a.preset} --cache-dir {where}"
    hint = f"prepare it again: `{prepare}`{note}"
    if tree:
        hint += f", DIR being the folder named {shlex.quote(root[1])} the workspace was made from (`init --root DIR`)"
    elif a.dataset == "python-source":
        hint += " with the Python the workspace was made with (another Python's files are another corpus)"
    return hint + "; the same corpus gives the same data, another one a new workspace"


def _shards_option(a: Apparatus) -> tuple[str, str]:
    """` --shards N` for a workspace on a hub dataset, whose data holds as many training shards as it was made with
    (without it `prepare` makes the default count: other data, and the workspace refuses it as another apparatus),
    and a note on N where the manifest that says it is gone; ("", "") for another dataset."""
    from autoresearch.data.sources.hub import HUB_DATASETS

    if a.dataset not in HUB_DATASETS:
        return "", ""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        shards = json.loads((Path(a.data_dir) / "manifest.json").read_text())["dataset"]["request"]["shards"]
        if isinstance(shards, int):
            return f" --shards {shards}", ""
    default = HUB_DATASETS[a.dataset].default_shards
    return " --shards N", f", N being the training shards the workspace was made with (`init --shards N`, or {default})"
