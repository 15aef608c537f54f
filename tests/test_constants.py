"""Reading and rewriting train.py's constants: only the value changes, the file stays valid Python."""

from __future__ import annotations

import ast
import difflib

import pytest

from autoresearch.errors import ConfigError
from autoresearch.workspace.constants import format_value, read_constants, set_constants
from autoresearch.workspace.init import template

SOURCE = """\
\"\"\"A train.py.\"\"\"
import math

# Model shape
DEPTH = 8  # transformer blocks (2-24)
ASPECT_RATIO    =   64   # odd spacing stays
TOTAL_BATCH_SIZE = 2**18  # tokens per step
ROPE_BASE = 200_000  # rotary base
LR = 0.04  # learning rate
BETAS = (0.8, 0.95)  # AdamW betas
PATTERN = "SSSL"  # window pattern
USE_X = True
NEG = -3  # below zero
TABLE = (
    (1, 2),
)  # spans lines: not an editable constant
DERIVED = DEPTH * 2  # computed: not a constant
lower = 5  # not ALL_CAPS


def f():
    INSIDE = 3  # not top level
    return INSIDE
"""


def test_read_finds_top_level_literal_constants_with_their_text_and_comments() -> None:
    found = read_constants(SOURCE)
    assert list(found) == [
        "DEPTH",
        "ASPECT_RATIO",
        "TOTAL_BATCH_SIZE",
        "ROPE_BASE",
        "LR",
        "BETAS",
        "PATTERN",
        "USE_X",
        "NEG",
    ]
    assert found["TOTAL_BATCH_SIZE"].value == 2**18 and found["TOTAL_BATCH_SIZE"].text == "2**18"
    assert found["ROPE_BASE"].value == 200_000 and found["ROPE_BASE"].text == "200_000"
    assert found["BETAS"].value == (0.8, 0.95)
    assert found["DEPTH"].comment == "transformer blocks (2-24)"
    assert found["ASPECT_RATIO"].comment == "odd spacing stays"
    assert found["USE_X"].comment == ""
    assert found["NEG"].value == -3
    assert found["DEPTH"].line == 5


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def test_set_changes_only_the_value_and_keeps_comments_and_layout() -> None:
    out = set_constants(SOURCE, {"DEPTH": 12, "ASPECT_RATIO": 48, "PATTERN": "SL", "LR": 0.02})
    assert changed_lines(SOURCE, out) == [
        ("DEPTH = 8  # transformer blocks (2-24)\n", "DEPTH = 12  # transformer blocks (2-24)\n"),
        ("ASPECT_RATIO    =   64   # odd spacing stays\n", "ASPECT_RATIO    =   48   # odd spacing stays\n"),
        ("LR = 0.04  # learning rate\n", "LR = 0.02  # learning rate\n"),
        ('PATTERN = "SSSL"  # window pattern\n', 'PATTERN = "SL"  # window pattern\n'),
    ]


def test_setting_nothing_or_the_same_values_changes_nothing() -> None:
    assert set_constants(SOURCE, {}) == SOURCE
    assert set_constants(SOURCE, {"TOTAL_BATCH_SIZE": 2**18, "ROPE_BASE": 200_000}) == SOURCE


def test_an_unknown_constant_is_an_error_and_nothing_is_written() -> None:
    with pytest.raises(ConfigError, match="no constant named DERIVED, NOPE"):
        set_constants(SOURCE, {"DEPTH": 4, "NOPE": 1, "DERIVED": 2})
    for not_editable in ("lower", "INSIDE", "TABLE"):
        with pytest.raises(ConfigError):
            set_constants(SOURCE, {not_editable: 1})


@pytest.mark.parametrize(
    ("value", "text"),
    [(1024, "2**10"), (2**12, "2**12"), (2**18, "2**18"), (2**20, "2**20"), (512, "512"), (3 * 2**12, "12288")],
)
def test_powers_of_two_from_1024_are_written_as_2_to_the_n(value: int, text: str) -> None:
    assert format_value(value) == text
    out = set_constants(SOURCE, {"TOTAL_BATCH_SIZE": value})
    assert f"TOTAL_BATCH_SIZE = {text}  # tokens per step\n" in out


@pytest.mark.parametrize(
    ("value", "text"),
    [(200_000, "200_000"), (99_999, "99999"), (0.5, "0.5"), (1e-4, "0.0001"), (True, "True"), (False, "False"),
     (-7, "-7"), ((0.9, 0.99), "(0.9, 0.99)"), ("SSL", '"SSL"')],
)  # fmt: skip
def test_values_are_written_as_readable_python(value, text: str) -> None:
    assert format_value(value) == text


@pytest.mark.parametrize(
    "value",
    [12, 2**14, 250_000, -1, 0.123, 3e-5, True, (0.8, 0.95), "L", "", 'quote " and \\ backslash', "tab\there",
     "two\nlines", "crlf\r\n", "naïve café ✓", "🎉"],
)  # fmt: skip
def test_set_then_read_gives_back_the_same_value_and_valid_python(value) -> None:
    out = set_constants(SOURCE, {"PATTERN": value})
    ast.parse(out)
    found = read_constants(out)
    assert found["PATTERN"].value == value
    assert found["PATTERN"].comment == "window pattern"
    assert found["LR"].value == 0.04  # its neighbours untouched


def test_non_ascii_text_before_or_in_a_value_does_not_shift_the_edit() -> None:
    source = 'NAME = "héllo"# greeting\nÉTÉ = 1  # saison: été\nX = 2\n'
    assert read_constants(source)["NAME"].comment == "greeting"
    out = set_constants(source, {"NAME": "abc", "ÉTÉ": 2, "X": 3})
    assert out == 'NAME = "abc"# greeting\nÉTÉ = 2  # saison: été\nX = 3\n'


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_line_endings_are_kept(newline: str) -> None:
    source = "# header\nA = 1  # a\nB = 2  # b\n".replace("\n", newline)
    assert set_constants(source, {"B": 5}) == "# header\nA = 1  # a\nB = 5  # b\n".replace("\n", newline)


def test_form_feeds_and_unicode_line_separators_do_not_move_the_edit_to_another_line() -> None:
    source = "# page\x0cbreak\n# odd \u2028 separator\nA = 1  # a\nB = 2\n"
    assert read_constants(source)["A"].comment == "a"
    assert set_constants(source, {"A": 3}) == "# page\x0cbreak\n# odd \u2028 separator\nA = 3  # a\nB = 2\n"


def test_every_constant_of_the_template_says_what_it_does() -> None:
    found = read_constants(template("train.py"))
    assert {"DEPTH", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE", "MATRIX_LR", "SEED"} <= set(found)
    assert [name for name, c in found.items() if not c.comment] == []


def test_the_template_round_trips_through_set_constants_unchanged() -> None:
    source = template("train.py")
    values = {name: c.value for name, c in read_constants(source).items()}
    out = set_constants(source, values)
    assert "".join(difflib.unified_diff(source.splitlines(True), out.splitlines(True))) == ""


def test_a_value_too_big_to_compute_is_read_as_code_at_once() -> None:
    """An agent's `9**9**9` would hold the loop for minutes (and 10.0**400 overflow): not a constant's value."""
    import time

    started = time.monotonic()
    found = read_constants("A = 9**9**9\nB = 10.0**400\nC = (10**1000)**1000\nD = 2**20\nE = 1.5**-2\n")
    assert list(found) == ["D", "E"] and found["D"].value == 2**20
    assert time.monotonic() - started < 1
