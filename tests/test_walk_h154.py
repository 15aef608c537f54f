"""aider, Claude Code and Codex, as shipped, complete a turn whose model endpoint is REMOTE: reached only through the
turn's proxy (agents/egress.py) and, from there, through the proxy your environment names (the loop's HTTPS_PROXY).

Users' agents talk to api.anthropic.com, api.openai.com or a gateway (https://llm.corp.example:8443), not to a
server on 127.0.0.1, which tests/test_coding_agents.py covers. With no internet here, a proxy of this test's stands
for yours and for the internet behind it: it notes each CONNECT and joins the host it names (llm.example.test:8080,
api.anthropic.com:443, ...) to the fake LLM server (tests/fake_llm.py) on 127.0.0.1, in plain HTTP or, for an https
endpoint, in TLS with a certificate of a CA this test makes (given to each agent by its own variable).

Each test runs the baseline (fake executor) and one turn of the real program in the agent's namespace (no launcher:
the loop's own network namespace, forwarder and proxy), and checks that the turn is kept with its tokens, that it
asked only for the endpoint's host (your proxy's CONNECT lines), that the loop's proxy refused nothing, and that the
turn did not wait on a timeout. All three do, in TLS, to their default API and to a gateway, and in plain HTTP. Three
things failed at first, each tested here: Claude Code's plain-HTTP endpoint (it kept its proxy connection alive, and
its second request went on in absolute form), a plain-HTTP endpoint behind your HTTP_PROXY alone (it went around it),
and your proxy's credentials (http://user:password@proxy:3128: not sent).
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from agent_support import turn_through_the_loop, use_installed_agents
from fake_llm import _Handler, _Server
from loop_support import constant
from tcp_servers import Accepting
from test_agent_turn import assert_the_loop_owns_the_workspace
from test_coding_agents import HYPOTHESIS, NEW, OLD, aider_block, claude_edit, codex_edit
from test_egress import Forwarder

from autoresearch.agents import egress, namespace
from autoresearch.agents.coding_agent import CodingAgent
from autoresearch.agents.recipes import recipe
from autoresearch.vocabulary import Status

pytestmark = pytest.mark.skipif(
    not namespace.isolates_network(), reason="no user namespace with a network of its own can be made here"
)
REMOTE = "llm.example.test"  # a name no resolver knows: only your proxy can reach it
TURN_S = 30.0  # a turn of a fake model takes a few seconds; one that waited on a timeout takes longer


class YourProxy(Accepting):
    """The proxy your environment names (HTTPS_PROXY, HTTP_PROXY): it notes each request's line (`connects`) and the
    host:port it asks for (`asked`), joins a target it knows (`routes`: "host:port" -> a port on 127.0.0.1) by a
    CONNECT tunnel, or for a plain-HTTP request (absolute-form), forwards that one request, and answers 502 to any
    other, as a proxy with no route would; 407 to one without the `credentials` ("user:password") it wants."""

    def __init__(self, routes: dict[str, int], credentials: str = "") -> None:
        self.routes = routes
        self.credentials = credentials
        self.connects: list[str] = []
        self.asked: list[str] = []
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}"

    def _one(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                if not (data := conn.recv(4096)):
                    return
                head += data
            line = head.split(b"\r\n")[0].decode(errors="replace")
            self.connects.append(line)
            method, target, _ = [*line.split(" "), "", ""][:3]
            wanted = f"proxy-authorization: basic {base64.b64encode(self.credentials.encode()).decode()}".lower()
            if self.credentials and wanted not in head.decode(errors="replace").lower().split("\r\n"):
                conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                return
            plain = urlsplit(target) if method != "CONNECT" and target.startswith("http://") else None
            if plain is not None:
                target = f"{plain.hostname}:{plain.port or 80}"
            self.asked.append(target)
            if target not in self.routes:
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            with socket.create_connection(("127.0.0.1", self.routes[target]), timeout=10) as server:
                server.settimeout(None)
                if plain is None:
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    return relay(conn, server)
                # One request a connection: in origin-form, and both ends told the connection then closes.
                head, _, rest = head.partition(b"\r\n\r\n")
                origin = f"{method} {plain.path or '/'}{'?' + plain.query if plain.query else ''} HTTP/1.1"
                server.sendall(closing(origin.encode() + b"\r\n" + head.partition(b"\r\n")[2]) + rest)
                relay(conn, server, answer=closing)


def closing(head: bytes) -> bytes:
    """A head (without its blank line) that says `Connection: close`, without the fields of a proxy's hop."""
    line, *fields = head.split(b"\r\n")
    hop = (b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization")
    kept = [f for f in fields if f.split(b":", 1)[0].strip().lower() not in hop]
    return b"\r\n".join([line, *kept, b"Connection: close"]) + b"\r\n\r\n"


def relay(a: socket.socket, b: socket.socket, answer=None) -> None:
    """Bytes both ways between `a` and `b` until both have closed; the head of what `b` sends, through `answer`."""

    def copy(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            data = b""
            if src is b and answer is not None:
                while b"\r\n\r\n" not in data and (chunk := src.recv(65536)):
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                dst.sendall(answer(head) + data)
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    other = threading.Thread(target=copy, args=(b, a), daemon=True)
    other.start()
    copy(a, b)
    other.join()


class TestCA:
    """A CA of this test's (`pem`, what an agent is told to trust), and a server certificate it signed for `hosts`."""

    __test__ = False

    def __init__(self, folder: Path, hosts: list[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.pem, key = folder / "ca.pem", folder / "ca.key"
        cert, cert_key, request, ext = (folder / n for n in ("server.pem", "server.key", "server.csr", "server.ext"))

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(self.pem), "-days", "2",
            "-subj", "/CN=autoresearch test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        openssl(
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(cert_key), "-out", str(request),
            "-subj", f"/CN={hosts[0]}",
        )  # fmt: skip
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(f'DNS:{h}' for h in hosts)}\n"
        )
        openssl(
            "x509", "-req", "-in", str(request), "-CA", str(self.pem), "-CAkey", str(key), "-CAcreateserial",
            "-out", str(cert), "-days", "2", "-extfile", str(ext),
        )  # fmt: skip
        self.server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server.load_cert_chain(cert, cert_key)


def tls_front(fake, ca: TestCA) -> tuple[int, _Server]:
    """The fake LLM server again, speaking TLS with the CA's server certificate: the host behind your proxy."""

    class Server(_Server):
        def finish_request(self, request, client_address) -> None:  # the handshake in the request's thread
            try:
                request = ca.server.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
            super().finish_request(request, client_address)

    server = Server(("127.0.0.1", 0), _Handler)
    server.fake = fake
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server.server_address[1], server


@pytest.fixture
def proxies(monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    """Each turn's proxy of the loop (egress.Egress), as made; and no NO_PROXY of the machine's."""
    made: list[egress.Egress] = []

    class Recorded(egress.Egress):
        def __init__(self, env) -> None:
            super().__init__(env)
            made.append(self)

    monkeypatch.setattr(egress, "Egress", Recorded)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield made


@pytest.fixture
def remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxies) -> Iterator:
    """`remote(fake, url_env, url, target, tls=None)`: the endpoint variable `url_env` set to `url` (or unset: the
    agent's default), your proxy in HTTPS_PROXY joining `target` (host:port) to `fake` (through `tls_front` where
    `tls` is a TestCA); the installed agents on PATH, in a home of their own."""
    made: list = []
    home = tmp_path / "home"
    home.mkdir()
    use_installed_agents(home, monkeypatch)

    def start(fake, url_env: str, url: str | None, target: str, tls: TestCA | None = None) -> YourProxy:
        port = int(fake.url.split(":")[2].split("/")[0])
        if tls is not None:
            port, server = tls_front(fake, tls)
            made.append(server)
        yours = YourProxy({target: port})
        made.append(yours)
        monkeypatch.setenv("HTTPS_PROXY", yours.url)
        monkeypatch.setenv("HTTP_PROXY", yours.url)  # as a user behind a proxy sets both: http:// URLs use this one
        if url is None:
            monkeypatch.delenv(url_env, raising=False)
        else:
            monkeypatch.setenv(url_env, url)
        return yours

    yield start
    for thing in made:
        if isinstance(thing, YourProxy):
            thing.close()
        else:
            thing.shutdown()
            thing.server_close()


@contextlib.contextmanager
def request_lines() -> Iterator[list[str]]:
    """Every request the fake LLM servers were sent, as METHOD PATH (without its query): whatever the path or method
    (a WebSocket's upgrade is a GET), in plain HTTP or through `tls_front`; not the loop's own (its key check before
    the baseline, with autoresearch's client, through HTTPS_PROXY as the loop was given it)."""
    lines: list[str] = []
    parse = _Handler.parse_request

    def noted(self) -> bool:
        ok = parse(self)
        if ok and self.headers.get("user-agent", "").startswith("python-httpx"):
            return ok
        lines.append(f"{self.command} {self.path.split('?')[0]}" if ok else self.requestline)
        return ok

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_Handler, "parse_request", noted)
        yield lines


