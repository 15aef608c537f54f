"""SEARCH/REPLACE answers: parsed strictly, applied to train.py all or nothing, with reasons a model can act on."""

from __future__ import annotations

from importlib import resources

import pytest

from autoresearch.agents.base import ProposalError
from autoresearch.agents.edits import EditError, apply_edits, parse_answer, parse_edits, parse_hypothesis

TRAIN_PY = resources.files("autoresearch.workspace").joinpath("templates", "train.py").read_text()


def block(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


LR_OLD = "MATRIX_LR = 0.04  # Muon learning rate for the matrices inside the blocks (0.01-0.1)"
LR_NEW = "MATRIX_LR = 0.06  # Muon learning rate for the matrices inside the blocks (0.01-0.1)"
DEPTH_OLD = "DEPTH = 8  # transformer blocks (2-24); the width follows from ASPECT_RATIO"
DEPTH_NEW = "DEPTH = 10  # transformer blocks (2-24); the width follows from ASPECT_RATIO"


def test_good_answer_changes_only_the_searched_lines_and_gives_the_hypothesis() -> None:
    answer = "Hypothesis: a higher Muon LR trains faster in a short budget\n\ntrain.py\n" + block(LR_OLD, LR_NEW)
    result = parse_answer(answer, TRAIN_PY)
    assert result.hypothesis == "a higher Muon LR trains faster in a short budget"
    assert result.source == TRAIN_PY.replace(LR_OLD, LR_NEW)


def test_blocks_in_code_fences_with_file_name_and_markdown_hypothesis() -> None:
    answer = (
        "**Hypothesis:** deeper and faster\n\nSome reasoning here.\n\n`train.py`\n```python\n"
        + block(DEPTH_OLD, DEPTH_NEW)
        + "```\n\ntrain.py:\n```\n"
        + block(LR_OLD, LR_NEW)
        + "```\n"
    )
    result = parse_answer(answer, TRAIN_PY)
    assert result.hypothesis == "deeper and faster"
    assert result.source == TRAIN_PY.replace(DEPTH_OLD, DEPTH_NEW).replace(LR_OLD, LR_NEW)


def test_blocks_apply_in_order_each_to_the_result_of_the_previous() -> None:
    answer = "Hypothesis: x\n" + block(LR_OLD, LR_NEW) + block(LR_NEW, LR_NEW.replace("0.06", "0.07"))
    assert "MATRIX_LR = 0.07" in parse_answer(answer, TRAIN_PY).source


def test_crlf_answer_and_prose_line_before_a_block_are_fine() -> None:
    answer = ("Hypothesis: x\nChange the learning rate as follows.\n" + block(LR_OLD, LR_NEW)).replace("\n", "\r\n")
    assert LR_NEW in parse_answer(answer, TRAIN_PY).source


def test_empty_replace_deletes_the_lines() -> None:
    old = "VE_GATE_CHANNELS = 32  # input channels that gate the value embeddings, at most the width (8-64)"
    source = TRAIN_PY.replace(old, old + "\nEXTRA = 1")
    result = apply_edits(source, parse_edits(block("EXTRA = 1", "").replace("=======\n\n", "=======\n")))
    assert result == TRAIN_PY


@pytest.mark.parametrize(
    "name", ["prepare.py", "autoresearch.json", "src/autoresearch/harness/evaluation.py", "../train.py", "`program.md`"]
)
def test_a_block_for_any_other_file_rejects_the_whole_answer(name: str) -> None:
    answer = "Hypothesis: x\ntrain.py\n" + block(LR_OLD, LR_NEW) + f"\n{name}\n" + block("import math", "import os")
    with pytest.raises(EditError, match=r"block 2 .*only train.py may be edited"):
        parse_answer(answer, TRAIN_PY)


def test_search_not_found_rejects_with_the_block_and_reason() -> None:
    answer = "Hypothesis: x\n" + block(LR_OLD, LR_NEW) + block("MATRIX_LR = 0.05", "MATRIX_LR = 0.07")
    with pytest.raises(EditError) as caught:
        parse_answer(answer, TRAIN_PY)
    message = str(caught.value)
    assert "block 2" in message and "does not occur" in message and "none of them" in message
    assert "block 1" not in message


def test_search_found_twice_rejects_with_the_count() -> None:
    answer = "Hypothesis: x\n" + block("        super().__init__()", "        super().__init__()  # hi")
    with pytest.raises(EditError, match=r"block 1 .*occurs \d+ times.*unique"):
        parse_answer(answer, TRAIN_PY)


def test_search_matches_whole_lines_only() -> None:
    answer = "Hypothesis: x\n" + block(
        "LR = 0.04  # Muon learning rate for the matrices inside the blocks (0.01-0.1)", ""
    )
    with pytest.raises(EditError, match="does not occur"):
        parse_answer(answer, TRAIN_PY)


def test_trailing_whitespace_is_tolerated_but_indentation_is_not() -> None:
    assert LR_NEW in parse_answer("Hypothesis: x\n" + block(LR_OLD + "   ", LR_NEW), TRAIN_PY).source
    indented = "   " + LR_OLD
    with pytest.raises(EditError, match="does not occur"):
        parse_answer("Hypothesis: x\n" + block(indented, LR_NEW), TRAIN_PY)


def test_no_blocks_missing_hypothesis_and_malformed_blocks_are_rejected() -> None:
    with pytest.raises(EditError, match="no SEARCH/REPLACE blocks"):
        parse_answer("Hypothesis: x\nI would raise MATRIX_LR to 0.06.", TRAIN_PY)
    with pytest.raises(EditError, match="Hypothesis"):
        parse_answer(block(LR_OLD, LR_NEW), TRAIN_PY)
    with pytest.raises(EditError, match="incomplete"):
        parse_answer(f"Hypothesis: x\n<<<<<<< SEARCH\n{LR_OLD}\n=======\n{LR_NEW}\n", TRAIN_PY)
    with pytest.raises(EditError, match="outside a block"):
        parse_answer(f"Hypothesis: x\n{LR_OLD}\n=======\n{LR_NEW}\n>>>>>>> REPLACE\n", TRAIN_PY)
    with pytest.raises(EditError, match="empty SEARCH"):
        parse_answer("Hypothesis: x\n" + block("", "X = 1").replace("SEARCH\n\n", "SEARCH\n"), TRAIN_PY)


def test_result_that_is_not_python_is_rejected() -> None:
    with pytest.raises(EditError, match="not valid Python"):
        parse_answer("Hypothesis: x\n" + block(LR_OLD, "MATRIX_LR = = 0.06"), TRAIN_PY)


def test_an_answer_that_changes_nothing_is_rejected() -> None:
    with pytest.raises(EditError, match="unchanged"):
        parse_answer("Hypothesis: x\n" + block(LR_OLD, LR_OLD), TRAIN_PY)


def test_edit_errors_are_proposal_errors() -> None:
    assert issubclass(EditError, ProposalError)


def test_hypothesis_is_one_line_and_bounded() -> None:
    assert parse_hypothesis("Some preamble\nHypothesis:   raise LR  \nHypothesis: second") == "raise LR"
    assert len(parse_hypothesis("Hypothesis: " + "x" * 1000)) <= 300


def test_every_problem_of_an_answer_is_reported_at_once() -> None:
    with pytest.raises(EditError) as caught:
        parse_answer(block("MATRIX_LR = 0.05", LR_NEW), TRAIN_PY)
    assert "Hypothesis" in str(caught.value) and "does not occur" in str(caught.value)
