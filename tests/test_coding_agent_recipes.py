"""What a user sees of the recipes before any program runs: a clear error naming the missing executable or
key, the hypothesis line read back, and the tokens each program reports read from its own output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from autoresearch.agents.base import ProposalError, Usage
from autoresearch.agents.coding_agent import CodingAgent, Turn, hypothesis
from autoresearch.agents.factory import make_agent
from autoresearch.agents.recipes import NAMES, recipe
from autoresearch.cli import main

KEYS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KEYS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("name", NAMES)
def test_a_missing_executable_stops_at_preflight_naming_it_and_how_to_install(name, tmp_path, monkeypatch, no_keys):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    with pytest.raises(ProposalError) as info:
        make_agent(name).preflight(tmp_path)
    assert info.value.fatal and f"{recipe(name).program!r} is not a program on PATH" in str(info.value)
    assert "install" in str(info.value.hint)


@pytest.mark.parametrize(
    ("name", "key"), [("aider", "OPENAI_API_KEY"), ("claude-code", "ANTHROPIC_API_KEY"), ("codex", "OPENAI_API_KEY")]
)
@pytest.mark.slow  # over half a second: the fast subset stays under a minute
def test_a_missing_key_stops_at_preflight_naming_it(name, key, tmp_path, monkeypatch, no_keys):
    program = tmp_path / recipe(name).program
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")  # unshare too, for codex's check
    agent = make_agent(name)
    with pytest.raises(ProposalError, match=f"{key} is not set|neither {key}") as info:
        agent.preflight(tmp_path)
    assert info.value.fatal
    url = "ANTHROPIC_BASE_URL" if name == "claude-code" else "OPENAI_BASE_URL"
    monkeypatch.setenv(url, "http://127.0.0.1:9/v1")  # a local server needs no key (this one is not up: a warning)
    [warning] = agent.preflight(tmp_path)
    assert "could not be reached to check its key" in warning


@pytest.mark.slow  # the CLI run end to end: ~5 s
def test_run_with_a_missing_agent_program_exits_2_with_the_reason(workspace, monkeypatch, capsys, no_keys) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    code = main(["run", "--agent", "codex", "--plain", "--workspace", str(workspace.root)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "'codex' is not a program on PATH" in err and "npm install -g @openai/codex" in err


def test_the_model_defaults_per_agent_and_is_what_the_ledger_names() -> None:
    assert [make_agent(n).model for n in NAMES] == ["gpt-5-mini", "claude-sonnet-4-6", "gpt-5-mini"]
    assert make_agent("aider", "qwen3-coder").model == "qwen3-coder"
    assert isinstance(make_agent("claude-code"), CodingAgent) and make_agent("claude-code").name == "claude-code"


def test_the_hypothesis_line_is_read_back_through_markdown_and_chatter() -> None:
    text = "I raised it.\n\n**Hypothesis:** deeper model: DEPTH 8 -> 10\n\nApplied edit to train.py"
    assert hypothesis(text, "aider") == "deeper model: DEPTH 8 -> 10"
    assert hypothesis("Hypothesis: a\nlater\n> hypothesis: b", "x") == "b"  # the last one wins
    assert hypothesis("no marker here\nlast line", "x") == "last line"
    assert hypothesis("", "codex") == "train.py edited by codex (it gave no hypothesis)"
    assert len(hypothesis("Hypothesis: " + "x" * 1000, "x")) == 300


@pytest.mark.parametrize(
    ("name", "printed", "logged"),
    [
        ("claude-code", "[" * 100_000, ""),  # RecursionError from json
        ("claude-code", json.dumps({"result": "Hypothesis: x", "usage": {"input_tokens": "lots"}}), ""),
        ("claude-code", json.dumps({"result": "Hypothesis: x", "usage": [1]}), ""),
        ("codex", json.dumps({"type": "turn.completed", "usage": "s"}), ""),
        ("aider", "", json.dumps({"event": "message_send", "properties": {"prompt_tokens": 1e999}})),
        ("aider", "", json.dumps({"event": "message_send", "properties": [1]})),
    ],
)
def test_a_report_of_a_shape_the_recipe_does_not_read_is_no_usage_not_the_loops_end(
    name: str, printed: str, logged: str, tmp_path: Path
) -> None:
    """BROKE, fixed: what a coding agent prints, and the log aider writes in its own folder, are the agent's to
    shape: each of these raised out of the loop (red team). They are read as no text and no usage."""
    (tmp_path / "analytics.jsonl").write_text(logged)
    agent = make_agent(name, "gpt-4o")
    assert agent._read(printed, "", tmp_path) == Turn("", Usage())


def test_usage_is_read_from_each_programs_own_report(tmp_path: Path) -> None:
    aider = tmp_path / "aider"
    aider.mkdir()
    events = [{"event": "message_send", "properties": {"prompt_tokens": 1200, "completion_tokens": 80}}] * 2
    (aider / "analytics.jsonl").write_text("\n".join(json.dumps(e) for e in [{"event": "launched"}, *events]))
    turn = recipe("aider").read("gpt-4o", "Tokens: 1.2k sent, 80 received.", "", aider)
    assert (turn.usage.input_tokens, turn.usage.output_tokens) == (2400, 160)
    assert turn.usage.cost_usd == pytest.approx((2400 * 2.5 + 160 * 10) / 1e6)
    # The log is the agent's to write: a FIFO there (a read would wait for ever) is no usage, read at once.
    (aider / "analytics.jsonl").unlink()
    os.mkfifo(aider / "analytics.jsonl")
    assert recipe("aider").read("gpt-4o", "", "", aider).usage == Usage()

    usage = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 500,
        "cache_read_input_tokens": 2000,
        "output_tokens": 90,
    }
    result = {"result": "Hypothesis: x", "is_error": False, "total_cost_usd": 0.05, "usage": usage}
    turn = recipe("claude-code").read("claude-sonnet-4-6", json.dumps(result), "", tmp_path)
    assert (turn.text, turn.usage.input_tokens, turn.usage.output_tokens, turn.usage.cost_usd) == (
        "Hypothesis: x",
        2510,
        90,
        0.05,
    )
    failed = recipe("claude-code").read(
        "m", json.dumps({**result, "is_error": True, "result": "API Error: 529"}), "", tmp_path
    )
    assert failed.error == "API Error: 529"

    lines = [
        {"type": "item.completed", "item": {"type": "agent_message", "text": "Hypothesis: y"}},
        {"type": "turn.completed", "usage": {"input_tokens": 3000, "cached_input_tokens": 1000, "output_tokens": 200}},
        {"type": "turn.failed", "error": {"message": "stream disconnected"}},
    ]
    turn = recipe("codex").read("unknown-model", "\n".join(json.dumps(e) for e in lines), "", tmp_path)
    assert (turn.text, turn.usage.input_tokens, turn.usage.output_tokens, turn.usage.cost_usd) == (
        "Hypothesis: y",
        3000,
        200,
        None,
    )
    assert turn.error == "stream disconnected"