def a_remote_turn(workspace, name: str, yours: YourProxy, proxies: list, fake, also: tuple[str, ...] = ()) -> tuple:
    """One turn of agent `name` through the loop, and what its proxy and yours saw: it was kept, quickly, and asked
    the endpoint for nothing but the API's (and the requests in `also`)."""
    agent = CodingAgent(recipe(name), timeout_s=120)
    start = time.monotonic()
    with request_lines() as lines:
        exp, before = turn_through_the_loop(workspace, agent)
    took = time.monotonic() - start
    refused = [host for proxy in proxies for host in proxy.refused]
    seen = f"{name}: kept? {exp.status} in {took:.1f} s; your proxy was asked: {yours.connects}; refused: {refused}"
    print(seen)
    assert exp.status == Status.KEEP and constant(exp.source, "LR") == 0.2, f"{seen}\n{exp.reason}"
    assert proxies and refused == [], seen  # its turn's proxy of the loop (and its sandbox check's) refused nothing
    assert fake.requests and set(lines) - set(also) == {f"POST {fake.requests[0].path}"}, lines  # no WebSocket
    assert took < TURN_S, seen
    assert_the_loop_owns_the_workspace(workspace, exp, before)
    return exp, yours.asked


# -- plain http: a gateway at http://llm.example.test:8080, reached only through your proxy ---------------


