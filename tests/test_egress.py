"""A shell agent's turn reaches the model APIs and the endpoints its environment names, and no other host
(agents/egress.py): a hub that serves a dataset's validation text, a server of yours, the internet by UDP or by a
direct connection are out of its reach, and what it was refused is said.

The turns run through the real machinery (`run_process`: namespaces, fence, the loop's proxy), each with a server of
this test's on 127.0.0.1 standing in for a host on the internet. The proxy's own tests drive it as its forwarder
would, without a namespace."""

from __future__ import annotations

import http.server
import os
import shlex
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from tcp_servers import Accepting

from autoresearch.agents import base, egress, namespace
from autoresearch.agents.base import Context, ProposalError
from autoresearch.agents.command_agent import CommandAgent, run_process

PY = shlex.quote(sys.executable)
needs_isolation = pytest.mark.skipif(
    not namespace.isolates_network(), reason="no user namespace with a network of its own can be made here"
)


class Site:
    """An HTTP server on this machine that answers every GET with `body` and notes each path asked for. On 127.0.0.2
    (another address of the loopback, which stands for a host on the internet): 127.0.0.1 the turn reaches directly,
    where its forwarder tunnels the local endpoints."""

    def __init__(self, body: bytes = b"VALIDATION TEXT", host: str = "127.0.0.2") -> None:
        self.host = host
        asked = self.asked = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                asked.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((self.host, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site():
    s = Site()
    yield s
    s.close()


def turn(tmp_path: Path, script: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the Python `script` as a turn's command in a workspace of its own."""
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    return run_process(f"{PY} -c {shlex.quote(script)}", workspace, "", env, 60, "a test agent")


FETCH = """
import urllib.request
try:
    print("got", urllib.request.urlopen({url!r}, timeout=10).read().decode())
except Exception as err:
    print("refused", err)
"""


@pytest.mark.slow
@needs_isolation
def test_a_turn_cannot_fetch_the_validation_text_from_a_host_that_is_no_model_api(tmp_path, site, monkeypatch):
    """BROKE, fixed: a turn reached any host on port 443 (the fence is by port), and so a hub's public validation
    file, from which a table of the scored tokens could go into train.py (red team). Through its proxy the hub is
    refused, and so is every way around the proxy: a direct connection to a port the fence allows, and UDP."""
    monkeypatch.setenv("AUTORESEARCH_AGENT_PORTS", str(site.port))  # the fence would let it through: not the proxy
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.5)
    hub = f"http://{site.host}:{site.port}/datasets/shard_06542.parquet"
    script = FETCH.format(url=hub) + (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(({site.host!r}, {site.port}), timeout=5); print('direct: reached')\n"
        "except OSError as err:\n"
        "    print('direct:', err.strerror)\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "try:\n"
        f"    u.sendto(b'let me out', ('127.0.0.1', {udp.getsockname()[1]}))\n"
        "except OSError as err:\n"
        "    print('udp:', err.strerror)\n"
    )
    code, out, err = turn(tmp_path, script, dict(os.environ))
    assert code == 0, err
    assert "refused HTTP Error 403: Forbidden" in out
    assert "direct: Connection refused" in out  # its own loopback: nothing of yours listens there
    with pytest.raises(TimeoutError):
        udp.recvfrom(100)
    assert site.asked == [], "the turn fetched from a host that is no model API"
    assert f"may not reach {site.host}:{site.port}" in err and egress.HOSTS_ENV in err


@pytest.mark.slow
@needs_isolation
def test_a_turn_reaches_its_model_endpoint_and_the_hosts_you_list(tmp_path, site, monkeypatch):
    """The endpoint its environment names on this machine (a local model server, at an address of the loopback) is
    tunnelled into its namespace, and a host you list in AUTORESEARCH_AGENT_HOSTS is reached through its proxy."""
    model, listed = site, Site(b"PAPER", "127.0.0.3")
    try:
        monkeypatch.setenv("OPENAI_BASE_URL", f"http://{model.host}:{model.port}/v1")
        monkeypatch.setenv(egress.HOSTS_ENV, f"{listed.host}:{listed.port}")
        script = FETCH.format(url=f"http://{model.host}:{model.port}/v1/models") + FETCH.format(
            url=f"http://{listed.host}:{listed.port}/abs/2401.00001"
        )
        code, out, err = turn(tmp_path, script, dict(os.environ))
    finally:
        listed.close()
    assert code == 0, err
    assert out.splitlines() == ["got VALIDATION TEXT", "got PAPER"]
    assert model.asked == ["/v1/models"] and listed.asked == ["/abs/2401.00001"]
    assert "may not reach" not in err


class UpstreamProxy(Accepting):
    """A proxy of yours (HTTPS_PROXY): it notes each CONNECT, answers 200, then echoes what it is sent."""

    def __init__(self) -> None:
        self.connects: list[str] = []
        super().__init__()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                if not (data := conn.recv(1024)):
                    return
                head += data
            self.connects.append(head.split(b"\r\n")[0].decode())
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            while data := conn.recv(1024):
                conn.sendall(data)


CONNECT = """
import os, socket
def tunnel(target):
    s = socket.create_connection(("127.0.0.1", int(os.environ["HTTPS_PROXY"].rsplit(":", 1)[1])), timeout=10)
    s.sendall(f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n".encode())
    head = s.recv(4096).split(b"\\r\\n")[0].decode()
    if " 200 " in head:
        s.sendall(b"ping")
        head += " " + s.recv(100).decode()
    return head
print(tunnel("api.anthropic.com:443"))
print(tunnel("huggingface.co:443"))
print(tunnel("api.anthropic.com:8080"))
"""


@pytest.mark.slow
@needs_isolation
def test_a_model_api_is_reached_through_your_proxy_and_a_hub_is_not(tmp_path, monkeypatch):
    """The model APIs are allowed on 443, through the proxy your environment names (its CONNECT is the turn's);
    the hub is refused before your proxy hears of it, and so is a model API's host on another port."""
    upstream = UpstreamProxy()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{upstream.port}")
    code, out, err = turn(tmp_path, CONNECT, dict(os.environ))
    assert code == 0, err
    assert out.splitlines() == [
        "HTTP/1.1 200 Connection established ping",
        "HTTP/1.1 403 Forbidden",
        "HTTP/1.1 403 Forbidden",
    ]
    assert upstream.connects == ["CONNECT api.anthropic.com:443 HTTP/1.1"]
    assert "may not reach huggingface.co:443, api.anthropic.com:8080" in err


@pytest.mark.slow
@needs_isolation
def test_a_turn_that_fails_for_a_refused_host_says_so_in_its_error(tmp_path, site):
    """A turn that gives up for want of a host ends with the hosts refused and how to allow one, where you read why
    it failed (the experiment's reason)."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "train.py").write_text("LR = 0.1\n")
    fetch = FETCH.format(url=f"http://{site.host}:{site.port}/val").replace('print("refused", err)', "raise")
    script = tmp_path / "agent.py"
    script.write_text(fetch)
    context = Context(workspace=workspace, program="", train_py="LR = 0.1\n", best_bpb=None, noise=None)
    with pytest.raises(ProposalError, match=f"may not reach {site.host}:{site.port}"):
        CommandAgent(f"{PY} {shlex.quote(str(script))}", timeout_s=60).propose(context)


def test_what_a_turn_may_reach() -> None:
    """The model APIs on 443 (a `*` is one label of a name), each endpoint's host on its port but the hub's
    (HF_ENDPOINT: a mirror holds the validation text), and the hosts you list."""
    env = {
        "ANTHROPIC_BASE_URL": "https://gateway.example.com:8443/anthropic",
        "HF_ENDPOINT": "https://hf-mirror.example.com",
        egress.HOSTS_ENV: "arxiv.org, *.example.org:8000",
    }
    rules = egress.allowed(env)

    def allows(host: str, port: int) -> bool:
        return any(rule.allows(host, port) for rule in rules)

    assert allows("api.anthropic.com", 443) and not allows("api.anthropic.com", 80)
    assert allows("bedrock-runtime.us-east-1.amazonaws.com", 443)
    assert not allows("bedrock-runtime.evil.s3.amazonaws.com", 443)
    assert not allows("x.api.openai.com", 443) and not allows("api.openai.com.evil.net", 443)
    assert allows("gateway.example.com", 8443) and not allows("gateway.example.com", 443)
    assert not allows("hf-mirror.example.com", 443) and not allows("huggingface.co", 443)
    assert allows("arxiv.org", 443) and allows("arxiv.org", 80) and not allows("export.arxiv.org", 443)
    assert allows("a.example.org", 8000) and not allows("a.b.example.org", 8000) and not allows("a.example.org", 443)
    assert egress.local_endpoints({"OPENAI_BASE_URL": "http://localhost:11434/v1", **env}) == ["localhost:11434"]


@pytest.mark.parametrize("listed", ["http://arxiv.org", "arxiv.org:99999", "a b/c", "arxiv.org:"])
def test_a_host_list_that_names_no_host_stops_run_at_once(tmp_path, monkeypatch, listed) -> None:
    monkeypatch.setenv(egress.HOSTS_ENV, listed)
    with pytest.raises(ProposalError, match=egress.HOSTS_ENV) as raised:
        base.preflight(CommandAgent("true"), tmp_path, print)
    assert raised.value.fatal and egress.HOSTS_ENV in raised.value.hint


class Forwarder:
    """What agents/forwarder.py does, without a namespace: it connects to the proxy, and hands it each connection
    (here one end of a socket pair, whose other end, the agent's client, `hand` returns)."""

    def __init__(self, proxy: egress.Egress) -> None:
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control.connect(str(proxy.socket))

    def hand(self, target: bytes) -> socket.socket:
        ours, theirs = socket.socketpair()
        socket.send_fds(self.control, [target], [theirs.fileno()])
        theirs.close()
        ours.settimeout(5)
        return ours


def test_the_proxy_takes_its_forwarder_alone_and_ends_every_connection_with_the_turn() -> None:
    """Its socket is gone once the forwarder has connected: no process of the turn can connect to it after that. A
    connection still open when the turn ends is cut."""
    echo = socket.create_server(("127.0.0.2", 0))
    threading.Thread(target=lambda: _echo(echo.accept()[0]), daemon=True).start()
    with egress.Egress({egress.HOSTS_ENV: f"127.0.0.2:{echo.getsockname()[1]}"}) as proxy:
        client = Forwarder(proxy).hand(b"-")
        deadline = time.monotonic() + 5
        while proxy.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not proxy.socket.exists()
        late = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with pytest.raises(FileNotFoundError):
            late.connect(str(proxy.socket))
        client.sendall(f"CONNECT 127.0.0.2:{echo.getsockname()[1]} HTTP/1.1\r\n\r\n".encode())
        assert client.recv(100) == b"HTTP/1.1 200 Connection established\r\n\r\n"
        client.sendall(b"ping")
        assert client.recv(100) == b"ping"  # and the echo server keeps it open
    assert client.recv(100) == b""  # the turn ended: so did its connection
    echo.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(1024):
            conn.sendall(data)


def test_the_proxy_refuses_what_is_no_request_and_a_tunnel_to_an_endpoint_not_named(site) -> None:
    with egress.Egress({}) as proxy:
        forwarder = Forwarder(proxy)
        garbage = forwarder.hand(b"-")
        garbage.sendall(b"\x16\x03\x01 hello\r\n\r\n")
        assert garbage.recv(100).startswith(b"HTTP/1.1 400 ")
        tunnel = forwarder.hand(f"{site.host}:{site.port}".encode())  # the forwarder may be the agent's: it asks
        assert tunnel.recv(100).startswith(b"HTTP/1.1 403 ")
        plain = forwarder.hand(b"-")
        plain.sendall(f"GET http://{site.host}:{site.port}/x HTTP/1.1\r\nHost: {site.host}\r\n\r\n".encode())
        assert plain.recv(100).startswith(b"HTTP/1.1 403 ")
    assert site.asked == []
    assert proxy.refused == [f"{site.host}:{site.port}"] * 2


def test_where_a_turn_cannot_have_a_network_of_its_own_run_says_what_it_reaches(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(namespace, "isolates_network", lambda: False)
    said: list[str] = []
    base.preflight(CommandAgent("true"), tmp_path, said.append)
    assert any("cannot have a network of their own" in line and "validation text" in line for line in said), said


def test_the_proxy_takes_a_short_path_where_your_temporary_folder_is_deep(tmp_path, monkeypatch) -> None:
    """A Unix socket's path holds 108 bytes: under a deep $TMPDIR, binding the proxy's raised an OSError."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with egress.Egress({}) as proxy:
        assert len(str(proxy.socket)) < 100 and proxy.socket.exists()
