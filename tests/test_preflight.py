"""Agents are checked before the baseline trains: what cannot heal (a missing program, a rejected key, an
unknown model) stops at once with a clear error; what may heal (no connection yet, 5xx) is a warning."""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from loop_support import FakeExecutor, make_loop

from autoresearch.agents import fence, namespace
from autoresearch.agents.anthropic_agent import AnthropicAgent
from autoresearch.agents.base import Context, ProposalError, preflight
from autoresearch.agents.command_agent import CommandAgent, command_program
from autoresearch.agents.openai_agent import OpenAIAgent
from autoresearch.agents.tune import TuneAgent
from autoresearch.cli import main
from autoresearch.errors import AutoresearchError

if TYPE_CHECKING:
    from fake_llm import FakeLLM


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checked(agent, workspace: Path) -> list[str]:
    warnings: list[str] = []
    preflight(agent, workspace, warnings.append)
    return warnings


# -- LLM agents ---------------------------------------------------------------------------------------


def test_an_answering_server_passes_with_one_1_token_request(fake_anthropic: FakeLLM, tmp_path: Path) -> None:
    fake_anthropic.reply("pong", input_tokens=8, output_tokens=1)
    assert checked(AnthropicAgent("claude-sonnet-4-6"), tmp_path) == []
    (request,) = fake_anthropic.requests
    assert request.body["max_tokens"] == 1 and request.body["model"] == "claude-sonnet-4-6"


def test_a_rejected_key_is_fatal_at_once(fake_anthropic: FakeLLM, tmp_path: Path) -> None:
    fake_anthropic.error(401, "invalid x-api-key", times=5)
    with pytest.raises(ProposalError) as err:
        checked(AnthropicAgent("claude-sonnet-4-6"), tmp_path)
    assert err.value.fatal
    text = str(err.value)
    assert "the anthropic agent cannot work with model 'claude-sonnet-4-6'" in text
    assert "rejected the API key (HTTP 401): invalid x-api-key" in text and "check ANTHROPIC_API_KEY" in text
    assert len(fake_anthropic.requests) == 1  # no retries


def test_a_forbidden_model_is_fatal(fake_openai: FakeLLM, tmp_path: Path) -> None:
    fake_openai.error(403, "this key may not use gpt-5")
    with pytest.raises(ProposalError, match=r"HTTP 403") as err:
        checked(OpenAIAgent("gpt-5"), tmp_path)
    assert err.value.fatal


def test_an_unknown_model_is_fatal(fake_openai: FakeLLM, tmp_path: Path) -> None:
    fake_openai.error(404, "The model `gpt-17` does not exist")
    with pytest.raises(ProposalError) as err:
        checked(OpenAIAgent("gpt-17"), tmp_path)
    assert err.value.fatal
    assert "answered 404" in str(err.value) and "does not exist" in str(err.value)
    assert "check the model name and OPENAI_BASE_URL" in str(err.value)
    (request,) = fake_openai.requests
    assert request.body["max_completion_tokens"] == 1


def test_a_refused_connection_is_only_a_warning_and_quick(
    fake_openai: FakeLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{closed_port()}/v1")
    start = time.monotonic()
    (warning,) = checked(OpenAIAgent("qwen3-coder"), tmp_path)
    assert time.monotonic() - start < 10 and fake_openai.sleeps == []  # one attempt, no back-off
    assert warning.startswith("warning: the openai agent's first request failed (could not reach OpenAI API")
    assert "going on" in warning


@pytest.mark.parametrize("status", [429, 500, 529])
def test_rate_limits_and_server_errors_are_only_warnings(status: int, fake_anthropic: FakeLLM, tmp_path: Path) -> None:
    fake_anthropic.error(status, "busy", times=3)
    (warning,) = checked(AnthropicAgent("claude-sonnet-4-6"), tmp_path)
    assert f"HTTP {status}" in warning and "after 0 retries" not in warning
    assert len(fake_anthropic.requests) == 1


# -- the command agent --------------------------------------------------------------------------------


def test_a_missing_program_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(ProposalError) as err:
        checked(CommandAgent("no-such-agent-7b1 -p --permission-mode acceptEdits"), tmp_path)
    assert err.value.fatal
    assert "'no-such-agent-7b1' is not a program on PATH" in str(err.value)
    assert "install no-such-agent-7b1, or give its full path" in str(err.value)


def test_a_missing_or_non_executable_path_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(ProposalError, match="does not exist") as err:
        checked(CommandAgent("./agents/run.sh --fast"), tmp_path)
    assert err.value.fatal and str(tmp_path) in str(err.value)  # relative to the workspace, where it runs
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "run.sh").write_text("echo hi\n")
    with pytest.raises(ProposalError, match="is not executable"):
        checked(CommandAgent("./agents/run.sh --fast"), tmp_path)
    (tmp_path / "agents" / "run.sh").chmod(0o755)
    assert checked(CommandAgent("./agents/run.sh --fast"), tmp_path) == []