@pytest.mark.slow  # a real Node program: ~2 s a turn
def test_claude_code_reaches_a_remote_endpoint_through_your_proxy(workspace, fake_anthropic, remote, proxies):
    yours = remote(fake_anthropic, "ANTHROPIC_BASE_URL", f"http://{REMOTE}:8080", f"{REMOTE}:8080")
    claude_edit(fake_anthropic, workspace)
    exp, asked = a_remote_turn(workspace, "claude-code", yours, proxies, fake_anthropic)
    assert set(asked) == {f"{REMOTE}:8080"}
    assert (exp.input_tokens, exp.output_tokens) == (4300, 410)
    assert fake_anthropic.requests[0].path == "/v1/messages"


@pytest.mark.slow  # a real Node program: ~2 s a turn
def test_codex_reaches_a_remote_endpoint_through_your_proxy(workspace, fake_openai, remote, proxies):
    yours = remote(fake_openai, "OPENAI_BASE_URL", f"http://{REMOTE}:8080/v1", f"{REMOTE}:8080")
    codex_edit(fake_openai)
    exp, asked = a_remote_turn(workspace, "codex", yours, proxies, fake_openai)
    assert set(asked) == {f"{REMOTE}:8080"}
    assert (exp.input_tokens, exp.output_tokens) == (4200, 350)
    assert fake_openai.requests[0].path == "/v1/responses"


@pytest.mark.slow  # aider imports litellm: ~6 s a turn on 2 busy cores
def test_aider_reaches_a_remote_endpoint_through_your_proxy(workspace, fake_openai, remote, proxies):
    yours = remote(fake_openai, "OPENAI_BASE_URL", f"http://{REMOTE}:8080/v1", f"{REMOTE}:8080")
    fake_openai.reply(f"{HYPOTHESIS}\n\n{aider_block('train.py', OLD, NEW)}", input_tokens=2345, output_tokens=67)
    exp, asked = a_remote_turn(workspace, "aider", yours, proxies, fake_openai)
    assert set(asked) == {f"{REMOTE}:8080"}
    assert (exp.input_tokens, exp.output_tokens) == (2345, 67)
    assert fake_openai.requests[0].path == "/v1/chat/completions"


# -- https: the agent's default API, or a gateway, in TLS through your proxy, trusting a CA of the test's --------

ENDPOINTS = {  # agent -> the endpoint variable; the default's host; what it is told of the CA
    "claude-code": ("ANTHROPIC_BASE_URL", "api.anthropic.com", "NODE_EXTRA_CA_CERTS"),
    "codex": ("OPENAI_BASE_URL", "api.openai.com", "CODEX_CA_CERTIFICATE"),
    "aider": ("OPENAI_BASE_URL", "api.openai.com", "SSL_CERT_FILE"),
}
GATEWAY = "llm.corp.example:8443"


def script(name: str, fake, workspace) -> None:
    if name == "claude-code":
        claude_edit(fake, workspace)
    elif name == "codex":
        codex_edit(fake)
    else:
        fake.reply(f"{HYPOTHESIS}\n\n{aider_block('train.py', OLD, NEW)}", input_tokens=2345, output_tokens=67)


