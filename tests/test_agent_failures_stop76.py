"""Agents that fail the same way every time, and say so (helper 135; each test failed before its fix).

- A coding agent (aider, Claude Code, Codex) whose key the model server rejects: each turn failed, and the loop backed
  off all night (up to 15 min apart) where the API agents stop at once. It stops now, naming the key's variable, on the
  program's own report of the 401 (or 403), and only on that: the reports below are what the pinned programs printed
  against tests/fake_llm.py's server. Its preflight asks the server for its models with the key (no tokens): a 401
  there stops `run` before the baseline trains.
- An API agent told 400 "the prompt is too long for the model": a failure like any other, with no hint, retried all
  night at the back-off's ceiling. It says what to shorten now, and stops the loop where the prompt was as short as it
  gets by itself (agents/llm.py).
- A model that refused (or asked a question, or explained) showed in the ledger only as "the answer has no
  `Hypothesis: ...` line" twice: what it said was lost. The reason now quotes the start of each such answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from agent_support import offline_agent, turn_through_the_loop, use_installed_agents
from fake_llm import FakeLLM, Scripted
from loop_support import FakeExecutor, agent_channel, constant, make_loop
from test_llm_server_failures import GOOD, TRAIN_PY

from autoresearch.agents.anthropic_agent import AnthropicAgent
from autoresearch.agents.base import Context, PastExperiment, ProposalError, Usage
from autoresearch.agents.factory import make_agent
from autoresearch.agents.openai_agent import OpenAIAgent
from autoresearch.agents.recipes import NAMES, recipe
from autoresearch.agents.recipes.codex import Codex
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.settings import LoopError
from autoresearch.vocabulary import Kind, Status

# -- what each program printed when the server answered 401 -----------------------------------------------------------

CLAUDE_401 = {  # claude 2.1.332 -p --output-format json (most of its fields left out)
    "type": "result",
    "subtype": "success",
    "is_error": True,
    "api_error_status": 401,
    "api_error_type": "authentication_error",
    "result": "Invalid API key · Fix external API key",
    "terminal_reason": "api_error",
    "total_cost_usd": 0,
    "usage": {"input_tokens": 0, "output_tokens": 0},
}
REFUSED = (
    "unexpected status 401 Unauthorized: Incorrect API key provided: bad-key., url: http://127.0.0.1:4/v1/responses"
)
CODEX_401 = [  # codex exec --json 0.171.0
    {"type": "thread.started", "thread_id": "01a25056"},
    {"type": "turn.started"},
    {"type": "error", "message": f"Reconnecting... 1/5 ({REFUSED})"},
    {"type": "error", "message": REFUSED},
    {"type": "turn.failed", "error": {"message": REFUSED}},
]
AIDER_401 = """
Aider v0.86.2
Model: openai/gpt-5-mini with diff edit format
Git repo: none
Repo-map: disabled
Added train.py to the chat.

litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect API key provided: bad-key.
The API provider is not able to authenticate you. Check your API key.
"""
AIDER_403 = "litellm.APIError: APIError: OpenAIException - You are not allowed to sample from this model\n"


def lines(events: list[dict]) -> str:
    return "\n".join(json.dumps(e) for e in events)


def test_claude_codes_report_of_a_401_or_403_is_a_rejected_key_and_nothing_else_is(tmp_path: Path) -> None:
    claude = recipe("claude-code")
    assert claude.read("m", json.dumps(CLAUDE_401), "", tmp_path).rejected_key == 401
    assert claude.read("m", json.dumps({**CLAUDE_401, "api_error_status": 403}), "", tmp_path).rejected_key == 403
    others = [
        {**CLAUDE_401, "api_error_status": 529, "result": "API Error: 529 overloaded"},
        {**CLAUDE_401, "api_error_status": "401"},  # not Claude Code's shape
        {**CLAUDE_401, "api_error_status": True},
        # the model's answer, which says 401: a turn that worked
        {"type": "result", "is_error": False, "result": "Hypothesis: a 401 is rare", "api_error_status": 401},
    ]
    assert [claude.read("m", json.dumps(o), "", tmp_path).rejected_key for o in others] == [None] * 4


def test_codexs_failed_turn_with_status_401_is_a_rejected_key_and_a_retry_that_passed_is_not(tmp_path: Path) -> None:
    codex = recipe("codex")
    turn = codex.read("m", lines(CODEX_401), "", tmp_path)
    assert turn.rejected_key == 401 and "Incorrect API key provided" in str(turn.error)
    forbidden = [{**e, "error": {"message": "unexpected status 403 Forbidden: no"}} for e in CODEX_401[-1:]]
    assert codex.read("m", lines(forbidden), "", tmp_path).rejected_key == 403
    passed = [  # a 401 while reconnecting, then the turn went on and ended
        *CODEX_401[:3],
        {"type": "item.completed", "item": {"type": "agent_message", "text": "unexpected status 401 in my notes"}},
        {"type": "turn.completed", "usage": {"input_tokens": 100, "output_tokens": 10}},
    ]
    assert codex.read("m", lines(passed), "", tmp_path).rejected_key is None
    bad_request = [{"type": "turn.failed", "error": {"message": "unexpected status 400 Bad Request: key 401 ..."}}]
    assert codex.read("m", lines(bad_request), "", tmp_path).rejected_key is None


def test_aiders_authentication_error_on_a_turn_no_answer_reached_is_a_rejected_key(tmp_path: Path) -> None:
    aider = recipe("aider")
    turn = aider.read("gpt-5-mini", AIDER_401, "", tmp_path)
    assert turn.rejected_key == 401 and "Incorrect API key provided" in str(turn.error)
    assert aider.read("gpt-5-mini", AIDER_403, "", tmp_path).rejected_key is None  # no status to tell it from a 500
    quoted = AIDER_401.replace("litellm.AuthenticationError", "> litellm.AuthenticationError")  # the model's words
    assert aider.read("gpt-5-mini", quoted, "", tmp_path).rejected_key is None
    sent = {"event": "message_send", "properties": {"prompt_tokens": 1200, "completion_tokens": 80}}
    (tmp_path / "analytics.jsonl").write_text(json.dumps(sent))  # an answer reached it: the words are the model's
    answered = aider.read("gpt-5-mini", AIDER_401, "", tmp_path)
    assert answered.rejected_key is None and answered.usage != Usage()


# -- the programs themselves, through the loop, against a server that rejects the key --------------------------------


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    use_installed_agents(home, monkeypatch)
    monkeypatch.setenv("CLAUDE_CODE_MAX_RETRIES", "0")  # else Claude Code asks 11 times in 3 minutes


def no_stream_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Codex asks 6 times, 8 s in all, before it fails a turn: once here."""
    command = Codex.command

    def once(self, *args, **kwargs) -> list[str]:
        argv = command(self, *args, **kwargs)
        return [*argv[:-1], "-c", "model_providers.autoresearch.stream_max_retries=0", argv[-1]]

    monkeypatch.setattr(Codex, "command", once)


