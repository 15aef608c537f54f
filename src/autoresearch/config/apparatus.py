"""The locked apparatus config of a research workspace (`autoresearch.json`), written by `init`.

It names the preset, the dataset, the training budget and where the prepared data lives. train.py
never reads or writes it: the evaluator does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from autoresearch.errors import ConfigError
from autoresearch.files import write_json_atomic

CONFIG_NAME = "autoresearch.json"


@dataclass(frozen=True)
class Apparatus:
    preset: str
    dataset: str
    budget_seconds: float
    data_dir: str  # the prepared (dataset, preset) directory, absolute

    def __post_init__(self) -> None:
        if not self.budget_seconds > 0:
            raise ConfigError(f"budget_seconds must be positive, got {self.budget_seconds}")

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> Apparatus:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != known:
            raise ConfigError(
                f"{path} must have exactly the keys {sorted(known)}",
                hint="it is written by `autoresearch init`; do not edit it by hand",
            )
        return cls(**data)
