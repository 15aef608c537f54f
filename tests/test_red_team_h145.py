"""Red team (helper 145) of the day's changes: an answer's limit counted as it inflates (agents/http_client.py), and
the options a loop was started with named in the hint that finishes what it left (cli/commands.py, loop/activity.py).
Each test marked BROKE failed before its fix.

- Bytes after a gzip's end went into zlib's `unused_data`, counted by no limit and kept: a server that sent a small
  gzipped answer, then bytes without end, filled the loop's memory until the deadline (10 minutes).
- A gzip that inflates to nothing (empty deflate blocks, 5 bytes each, without end) was read until the deadline; the
  limit, counting only what came out, never met it. Before the change an answer was cut at 32 MiB as it came.
- An error compressed otherwise than asked (a proxy's brotli 401) was "an answer compressed as 'br'": its status was
  lost, a rejected key no longer stopped the loop (nor was it the preflight's rejection), and it was asked again. So
  was an error said to be gzip that was not (a proxy's 401 of plain JSON): "an answer whose gzip does not inflate".
- A --timeout was recorded and passed on (`submit`'s background loop) to 6 digits: `--timeout 1000.125` trained with
  1000.12; and `--timeout 1e6` was "1e+06", no value a hint names: a Ray loop's hint went back to a bare `--ray`
  (a Ray of this machine's own) and dropped the timeout.
- `--gpus "0, 1"` (taken: each id is stripped) was recorded so, no value a hint names: the hint dropped the rest of
  the options, a --timeout among them.
- A record of options no loop gives (a file written by hand) was named with values of another kind (`--workers two`)
  and in combinations `run` refuses (`--gpus 0 --ray`, `--accelerator` without --ray): a hint that is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest
from test_compressed_answers import limited
from test_llm_server_failures import GOOD, TRAIN_PY, _chat, agent_at
from test_red_team_h144 import server, warm

from autoresearch.agents.base import Context, ProposalError


def endless(head: bytes, more: bytes) -> Callable[[BaseHTTPRequestHandler], None]:
    """A gzipped 200 of `head`, then `more` again and again until the client shuts the connection (no length)."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Connection", "close")
        handler.end_headers()
        with contextlib.suppress(OSError):
            handler.wfile.write(head)
            while True:
                handler.wfile.write(more)
        handler.close_connection = True

    return answer


def _gzip_opened() -> bytes:
    """A gzip's header and a deflate stream begun, not ended: what follows is more of its blocks."""
    squeeze = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    return squeeze.compress(b"") + squeeze.flush(zlib.Z_SYNC_FLUSH)


_EMPTY_BLOCK = b"\x00\x00\x00\xff\xff"  # a stored deflate block of no bytes (what a sync flush writes), not the last


_USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


@pytest.mark.parametrize(
    ("head", "more"),
    [
        pytest.param(_gzip_opened(), _EMPTY_BLOCK * 13_000, id="empty deflate blocks"),
        pytest.param(
            gzip.compress(_chat({"role": "assistant", "content": GOOD}, _USAGE)),
            b"\x00" * (64 << 10),
            id="bytes after its end",
        ),
    ],
)
def test_a_gzipped_answer_that_never_ends_is_cut_at_the_limit_as_it_comes(head, more, tmp_path, monkeypatch) -> None:
    """BROKE, fixed: a gzip that inflates to nothing, or bytes after its end, came without end, and the limit (1 MiB
    here), counting what came out, never met them: the ask went on to its deadline (8 s here, 10 minutes in a loop),
    the bytes after the end kept in memory all the while. Now the limit counts what comes as well."""
    limited("openai", monkeypatch)
    monkeypatch.setattr("autoresearch.agents.openai_agent.TIMEOUT_S", 8.0)
    with server(endless(head, more)) as url:
        agent = agent_at("openai", url, monkeypatch)
        warm(agent)
        started = time.monotonic()
        with pytest.raises(ProposalError, match=r"gave an answer over 1 MiB"):
            agent.propose(Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012))
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_an_error_compressed_otherwise_than_asked_keeps_its_status(kind, tmp_path, monkeypatch) -> None:
    """BROKE, fixed: a 401 of a proxy that compresses with brotli unasked was "an answer compressed as 'br'", an
    error the loop retries: the rejected key no longer stopped it. The status is kept, the body said in words."""
    limited(kind, monkeypatch)

    def rejected(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(401)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Encoding", "br")
        handler.send_header("Content-Length", "3")
        handler.end_headers()
        handler.wfile.write(b"\x1b\x00\x00")

    with server(rejected) as url, pytest.raises(ProposalError) as err:
        agent_at(kind, url, monkeypatch).propose(Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012))
    assert "rejected the API key (HTTP 401)" in str(err.value) and err.value.fatal
    assert "compressed as 'br'" in str(err.value)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_an_error_said_to_be_gzip_that_is_not_keeps_its_status(kind, tmp_path, monkeypatch) -> None:
    """BROKE, fixed: a 401 of plain JSON under `Content-Encoding: gzip` (a proxy's, misconfigured) was "an answer whose
    gzip does not inflate", retried as a server's hiccup: the rejected key stopped nothing."""
    limited(kind, monkeypatch)
    body = b'{"error": {"message": "invalid api key"}}'

    def rejected(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(401)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with server(rejected) as url, pytest.raises(ProposalError) as err:
        agent_at(kind, url, monkeypatch).propose(Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012))
    assert "rejected the API key (HTTP 401): an answer whose gzip does not inflate" in str(err.value)
    assert err.value.fatal


