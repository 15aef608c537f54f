"""Read and rewrite the ALL_CAPS constants at the top level of train.py, keeping layout and comments.

A constant is a top-level `NAME = <literal>` assignment: a number, string, bool or tuple of those,
optionally written with `**` (as in `2**18`) or `_` separators. Rewriting one replaces only the
text of its value, so the line's comment stays.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from autoresearch.errors import ConfigError


@dataclass(frozen=True)
class Constant:
    name: str
    value: Any
    text: str  # the value as written, e.g. "2**18"
    comment: str  # the line's trailing comment, without '#'
    line: int  # 1-based
    start: int  # column span of the value on that line
    end: int


def _literal(node: ast.expr) -> Any:
    """The value of a literal expression (allowing `a ** b` and unary minus), else raise ValueError."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return _literal(node.left) ** _literal(node.right)
    return ast.literal_eval(node)


def read_constants(source: str) -> dict[str, Constant]:
    """The editable constants of a train.py source, in file order."""
    lines = source.splitlines()
    found: dict[str, Constant] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        if not name.isupper() or node.value.end_lineno != node.lineno:
            continue
        try:
            value = _literal(node.value)
        except (ValueError, TypeError, SyntaxError):
            continue
        line = lines[node.lineno - 1]
        rest = line[node.value.end_col_offset :]
        comment = rest.split("#", 1)[1].strip() if "#" in rest else ""
        found[name] = Constant(
            name,
            value,
            line[node.value.col_offset : node.value.end_col_offset],
            comment,
            node.lineno,
            node.value.col_offset,
            node.value.end_col_offset,
        )
    return found


def format_value(value: Any) -> str:
    """Python source for a constant's value; powers of two >= 1024 are written as 2**n."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool) or not isinstance(value, int):
        return repr(value)
    if value >= 1024 and value & (value - 1) == 0:
        return f"2**{value.bit_length() - 1}"
    return f"{value:_}" if abs(value) >= 100_000 else str(value)


def set_constants(source: str, values: dict[str, Any]) -> str:
    """`source` with the named constants set to `values`; an unknown name is an error."""
    constants = read_constants(source)
    unknown = sorted(set(values) - set(constants))
    if unknown:
        raise ConfigError(f"train.py has no constant named {', '.join(unknown)}")
    lines = source.splitlines(keepends=True)
    for name, value in values.items():
        c = constants[name]
        line = lines[c.line - 1]
        lines[c.line - 1] = line[: c.start] + format_value(value) + line[c.end :]
    return "".join(lines)
