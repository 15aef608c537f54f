"""Checks a proposed train.py must pass before anything runs."""

from __future__ import annotations

import ast
import difflib
import re

from autoresearch.workspace.constants import read_constants

# What train.py may not mention: the loop's private channel to the harness and the result file.
FORBIDDEN = (
    (re.compile(r"AUTORESEARCH_"), "reads the loop's private environment variables"),
    (re.compile(r"result\.json|results\.tsv|ledger\.sqlite"), "touches the result files"),
    (re.compile(r"\bval(idation)?[-_.]?(rows|shard|bin)\b|\bval\.bin\b"), "touches the validation data"),
)


def rejection(old: str, new: str) -> str | None:
    """Why `new` may not run as an experiment made from `old`, or None if it may."""
    if new == old:
        return "train.py is unchanged"
    try:
        tree = ast.parse(new)
    except SyntaxError as exc:
        return f"train.py is not valid Python: {exc.msg} (line {exc.lineno})"
    for pattern, what in FORBIDDEN:
        if pattern.search(new) and not pattern.search(old):
            return f"train.py {what}: only the harness may"
    for node in ast.walk(tree):
        if _imports_more_than_harness(node):
            return "train.py may import only `from autoresearch import harness`"
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and _base_name(node) in ("run", "harness"):
            return f"train.py reaches into the harness's private `{node.attr}`"
    if only_seed_changed(old, new):
        return "only the random seed changed: a different seed is not an improvement"
    return None


def _imports_more_than_harness(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(alias.name.startswith("autoresearch") for alias in node.names)
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("autoresearch"):
        return node.module != "autoresearch" or any(alias.name != "harness" for alias in node.names)
    return False


def _base_name(node: ast.Attribute) -> str | None:
    value = node.value
    while isinstance(value, ast.Attribute):
        value = value.value
    return value.id if isinstance(value, ast.Name) else None


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
