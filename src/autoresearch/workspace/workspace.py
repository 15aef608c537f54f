"""An existing research workspace: its files, its git repository, its private state directory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from autoresearch.config.apparatus import CONFIG_NAME, Apparatus
from autoresearch.errors import AutoresearchError, ConfigError
from autoresearch.workspace.git import Git

TRAIN_PY = "train.py"


class Workspace:
    def __init__(self, root: Path):
        self.root = root.resolve()
        config = self.root / CONFIG_NAME
        if not config.is_file():
            raise ConfigError(
                f"{self.root} is not a research workspace (no {CONFIG_NAME})",
                hint="make one with `autoresearch init DIR`, then run this command inside it",
            )
        self.config_path = config
        self.apparatus = Apparatus.load(config)
        self.git = Git(self.root)
        if not self.git.is_repo():
            raise ConfigError(f"{self.root} is not a git repository", hint="make workspaces with `autoresearch init`")
        self.state = self.root / ".autoresearch"
        self.state.mkdir(exist_ok=True)

    @property
    def train_py(self) -> Path:
        return self.root / TRAIN_PY

    def read_train_py(self) -> str:
        return self.train_py.read_text()

    def write_train_py(self, source: str) -> None:
        self.train_py.write_text(source)

    def program(self) -> str:
        path = self.root / "program.md"
        return path.read_text() if path.exists() else ""

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Only one loop (or `try`) may work in a workspace at a time."""
        try:
            import fcntl
        except ImportError:  # no locking on Windows
            yield
            return
        with (self.state / "lock").open("w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AutoresearchError(
                    f"another autoresearch process is working in {self.root}",
                    hint="wait for it, or stop it (Ctrl-C) first; `autoresearch status` shows what it runs",
                ) from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def is_locked(self) -> bool:
        try:
            import fcntl
        except ImportError:
            return False
        with (self.state / "lock").open("w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
