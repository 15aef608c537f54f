"""Read an LLM's answer: a one-line hypothesis and SEARCH/REPLACE blocks, applied to train.py all or nothing.

An answer looks like this (the file name line is optional; the three marker lines must be exactly these):

    Hypothesis: a higher matrix learning rate trains faster in a short budget
    train.py
    <<<<<<< SEARCH
    MATRIX_LR = 0.04  # ...
    =======
    MATRIX_LR = 0.06  # ...
    >>>>>>> REPLACE

Blocks apply in order, each to the text the blocks before it produced. Every SEARCH text must occur exactly
once, as whole lines; lines that differ only in trailing whitespace count as equal, nothing looser does. Any
problem (another file named, a SEARCH text found 0 or several times, no blocks, a result that is not valid
Python) rejects the whole answer with an `EditError` that says what to fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from autoresearch.agents.base import ProposalError

SEARCH, DIVIDER, REPLACE = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"
TARGET = "train.py"
MAX_HYPOTHESIS_CHARS = 300

_HYPOTHESIS = re.compile(r"^[\s>*_#`-]*hypothesis[*_`]*\s*:[*_`]*\s*(?P<text>.*)$", re.IGNORECASE)
_FILE_NAME = re.compile(r"[\w.\-/\\~]+")  # one token with no spaces, e.g. train.py, prepare.py, ../x/train.py


class EditError(ProposalError):
    """The answer cannot be used as it stands; the message is written to be sent back to the model."""


@dataclass(frozen=True)
class Edit:
    search: str  # the exact old lines, newline-terminated
    replace: str  # the new lines, newline-terminated ("" deletes the old lines)
    line: int  # 1-based line of the answer where the block starts, for messages


@dataclass(frozen=True)
class Answer:
    hypothesis: str
    source: str  # the complete new train.py


def parse_answer(text: str, source: str) -> Answer:
    """The hypothesis and the new train.py an answer asks for; raises EditError naming every problem."""
    text = text.replace("\r\n", "\n")
    problems, hypothesis, new_source = [], "", source
    try:
        hypothesis = parse_hypothesis(text)
    except EditError as err:
        problems.append(str(err))
    try:
        new_source = apply_edits(source, parse_edits(text))
    except EditError as err:
        problems.append(str(err))
    if problems:
        raise EditError(problems[0] if len(problems) == 1 else "\n".join(f"- {p}" for p in problems))
    return Answer(hypothesis, new_source)


def parse_hypothesis(text: str) -> str:
    """The text of the first `Hypothesis: ...` line."""
    for line in text.splitlines():
        match = _HYPOTHESIS.match(line)
        if match and match["text"].strip(" *_`"):
            return _clip(match["text"].strip(" *_`"), MAX_HYPOTHESIS_CHARS)
    raise EditError("the answer has no `Hypothesis: ...` line; start the answer with one: `Hypothesis: <one line>`")


def parse_edits(text: str) -> list[Edit]:
    """The SEARCH/REPLACE blocks of an answer, in order. Raises EditError for malformed blocks, for a block
    that names a file other than train.py, and when there are no blocks at all."""
    lines = text.replace("\r\n", "\n").split("\n")
    edits: list[Edit] = []
    i = 0
    while i < len(lines):
        marker = lines[i].rstrip()
        if marker == REPLACE:
            raise EditError(
                f"line {i + 1} of the answer is `{REPLACE}` outside a block; each block starts with `{SEARCH}`"
            )
        if marker != SEARCH:
            i += 1
            continue
        _check_file_name(lines, i, len(edits) + 1)
        divider = _find(lines, i + 1, DIVIDER, forbidden=(SEARCH, REPLACE))
        end = _find(lines, divider + 1, REPLACE, forbidden=(SEARCH, DIVIDER)) if divider >= 0 else -1
        if divider < 0 or end < 0:
            raise EditError(
                f"block {len(edits) + 1} (line {i + 1} of the answer) is incomplete: a block is `{SEARCH}`, the old "
                f"lines, `{DIVIDER}`, the new lines, `{REPLACE}`, each marker on a line of its own"
            )
        edits.append(Edit(_join(lines[i + 1 : divider]), _join(lines[divider + 1 : end]), i + 1))
        i = end + 1
    if not edits:
        raise EditError(
            f"the answer has no SEARCH/REPLACE blocks; change train.py with blocks of the form "
            f"`{SEARCH}` / old lines / `{DIVIDER}` / new lines / `{REPLACE}`"
        )
    return edits


def apply_edits(source: str, edits: list[Edit]) -> str:
    """`source` with every edit applied in order; all or nothing. Raises EditError listing each block that
    does not match exactly once, and when the result is unchanged or not valid Python."""
    lines = source.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    problems = []
    for n, edit in enumerate(edits, 1):
        old = edit.search.splitlines(keepends=True)
        if not old:
            problems.append(
                f"block {n} (line {edit.line} of the answer) has an empty SEARCH part; "
                "quote the exact lines of train.py to replace"
            )
            continue
        starts = _matches(lines, old)
        if len(starts) != 1:
            found = "does not occur in train.py" if not starts else f"occurs {len(starts)} times in train.py"
            fix = (
                "copy the lines exactly as they are in the current train.py"
                if not starts
                else "add neighbouring lines to the SEARCH part until it is unique"
            )
            problems.append(
                f"block {n} (line {edit.line} of the answer, SEARCH starting {_first_line(old)!r}) {found}: {fix}"
            )
            continue
        lines[starts[0] : starts[0] + len(old)] = edit.replace.splitlines(keepends=True)
    if problems:
        raise EditError("the edits were not applied (none of them):\n- " + "\n- ".join(problems))
    new_source = "".join(lines)
    if new_source == source or new_source.rstrip("\n") == source.rstrip("\n"):
        raise EditError("the edits leave train.py unchanged; an experiment must change something")
    try:
        compile(new_source, TARGET, "exec")
    except SyntaxError as err:
        raise EditError(
            f"train.py after the edits is not valid Python: {err.msg} at line {err.lineno}: "
            f"{(err.text or '').strip()!r}"
        ) from None
    return new_source


def _check_file_name(lines: list[str], search_at: int, block: int) -> None:
    """Reject a block whose file-name line (the nearest line above it that is not blank or a code fence)
    names a file other than train.py. Prose lines (with spaces) are not file names."""
    j = search_at - 1
    while j >= 0 and (not lines[j].strip() or lines[j].strip().startswith("```")):
        j -= 1
    if j < 0 or lines[j].rstrip() in (REPLACE, DIVIDER, SEARCH):
        return
    name = lines[j].strip().strip("*`'\"#").strip().rstrip(":").strip("*`'\" ")
    for prefix in ("file:", "filename:", "path:"):
        if name.lower().startswith(prefix):
            name = name[len(prefix) :].strip(" *`'\"")
    if not _FILE_NAME.fullmatch(name) or ("." not in name and "/" not in name and "\\" not in name):
        return
    if name not in (TARGET, "./" + TARGET):
        raise EditError(
            f"block {block} (line {search_at + 1} of the answer) edits {name!r}, but only {TARGET} may be "
            "edited; the data, the evaluation and the workspace config are fixed"
        )


def _find(lines: list[str], start: int, marker: str, forbidden: tuple[str, ...]) -> int:
    """The index of the next `marker` line from `start`, or -1 if a forbidden marker or the end comes first."""
    for k in range(start, len(lines)):
        stripped = lines[k].rstrip()
        if stripped == marker:
            return k
        if stripped in forbidden:
            return -1
    return -1


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _matches(lines: list[str], old: list[str]) -> list[int]:
    """Where `old` occurs as whole lines: exact matches, or failing those, matches ignoring trailing whitespace."""
    span = range(len(lines) - len(old) + 1)
    exact = [s for s in span if lines[s : s + len(old)] == old]
    if exact:
        return exact
    loose = [x.rstrip() for x in old]
    return [s for s in span if [x.rstrip() for x in lines[s : s + len(old)]] == loose]


def _first_line(old: list[str]) -> str:
    return _clip(next((x.strip() for x in old if x.strip()), ""), 60)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