def test_present_programs_and_shell_lines_pass(tmp_path: Path) -> None:
    for command in (f"{shlex.quote(sys.executable)} -c 'print(1)'", "sh agent.sh", "cd sub && whatever", "true"):
        assert checked(CommandAgent(command), tmp_path) == [], command


def test_the_program_is_found_past_assignments_and_wrappers() -> None:
    assert command_program("claude -p --permission-mode acceptEdits") == "claude"
    assert command_program("FOO=1 BAR='a b' env -u X TERM=dumb codex exec --full-auto") == "codex"
    assert command_program("timeout -s KILL 600 nice -n 5 aider --yes") == "aider"
    assert command_program("'/opt/my agent/run' --x") == "/opt/my agent/run"
    assert command_program("cd sub && claude") is None  # a builtin first: nothing to look up
    assert command_program("$AGENT -p") is None
    assert command_program("(claude)") is None
    with pytest.raises(ValueError):
        command_program("claude 'unbalanced")


def test_an_unbalanced_quote_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(ProposalError, match="does not parse") as err:
        checked(CommandAgent("claude -p 'oops"), tmp_path)
    assert err.value.fatal


@pytest.mark.parametrize("code", [126, 127])
@pytest.mark.slow  # over half a second: the fast subset stays under a minute
def test_exit_126_or_127_while_proposing_is_fatal(code: int, tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("X = 1\n")
    context = Context(tmp_path, "", "X = 1\n", 1.0, 0.001, [])
    command = "no-such-agent-7b1" if code == 127 else f"sh -c 'echo cannot run >&2; exit {code}'"
    with pytest.raises(ProposalError, match=f"status {code}") as err:
        CommandAgent(command).propose(context)
    assert err.value.fatal


def test_the_tune_agent_and_agents_without_preflight_pass(tmp_path: Path) -> None:
    assert checked(TuneAgent(), tmp_path) == []
    assert checked(object(), tmp_path) == []


def test_an_agent_may_connect_to_dns_http_https_and_the_endpoints_its_environment_names() -> None:
    env = {
        "OPENAI_BASE_URL": "http://localhost:11434/v1",
        "ANTHROPIC_BASE_URL": "https://llm.example.com",  # 443, already allowed
        "OPENAI_API_BASE": "http://127.0.0.1:8000",
        "https_proxy": "http://proxy.internal:3128",
        "AUTORESEARCH_AGENT_PORTS": "9000, 9001",
        # servers that run what they are sent: not endpoints of an agent's
        "DATABASE_URL": "postgres://me:secret@localhost:5432/db",
        "DOCKER_HOST": "tcp://127.0.0.1:2375",
        "JUPYTER_SERVER_URL": "http://127.0.0.1:8888/?token=abc",
        "WEIRD_BASE_URL": "http://[::1:bad",  # not a URL: ignored
    }
    assert fence.allowed_ports(env) == [53, 80, 443, 3128, 8000, 9000, 9001, 11434]


@pytest.mark.parametrize("ports", ["8000,http", "70000", "-1"])
def test_ports_that_are_not_ports_are_fatal_for_an_agent_with_a_shell(ports: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(fence.PORTS_ENV, ports)
    with pytest.raises(ProposalError, match="is not a TCP port") as err:
        checked(CommandAgent("true"), tmp_path)
    assert err.value.fatal and "AUTORESEARCH_AGENT_PORTS=8000,11434" in (err.value.hint or "")
    assert checked(TuneAgent(), tmp_path) == []  # it has no shell: nothing to fence


@pytest.mark.parametrize("listed", ["relative/folder", "/etc/agent", "~/../elsewhere"])
def test_writable_folders_that_are_not_in_your_home_are_fatal_for_an_agent_with_a_shell(
    listed: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("AUTORESEARCH_AGENT_WRITABLE", f"~/.gemini:{listed}")
    workspace = tmp_path / "ws"  # not holding the home: a folder inside the workspace is the agent's already
    workspace.mkdir()
    with pytest.raises(ProposalError, match="which is not a folder in your home") as err:
        checked(CommandAgent("true"), workspace)
    assert err.value.fatal and "AUTORESEARCH_AGENT_WRITABLE=~/.gemini" in (err.value.hint or "")
    assert not (tmp_path / "elsewhere").exists()
    assert checked(TuneAgent(), workspace) == []  # it has no shell


@pytest.mark.parametrize(
    ("listed", "said"),
    [("~", "your home itself"), ("~/.gemini:~/.gemini/tmp", "inside another"), ("~/.local", "stays read-only")],
)
def test_writable_folders_the_agent_must_not_have_are_fatal(listed: str, said: str, tmp_path: Path, monkeypatch):
    """Your home itself, a folder inside another listed one (the agent plants a link there), and one that holds a
    place that stays read-only (~/.local holds ~/.local/bin, a folder of PATH): refused before the baseline."""
    home, workspace = tmp_path / "home", tmp_path / "ws"
    (home / ".local" / "bin").mkdir(parents=True)
    workspace.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{home}/.local/bin:{os.environ['PATH']}")
    monkeypatch.setenv("AUTORESEARCH_AGENT_WRITABLE", listed)
    with pytest.raises(ProposalError, match=said) as err:
        checked(CommandAgent("true"), workspace)
    assert err.value.fatal


def test_a_kernel_that_cannot_fence_the_agent_is_a_warning(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fence, "abi", lambda: 3)
    (warning,) = checked(CommandAgent("true"), tmp_path)
    assert "the agent's connections cannot be fenced" in warning and "ABI 3" in warning
    assert fence.launcher({})[-4] == "-"  # its turns' connections unrestricted; the rest of the fence still holds
    assert checked(TuneAgent(), tmp_path) == []


def test_a_kernel_that_cannot_set_up_a_turns_fence_is_fatal_before_anything_trains(tmp_path: Path, monkeypatch):
    """A kernel without seccomp filtering fails every turn's fence (exit 126), which the first turn found only after
    the baseline had trained: the preflight runs the fence once, and here (where it can be set up) passes."""
    assert fence.fails_here(os.environ) is None
    assert checked(CommandAgent("true"), tmp_path) == []
    said = "autoresearch: could not fence the agent's turn: [Errno 22] Invalid argument"
    monkeypatch.setattr(fence, "launcher", lambda env: ["sh", "-c", f"echo {shlex.quote(said)} >&2; exit 126", "sh"])
    with pytest.raises(ProposalError, match="cannot be fenced on this machine: autoresearch: could not fence") as err:
        checked(CommandAgent("true"), tmp_path)
    assert err.value.fatal and "seccomp" in err.value.hint
    assert checked(TuneAgent(), tmp_path) == []  # no shell, no fence


def test_a_workspace_named_through_a_link_is_a_warning_where_no_namespace_can_pin_the_link(
    tmp_path: Path, monkeypatch
) -> None:
    """Where the agent's namespace can pin (agents/namespace.py), each link on the path you named the workspace by
    is pinned for its turns (test_red_team_namespace.py); where none can be made here, a turn could point the link
    at a copy of its own, which the next start by that path opens: `run` says so, and names the real path."""
    (tmp_path / "ws").mkdir()
    (tmp_path / "current").symlink_to(tmp_path)
    named = tmp_path / "current" / "ws"
    assert not [w for w in checked_named(CommandAgent("true"), named) if "link" in w]
    monkeypatch.setattr(namespace, "can_pin", lambda: False)
    (warning,) = [w for w in checked_named(CommandAgent("true"), named) if "link" in w]
    assert f"through a link ({tmp_path / 'current'})" in warning and warning.endswith(str(named.resolve()))
    assert not [w for w in checked_named(CommandAgent("true"), tmp_path / "ws") if "link" in w]  # no link on it
    assert checked_named(TuneAgent(), named) == []  # no shell


def checked_named(agent, named: Path) -> list[str]:
    warnings: list[str] = []
    preflight(agent, named.resolve(), warnings.append, named)
    return warnings


# -- in the loop --------------------------------------------------------------------------------------


def test_the_loop_stops_before_the_baseline_when_the_agent_cannot_work(workspace) -> None:
    executor = FakeExecutor(lambda source: 1.0)
    events: list[str] = []
    loop = make_loop(workspace, executor, events=events)
    with pytest.raises(AutoresearchError, match="no-such-agent-7b1"):
        loop.run(CommandAgent("no-such-agent-7b1 -p"), max_experiments=3)
    assert executor.calls == [] and loop.ledger.all() == []


def test_a_warning_is_reported_and_the_loop_goes_on(workspace, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    executor = FakeExecutor(lambda source: 1.0)
    events: list[str] = []
    loop = make_loop(workspace, executor, baseline_runs=2, events=events)
    loop.baseline()
    loop.run(AnthropicAgent("claude-sonnet-4-6"), max_experiments=0)  # warned, and went on: no error
    assert any("warning: the anthropic agent's first request failed" in e for e in events)
    assert len(executor.calls) == 2  # the baseline's, nothing more


@pytest.mark.slow  # the CLI in a subprocess: ~5 s
def test_run_with_a_missing_command_exits_2_and_trains_nothing(
    workspace, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    args = ["run", "--agent", "command", "--command", "no-such-agent-7b1 -p", "--plain", "--workspace"]
    assert main([*args, str(workspace.root)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'no-such-agent-7b1' is not a program on PATH" in err and "Traceback" not in err
    assert not (workspace.root / "results.tsv").exists()
    assert not (workspace.root / ".autoresearch" / "runs").exists()


@pytest.mark.slow  # the CLI in a subprocess: ~5 s
def test_run_with_ports_that_are_not_ports_exits_2_and_trains_nothing(
    workspace, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv(fence.PORTS_ENV, "11434;8000")
    args = ["run", "--agent", "command", "--command", "true", "--plain", "--workspace", str(workspace.root)]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "AUTORESEARCH_AGENT_PORTS lists '11434;8000', which is not a TCP port" in err and "Traceback" not in err
    assert not (workspace.root / ".autoresearch" / "runs").exists()