@pytest.mark.slow  # real programs: 2-6 s a turn
@pytest.mark.parametrize("where", ["default", "gateway"])
@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_an_agent_reaches_its_https_endpoint_through_your_proxy(name, where, request, workspace, remote, proxies):
    """The default API (no endpoint variable set: what most users run) or a gateway on another port, in TLS: each
    agent speaks TLS through its turn's proxy and yours, to the host it was given, trusting the CA it was told of."""
    fake = request.getfixturevalue("fake_anthropic" if name == "claude-code" else "fake_openai")
    url_env, default, ca_env = ENDPOINTS[name]
    target = f"{default}:443" if where == "default" else GATEWAY
    url = None if where == "default" else f"https://{GATEWAY}" + ("/v1" if url_env.startswith("OPENAI") else "")
    ca = TestCA(workspace.root.parent / "ca", [default, GATEWAY.split(":")[0]])
    yours = remote(fake, url_env, url, target, tls=ca)
    request.getfixturevalue("monkeypatch").setenv(ca_env, str(ca.pem))
    script(name, fake, workspace)
    # Claude Code asks its first-party API (not a gateway) for your organization's managed settings and policy limits
    # at start, --bare and CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC notwithstanding: the same host, allowed.
    managed = ("GET /api/claude_code/settings", "GET /api/claude_code/policy_limits")
    also = managed if (name, where) == ("claude-code", "default") else ()
    _, asked = a_remote_turn(workspace, name, yours, proxies, fake, also)
    assert set(asked) == {target}


# -- the loop's proxy and yours, without an agent: what the turns above rest on ------------------------------


def exchange(client: socket.socket, request: str) -> tuple[str, bytes, bool]:
    """Send `request` (a head) on `client`, and read one answer: its status line, its body (by Content-Length), and
    whether it says the connection closes after it (`Connection: close`)."""
    client.sendall(request.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        if not (chunk := client.recv(65536)):
            return "(closed)", data, True
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = {k.lower(): v for k, v in (line.split(": ", 1) for line in head.decode().split("\r\n")[1:])}
    while len(body) < int(fields.get("content-length", "0")) and (chunk := client.recv(65536)):
        body += chunk
    return head.decode().split("\r\n")[0], body, fields.get("connection", "").lower() == "close"


def models(host: str = f"{REMOTE}:8080") -> str:
    """A plain-HTTP request for the model list, in absolute-form, as a client sends it to an HTTP proxy."""
    return f"GET http://{host}/v1/models HTTP/1.1\r\nHost: {host}\r\nProxy-Connection: Keep-Alive\r\n\r\n"


def test_each_plain_http_request_on_a_kept_alive_proxy_connection_reaches_the_endpoint_in_origin_form(fake_openai):
    """A client keeps its connection to an HTTP proxy alive, unless told it closes, and sends its next request on it,
    again in absolute-form (Claude Code's 2nd request of a turn, litellm's retry): the server must get each in
    origin-form, as it does the first (rewritten, or on a connection of its own)."""
    yours = YourProxy({f"{REMOTE}:8080": int(fake_openai.url.split(":")[2].split("/")[0])})
    env = {"OPENAI_BASE_URL": f"http://{REMOTE}:8080/v1", "HTTPS_PROXY": yours.url, "HTTP_PROXY": yours.url}
    answers = []
    with request_lines() as lines, egress.Egress(env) as proxy:
        forwarder, client = Forwarder(proxy), None
        for _ in range(2):
            client = client or forwarder.hand(b"-")
            answer, _, closes = exchange(client, models())
            answers.append(answer)
            client = None if closes else client
    yours.close()
    assert answers == ["HTTP/1.1 200 OK"] * 2, lines
    assert lines == ["GET /v1/models"] * 2


def test_a_plain_http_endpoint_on_another_port_is_reached_through_your_http_proxy(fake_openai):
    yours = YourProxy({f"{REMOTE}:8080": int(fake_openai.url.split(":")[2].split("/")[0])})
    env = {"OPENAI_BASE_URL": f"http://{REMOTE}:8080/v1", "HTTP_PROXY": yours.url}
    with egress.Egress(env) as proxy:
        answer, body, _ = exchange(Forwarder(proxy).hand(b"-"), models())
    yours.close()
    assert answer == "HTTP/1.1 200 OK", body
    assert yours.asked == [f"{REMOTE}:8080"]


def test_your_proxy_that_wants_credentials_is_given_those_in_its_url(fake_openai):
    yours = YourProxy({"api.openai.com:443": int(fake_openai.url.split(":")[2].split("/")[0])}, "alice:s3cret")
    env = {"HTTPS_PROXY": yours.url.replace("http://", "http://alice:s3cret@")}
    with egress.Egress(env) as proxy:
        client = Forwarder(proxy).hand(b"-")
        answer, *_ = exchange(client, "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
    yours.close()
    assert answer == "HTTP/1.1 200 Connection established"
