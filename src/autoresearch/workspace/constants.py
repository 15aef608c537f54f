"""Read and rewrite the ALL_CAPS constants at the top level of train.py, keeping layout and comments.

A constant is a top-level `NAME = <literal>` assignment: a number, string, bool or tuple of those,
optionally written with `**` (as in `2**18`) or `_` separators. Rewriting one replaces only the
text of its value, so the line's comment stays.
"""

from __future__ import annotations

import ast
import functools
import io
import json
import threading
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


# ast.parse is not safe from two threads at once on CPython 3.11 (as here): it failed with "SystemError: AST
# constructor recursion depth mismatch" in this suite, fake workers' threads scoring train.py beside the driver
# parsing it. The scheduler has threads (workers, asks), so every parse of train.py goes through here.
_PARSING = threading.Lock()


def parse(source: str) -> ast.Module:
    """`ast.parse(source)`, one thread at a time."""
    with _PARSING:
        return ast.parse(source)


MAX_POWER_BITS = 4096  # `a ** b` of more bits is no knob's value: 9**9**9 would hold the loop for minutes


def _literal(node: ast.expr) -> Any:
    """The value of a literal expression (allowing `a ** b` and unary minus), else raise ValueError."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exponent = _literal(node.left), _literal(node.right)
        if isinstance(base, int) and isinstance(exponent, int) and base.bit_length() * abs(exponent) > MAX_POWER_BITS:
            raise ValueError(f"a power of {base.bit_length() * abs(exponent)} bits")
        return base**exponent
    return ast.literal_eval(node)


def _lines(source: str) -> list[str]:
    """Lines as Python numbers them (split at LF, CRLF or CR only, unlike str.splitlines), with their ends."""
    return io.StringIO(source, newline="").readlines()


def read_constants(source: str) -> dict[str, Constant]:
    """The editable constants of a train.py source, in file order."""
    return dict(_read(source))  # a dict of its own: a caller may change it


@functools.lru_cache(maxsize=256)
def _read(source: str) -> dict[str, Constant]:
    """Parsed once per train.py, not at every ask: the best's is read again and again, each proposal's several times
    (the guard, the duplicate check, the merge, the combination), ~15 ms each for the 17.7 KB template."""
    lines = _lines(source)
    found: dict[str, Constant] = {}
    for node in parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        if not name.isupper() or node.value.end_lineno != node.lineno:
            continue
        try:
            value = _literal(node.value)
        except (ValueError, TypeError, SyntaxError, ArithmeticError, MemoryError, RecursionError):
            continue  # not a value the loop can read or write: the line is code like any other
        line = lines[node.lineno - 1]
        encoded = line.encode()  # ast gives columns as UTF-8 byte offsets
        start = len(encoded[: node.value.col_offset].decode())
        end = len(encoded[: node.value.end_col_offset].decode())
        rest = line[end:]
        comment = rest.split("#", 1)[1].strip() if "#" in rest else ""
        found[name] = Constant(name, value, line[start:end], comment, node.lineno, start, end)
    return found


def format_value(value: Any) -> str:
    """Python source for a constant's value; powers of two >= 1024 are written as 2**n."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid Python literal, escapes included
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
    lines = _lines(source)
    for name, value in values.items():
        c = constants[name]
        line = lines[c.line - 1]
        lines[c.line - 1] = line[: c.start] + format_value(value) + line[c.end :]
    return "".join(lines)


def changed_constants(base: str, source: str) -> dict[str, Any] | None:
    """The constants `source` sets otherwise than `base`, where that is all it changed (written as
    `set_constants` writes them); None where it changed anything else, or is not Python."""
    try:
        then = read_constants(base)
        changes = {n: c.value for n, c in read_constants(source).items() if n in then and c.value != then[n].value}
        return changes if changes and set_constants(base, changes) == source else None
    except (SyntaxError, ValueError):
        return None
