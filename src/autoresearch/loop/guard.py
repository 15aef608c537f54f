"""Checks a proposed train.py must pass before anything runs: it changed, it parses, it is not only a new seed.

Nothing here guards the metric: train.py runs confined and is scored by another process
(evaluator/), so no spelling of a cheat needs to be caught by reading the source."""

from __future__ import annotations

import difflib

from autoresearch.workspace.constants import parse, read_constants
from autoresearch.workspace.workspace import too_large

MAX_SEED = 2**31 - 1  # any seed torch, numpy and random take, with room for the runs' SEED + k


def rejection(old: str, new: str) -> str | None:
    """Why `new` may not run as an experiment made from `old`, or None if it may."""
    if new == old:
        return "train.py is unchanged"
    if why := too_large(new):
        return why
    try:
        parse(new)
    except SyntaxError as exc:
        return f"train.py is not valid Python: {exc.msg} (line {exc.lineno})"
    except (MemoryError, RecursionError):  # `x = ----...1` 100,000 deep: Python cannot compile it either (red team)
        return "train.py is not valid Python: nested too deeply for Python's parser"
    if only_seed_changed(old, new):
        return "only the random seed changed: a different seed is not an improvement"
    if (why := seed_problem(new)) and not seed_problem(old):
        return f"{why}: keep it such an integer constant, which the loop raises by one for each repeated run"
    return None


def seed_problem(source: str) -> str | None:
    """Why the loop cannot give train.py another seed for each run (how it measures the noise), or None."""
    try:
        seed = read_constants(source).get("SEED")
    except SyntaxError:  # not Python: its run says so
        return None
    if seed is None:
        return "train.py has no SEED constant"
    if type(seed.value) is not int or not 0 <= seed.value <= MAX_SEED:
        return f"train.py's SEED is {seed.text[:40]}, not an integer from 0 to 2**31 - 1"
    return None


def only_seed_changed(old: str, new: str) -> bool:
    """True when the two files differ in the SEED constant's value and nowhere else."""
    try:
        old_seed, new_seed = read_constants(old).get("SEED"), read_constants(new).get("SEED")
    except SyntaxError:
        return False
    if old_seed is None or new_seed is None or old_seed.value == new_seed.value:
        return False
    old_lines, new_lines = old.splitlines(), new.splitlines()
    if len(old_lines) != len(new_lines):
        return False
    differing = [i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b]
    return differing == [new_seed.line - 1]


def fewer_code_lines(old: str, new: str) -> int:
    """How many fewer lines of code `new` has than `old`. Blank lines and comment lines do not count: deleting a
    comment beside a change does not make it simpler."""

    def code(source: str) -> int:
        return sum(1 for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#"))

    return code(old) - code(new)


def diff(old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "a/train.py", "b/train.py"))


def diff_stats(old: str, new: str) -> tuple[int, int]:
    """Lines added and removed going from `old` to `new`."""
    added = removed = 0
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0):
        if line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    return added, removed