def test_the_preflight_sees_a_401_compressed_otherwise_than_asked_as_the_keys(monkeypatch) -> None:
    """BROKE, fixed: the preflight's 401 compressed with brotli was "unreachable", a warning: the key went unchecked."""
    from autoresearch.agents.key_check import check_key

    def rejected(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(401)
        handler.send_header("Content-Encoding", "br")
        handler.send_header("Content-Length", "3")
        handler.end_headers()
        handler.wfile.write(b"\x1b\x00\x00")

    with server(rejected, get=True) as url:
        checked = check_key("openai", "sk-test", url, {})
    assert checked.rejected is not None and checked.unreachable is None


def _args(**given: object) -> argparse.Namespace:
    return argparse.Namespace(
        **{"gpus": None, "workers": None, "timeout": None, "accelerator": None, "ray": None} | given
    )


@pytest.mark.parametrize(
    ("timeout", "said"),
    [(1000.125, "1000.125"), (1e6, "1000000"), (500.0, "500"), (0.1, "0.1"), (1e20, "1e+20")],
)
def test_a_timeout_is_passed_on_and_named_as_it_was_given(timeout, said, tmp_path) -> None:
    """BROKE, fixed: `submit --timeout 1000.125` started its loop with --timeout 1000.12 (6 digits), and a loop of
    `--ray 10.0.0.7:6379 --timeout 1e6` recorded "1e+06", which no hint names: the hint said a bare `--ray` (a Ray of
    this machine's) and no timeout."""
    from autoresearch.cli.commands import placement
    from autoresearch.loop import activity

    placed = placement(_args(timeout=timeout, ray="10.0.0.7:6379"))
    assert placed == ["--timeout", said, "--ray", "10.0.0.7:6379"] and float(said) == timeout
    activity.start_session(tmp_path, ["ray 0"], time.time(), placement=placed)
    activity.end_session(tmp_path)
    assert activity.run_command(tmp_path) == f"`autoresearch run --timeout {said} --ray 10.0.0.7:6379`"


def test_gpus_given_with_spaces_leave_the_other_options_in_the_hint(tmp_path) -> None:
    """BROKE, fixed: `run --gpus "0, 1" --timeout 900` (taken: each id is stripped) recorded "0, 1", no value a hint
    names: the hint went back to the workers' labels, `--gpus 0,1`, and dropped the timeout."""
    from autoresearch.cli.commands import placement
    from autoresearch.loop import activity

    placed = placement(_args(gpus="0, 1", timeout=900.0))
    activity.start_session(tmp_path, ["gpu 0", "gpu 1"], time.time(), placement=placed)
    activity.end_session(tmp_path)
    assert activity.run_command(tmp_path) == "`autoresearch run --gpus 0,1 --timeout 900`"


@pytest.mark.parametrize(
    ("workers", "placement", "options"),
    [
        (["gpu 0"], ["--gpus", "0", "--ray"], " --gpus 0"),
        (["cpu 0", "cpu 1"], ["--workers", "two"], " --workers 2"),
        (["ray 0"], ["--accelerator", "H100"], " --ray"),
        (["cpu 0"], ["--timeout", "soon"], " --workers 1"),
        (["ray 0"], ["--ray", None], " --ray"),  # BROKE, fixed: `--ray None`
    ],
)
def test_a_hand_written_record_gives_no_hint_that_is_refused(workers, placement, options, tmp_path) -> None:
    """BROKE, fixed: a record of options no loop gives (a file written by hand) was named as it was, values of another
    kind and all: `--gpus 0 --ray` (refused: both), `--workers two`, `--accelerator H100` without --ray. The workers'
    labels say what they can instead."""
    from autoresearch.loop import activity

    activity.start_session(tmp_path, workers, time.time(), placement=placement)
    activity.end_session(tmp_path)
    assert activity.run_command(tmp_path) == f"`autoresearch run{options}`"
