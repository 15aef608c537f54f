"""The few git operations a research workspace needs, through the git command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

from autoresearch.errors import AutoresearchError

IDENTITY = ("-c", "user.name=autoresearch", "-c", "user.email=autoresearch@localhost")


class GitError(AutoresearchError):
    pass


class Git:
    def __init__(self, root: Path):
        self.root = root

    def __call__(self, *args: str, check: bool = True) -> str:
        try:
            proc = subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True)
        except FileNotFoundError:
            raise GitError(
                "git is not installed", hint="install git: the workspace keeps experiments as commits"
            ) from None
        if check and proc.returncode != 0:
            raise GitError(f"git {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def init(self, branch: str) -> None:
        self("init", "-q", "-b", branch)

    def is_repo(self) -> bool:
        return (self.root / ".git").exists()

    def head(self) -> str:
        return self("rev-parse", "HEAD").strip()

    def branch(self) -> str:
        return self("rev-parse", "--abbrev-ref", "HEAD").strip()

    def commit(self, message: str, *paths: str) -> str:
        """Commit `paths` (all tracked changes if none) and return the new commit's hash."""
        if paths:
            self("add", "--", *paths)
        self(*IDENTITY, "commit", "-q", "--no-verify", "-m", message, *(["--", *paths] if paths else ["-a"]))
        return self.head()

    def move_to(self, commit: str, path: str) -> None:
        """Point the branch at `commit` and check out `path` from it; other files in the working tree
        (a program.md being edited, say) are left as they are."""
        self("reset", "-q", "--mixed", commit)
        self("checkout", "-q", commit, "--", path)

    def set_ref(self, ref: str, commit: str) -> None:
        self("update-ref", ref, commit)

    def show(self, commit: str, path: str) -> str:
        return self("show", f"{commit}:{path}")

    def message(self, commit: str) -> str:
        return self("log", "-1", "--format=%s", commit).strip()

    def changed_paths(self) -> set[str]:
        """Tracked files that differ from HEAD, plus untracked files git does not ignore."""
        out = self("status", "--porcelain", "-z", "--untracked-files=all")
        paths = set()
        for entry in out.split("\0"):
            if entry:
                paths.add(entry[3:])
        return paths

    def snapshot(self, exclude: str) -> dict[str, bytes | None]:
        """The content of every changed or untracked file except `exclude` (None: deleted)."""
        out = {}
        for path in self.changed_paths() - {exclude}:
            target = self.root / path
            out[path] = target.read_bytes() if target.is_file() else None
        return out

    def undo_since(self, before: dict[str, bytes | None], exclude: str) -> set[str]:
        """Put back every file (but `exclude`) changed since `snapshot`; returns the paths put back."""
        current = self.snapshot(exclude)
        touched = {p for p in set(before) | set(current) if before.get(p, b"") != current.get(p, b"")}
        tracked = set(filter(None, self("ls-files", "-z").split("\0")))
        for path in touched:
            target = self.root / path
            if path in before:
                if before[path] is None:
                    target.unlink(missing_ok=True)
                else:
                    target.write_bytes(before[path])
            elif path in tracked:
                self("checkout", "-q", "HEAD", "--", path)
            else:
                target.unlink(missing_ok=True)
        return touched