@pytest.mark.slow  # a real program's turn: 1-6 s
@pytest.mark.parametrize(
    ("name", "key"), [("aider", "OPENAI_API_KEY"), ("claude-code", "ANTHROPIC_API_KEY"), ("codex", "OPENAI_API_KEY")]
)
def test_a_coding_agent_whose_key_is_rejected_stops_the_loop_naming_the_key(
    name: str, key: str, workspace, installed, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was seen: each of the three failed its turn ("left train.py unchanged", "exited with status 1") and the
    loop asked again, 30 s, 1 min ... 15 min apart, all night. Expected: the loop stops after the first such turn, with
    the server's words and a hint naming the variable the key is read from."""
    fake = request.getfixturevalue("fake_anthropic" if name == "claude-code" else "fake_openai")
    no_stream_retries(monkeypatch)
    fake.error(401, "Incorrect API key provided: bad-key.", times=3, code="invalid_api_key")
    agent, offline = offline_agent(name, fake, agent_channel(workspace))
    try:
        with pytest.raises(LoopError) as stopped:
            turn_through_the_loop(workspace, agent)
    finally:
        offline.close()
    said = str(stopped.value)
    assert "rejected the" in said and "API key (HTTP 401)" in said and f"hint: check {key}" in said, said
    assert fake.url in said and ("Incorrect API key" in said or "Invalid API key" in said), said
    rows = Ledger(workspace.root).all()
    assert rows[-1].kind == Kind.PROPOSAL and rows[-1].status == Status.CRASH and "HTTP 401" in rows[-1].reason
    assert len(fake.requests) == 1, f"{name} asked {len(fake.requests)} times"


@pytest.mark.slow  # a real program's turn
def test_a_coding_agent_sent_with_no_key_to_a_server_that_wants_one_is_told_to_set_it(
    workspace, installed, fake_anthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")  # the base URL alone: a placeholder key is sent
    fake_anthropic.error(401, "invalid x-api-key")
    agent, offline = offline_agent("claude-code", fake_anthropic, agent_channel(workspace))
    try:
        with pytest.raises(LoopError, match=r"ANTHROPIC_API_KEY is not set, and the model server at .* wants a key"):
            turn_through_the_loop(workspace, agent)
    finally:
        offline.close()


# -- the coding agents' preflight: the key, checked against the model list ---------------------------------------------


@pytest.fixture
def stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The three programs on PATH as scripts that do nothing: the preflight runs only Codex's sandbox check. A home of
    their own: aider's settings in yours (~/.env) would leave its key unchecked (test_key_check_red138.py)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in NAMES:
        program = folder / recipe(name).program
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")


def served(name: str, request: pytest.FixtureRequest) -> FakeLLM:
    return request.getfixturevalue("fake_anthropic" if name == "claude-code" else "fake_openai")


@pytest.mark.parametrize(
    ("name", "key"), [("aider", "OPENAI_API_KEY"), ("claude-code", "ANTHROPIC_API_KEY"), ("codex", "OPENAI_API_KEY")]
)
def test_a_coding_agents_preflight_stops_on_a_key_the_server_rejects(
    name: str, key: str, tmp_path: Path, stand_ins, request: pytest.FixtureRequest
) -> None:
    """What was seen: the preflight checked only that a key was set; the baseline trained (minutes to an hour), then
    every turn failed. Expected: as for the API agents, `run` stops before the baseline, naming the variable."""
    fake = served(name, request)
    fake.refuse_listing(401, "Incorrect API key provided: bad-key.")
    with pytest.raises(ProposalError) as stopped:
        make_agent(name).preflight(tmp_path)
    said = str(stopped.value)
    assert stopped.value.fatal and f"the model server at {fake.url} rejected the {name} agent's API key" in said, said
    assert "Incorrect API key provided" in said and stopped.value.hint == f"check {key}"
    [listing] = fake.listings
    sent = listing.headers.get("x-api-key") if name == "claude-code" else listing.headers.get("authorization")
    assert sent == ("test-key" if name == "claude-code" else "Bearer test-key")  # as the program sends it
    assert fake.requests == []  # no model was asked anything


def test_a_claude_code_that_sends_more_than_the_key_is_not_checked(
    tmp_path: Path, stand_ins, fake_anthropic: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway's bearer token (or headers of its own), which the check would not send: its 401 would be no sign."""
    fake_anthropic.refuse_listing(401, "no token")
    for name in ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_CUSTOM_HEADERS"):
        with monkeypatch.context() as patch:
            patch.setenv(name, "x")
            assert make_agent("claude-code").preflight(tmp_path) == []
    assert fake_anthropic.listings == []


@pytest.mark.parametrize("status", [200, 403, 404, 500])
def test_a_coding_agents_preflight_says_nothing_of_a_listing_that_is_no_401(
    status: int, tmp_path: Path, stand_ins, fake_openai: FakeLLM
) -> None:
    """A 403 may be a key that may use the model but not list models (OpenAI's restricted keys), a 404 a server with no
    list: they say nothing of the key."""
    if status != 200:
        fake_openai.refuse_listing(status, "no")
    assert make_agent("aider").preflight(tmp_path) == []
    assert len(fake_openai.listings) == 1


def test_a_coding_agents_preflight_warns_of_a_server_it_cannot_reach(
    tmp_path: Path, stand_ins, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    [warning] = make_agent("aider").preflight(tmp_path)
    assert "model server at http://127.0.0.1:9/v1 could not be reached to check its key" in warning, warning


@pytest.mark.slow  # ~0.5 s
def test_run_with_a_coding_agent_whose_key_is_rejected_trains_no_baseline(workspace, stand_ins, fake_anthropic) -> None:
    fake_anthropic.refuse_listing(401, "invalid x-api-key")
    trained: list[str] = []
    loop = make_loop(workspace, FakeExecutor(lambda src: trained.append(src) or 1.0))
    with pytest.raises(ProposalError, match="rejected the claude-code agent's API key"):
        loop.run(make_agent("claude-code"), max_experiments=1)
    assert trained == [] and loop.ledger.all() == []


# -- an API agent's prompt longer than the model's context ------------------------------------------------------------

OPENAI_TOO_LONG = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 tokens. "
    "Please reduce the length of the messages."
)
ANTHROPIC_TOO_LONG = "prompt is too long: 250000 tokens > 200000 maximum"


def too_long(fake: FakeLLM) -> None:
    """The provider's own 400 for a prompt over the model's context."""
    if fake.kind == "openai":
        fake.error(400, OPENAI_TOO_LONG, code="context_length_exceeded")
    else:
        fake.error(400, ANTHROPIC_TOO_LONG)


def api_agent(kind: str, request: pytest.FixtureRequest) -> tuple[FakeLLM, OpenAIAgent | AnthropicAgent]:
    fake = request.getfixturevalue(f"fake_{kind}")
    return fake, OpenAIAgent("gpt-5-mini") if kind == "openai" else AnthropicAgent("claude-sonnet-4-6")


def at_rest(tmp_path: Path, **more) -> Context:
    """What an ask after the baseline shows with one worker: no crash log, nothing in flight."""
    return Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012, **more)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_prompt_too_long_for_the_model_stops_with_what_to_shorten(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    fake, agent = api_agent(kind, request)
    too_long(fake)
    with pytest.raises(ProposalError) as failed:
        agent.propose(at_rest(tmp_path))
    said = str(failed.value)
    assert failed.value.fatal and "longer than the model's context (HTTP 400)" in said, said
    assert (OPENAI_TOO_LONG if kind == "openai" else ANTHROPIC_TOO_LONG) in said
    assert f"train.py {len(TRAIN_PY):,}" in said and "characters, about" in said  # the prompt's size
    assert "shorten program.md" in failed.value.hint and "prompts/task.md" in failed.value.hint
    assert len(fake.requests) == 1


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_prompt_too_long_that_may_shrink_by_itself_is_a_failure_with_the_hint(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A crash log (shown until 3 failures in a row) or experiments in flight: the next prompt may not show them."""
    fake, agent = api_agent(kind, request)
    running = PastExperiment(7, "running", "LR up", None, "-a\n+b\n", TRAIN_PY)
    for context in (at_rest(tmp_path, last_crash="Traceback ..."), at_rest(tmp_path, in_flight=[running])):
        too_long(fake)
        with pytest.raises(ProposalError) as failed:
            agent.propose(context)
        assert not failed.value.fatal and "the next may fit" not in str(failed.value)
        assert "which a later prompt may not" in str(failed.value) and "shorten program.md" in failed.value.hint
    fake.reply("no edit here")  # the first answer fits; the correction, with it added, does not
    too_long(fake)
    with pytest.raises(ProposalError) as failed:
        agent.propose(at_rest(tmp_path))
    assert not failed.value.fatal and "shorten program.md" in failed.value.hint


def test_other_400s_and_other_servers_words(fake_openai: FakeLLM, tmp_path: Path) -> None:
    """vLLM's and llama.cpp's 400 for a prompt over the context are told apart; a 400 for anything else is not."""
    agent = OpenAIAgent("qwen3-coder")
    vllm = {"object": "error", "message": "This model's maximum context length is 32768 tokens. However, you "
            "requested 40000 tokens (39000 in the messages, 1000 in the completion).", "type": "BadRequestError",
            "param": None, "code": 400}  # fmt: skip
    llama = {"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it",
             "type": "exceed_context_size_error"}}  # fmt: skip
    for body in (vllm, llama):
        fake_openai.queue.append(Scripted(400, body))
        with pytest.raises(ProposalError, match="longer than the model's context") as failed:
            agent.propose(at_rest(tmp_path))
        assert failed.value.fatal
    fake_openai.error(400, "Unsupported parameter: 'max_tokens'", code="unsupported_parameter")
    with pytest.raises(ProposalError) as failed:
        agent.propose(at_rest(tmp_path))
    assert not failed.value.fatal and "rejected the request (HTTP 400)" in str(failed.value) and not failed.value.hint


@pytest.mark.slow  # ~0.5 s: a baseline (fake executor) first
def test_the_loop_stops_on_a_prompt_too_long_rather_than_asking_all_night(workspace, fake_openai) -> None:
    """What was seen: the loop asked again and again, 30 s ... 15 min apart, each ask the same 400 with no hint."""
    loop = make_loop(workspace, FakeExecutor(lambda src: 1.0 + 0.001 * constant(src, "SEED")))
    loop.sleep = lambda _s: None
    fake_openai.reply("pong")  # the preflight's 1-token request
    too_long(fake_openai)
    fake_openai.reply(GOOD)  # never asked for
    with pytest.raises(LoopError, match=r"longer than the model's context[\s\S]*hint: shorten program\.md"):
        loop.run(OpenAIAgent("gpt-5-mini"), max_experiments=5)
    assert len(fake_openai.requests) == 2  # the preflight's ping and one ask
    rows = Ledger(workspace.root).all()
    assert rows[-1].kind == Kind.PROPOSAL and "context" in rows[-1].reason


# -- what a model that refused said -----------------------------------------------------------------------------------

REFUSAL = "I'm sorry, but I can't help modify this training script: it could be used to train a harmful model."


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_refusal_is_quoted_in_the_failure(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    fake, agent = api_agent(kind, request)
    fake.reply(REFUSAL)
    fake.reply("<think>they insist</think>\nStill no.\x1b[2J\n\nReally. " + "x" * 400)
    with pytest.raises(ProposalError) as failed:
        agent.propose(at_rest(tmp_path))
    said = str(failed.value)
    assert f'(it said: "{REFUSAL}")' in said and "no `Hypothesis: ...` line" in said, said
    assert '(it said: "Still no. [2J Really. xxx' in said and "they insist" not in said and "\x1b" not in said
    assert len(said) < 1200  # each answer cut to 200 characters


def test_an_answer_with_edits_is_not_quoted_nor_an_empty_one(fake_openai: FakeLLM, tmp_path: Path) -> None:
    """The error says what was wrong with blocks; an excerpt of them would only repeat train.py."""
    fake_openai.reply("Hypothesis: x\ntrain.py\n<<<<<<< SEARCH\nno such line\n=======\nLR = 1\n>>>>>>> REPLACE\n")
    fake_openai.reply("")
    with pytest.raises(ProposalError) as failed:
        OpenAIAgent("gpt-5-mini").propose(at_rest(tmp_path))
    said = str(failed.value)
    assert "it said" not in said and "does not occur in train.py" in said and "(the answer was empty)" in said


@pytest.mark.slow  # ~0.5 s: a baseline (fake executor) first
def test_show_gives_what_a_model_that_refused_said(workspace, fake_anthropic, capsys) -> None:
    from autoresearch.cli import main

    loop = make_loop(workspace, FakeExecutor(lambda src: 1.0 + 0.001 * constant(src, "SEED")))
    loop.baseline()
    fake_anthropic.reply(REFUSAL)
    fake_anthropic.reply(REFUSAL)
    loop.step(AnthropicAgent("claude-sonnet-4-6"))
    row = loop.ledger.all()[-1]
    loop.ledger.close()
    assert row.kind == Kind.PROPOSAL and REFUSAL in row.reason
    capsys.readouterr()
    assert main(["show", str(row.id), "--workspace", str(workspace.root)]) == 0
    assert REFUSAL in " ".join(capsys.readouterr().out.split())
