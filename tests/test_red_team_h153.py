"""Red team (helper 153) of a shell agent's network of its own (agents/egress.py, agents/forwarder.py, the `isolated`
way of agents/namespace.py): the proxy in the loop that is its one way out. Each test marked BROKE failed before its
fix.

- The proxy connects by name, and lets the bytes of a CONNECT through unread: a tunnel to an allowed host whose TLS
  hello named another site (SNI) was that site wherever both are served from the same addresses, as every model API
  is (Cloudflare's: api.openai.com, api.anthropic.com, claude.ai, chatgpt.com, openrouter.ai; Google's front end:
  every *.googleapis.com), and a CDN serves a public copy of a hub's validation text, or a worker that fetches it.
  A hello now names the host of its CONNECT, or none, whole in its first record, with no encrypted hello (ECH).
- A plain request (absolute-form) went on with its fields as sent: a Host of another site's went to the host
  allowed (a CDN, any server of many sites, served the site named), and so did a second request on the connection
  (keep-alive), whatever host it named. The proxy now names the host itself, asks for one answer (Connection:
  close), and refuses a head with a bare CR or LF or a folded line (a field hidden in another's line).
- Each refused host was kept (`Egress.refused`), each up to 64 KiB long: a turn that asked for new long names again
  and again grew the loop's memory without bound, and the turn's output (and the experiment's reason) with it.
  A name is now one of DNS's (253 characters at most), and the first REFUSED_KEPT refusals are kept, the rest
  counted.
- The model APIs' `bedrock-runtime.*.amazonaws.com` let in bedrock-runtime.s3.amazonaws.com, a name S3 answers (its
  DNS answers any name there), where a request names the public bucket it reads. The `*` is now an AWS region.
- A turn's connections were capped at 512 sockets of the loop's, its ends and the hosts' alike, and one still
  connecting held one more: 700 CONNECTs to a host slow to answer held 1,025 descriptors of the loop's, past a soft
  limit of 1,024, where the loop could open nothing else. The cap now counts the agent's ends (MAX_CONNECTIONS).
- A port of a digit no ASCII one (`CONNECT host:\\xb2`, "²" to `str.isdigit`) raised ValueError in the proxy's
  thread: the connection cut without an answer, and a traceback on the loop's stderr (its log) for each one.
- A name a wildcard allows with a label over 63 characters (`*-aiplatform.googleapis.com`) raised UnicodeError in
  the resolver (its IDNA codec), no OSError: the same, a traceback on the loop's stderr for each request. A name is
  now one DNS takes (each label 63 at most, none empty).
- The same through a CONNECT to the host's plain port (80 for a host you list, or a plain endpoint's), which a
  tunnel took unread: a tunnel's first bytes, where they are an HTTP request (an upper-case method), are now made
  one request to its host as well; HTTP/2 without TLS (h2c), whose host is in its frames, is cut.
- (Honest use) A proxy of yours whose URL names a user and password (`HTTPS_PROXY=http://user:pass@proxy:3128`) was
  connected through without them: one that asks for them refused every turn its model API.

What held (tried, no fix): the agent cannot trace the forwarder, read its descriptors nor its memory (root of the
first user namespace, with every capability there: the kernel's capability check refuses a tracer of a user
namespace below, Landlock or none); the egress socket's path, gone once the forwarder is accepted (the first
connection in the listener's queue is its, made before the agent starts; through the turn's own /tmp, an overlay,
a socket of another loop's is seen and refuses a connection); the agent's own loopback, UDP, ICMP and raw sockets,
netlink, and interfaces of its own (a dummy, a tun: EPERM, the network namespace is the first user namespace's) reach
nothing outside; userinfo, a fragment or percent-encoding in an absolute URL, a CONNECT target with a bracketed
address or another case, and a trailing dot are refused or are the host they name, the one connected to.

What is left (the proxy cannot see it): a request within TLS to another name of the certificate the hello named
(HTTP/2 reuses a connection for each name it covers: *.googleapis.com's covers storage.googleapis.com, public
buckets); in a tunnel of plain HTTP, a request whose method is not upper case (which servers refuse, as HTTP's
methods are case-sensitive); and within a protocol other than HTTP and TLS to a host you list, what it names.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import resource
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from tcp_servers import Accepting
from test_egress import Forwarder, needs_isolation, turn

from autoresearch.agents import egress

# A certificate (for "localhost", self-signed, until 2126) of a test server that serves sites by the name a TLS hello
# asks for (SNI), as a CDN's address serves each of its customers'.
CERTIFICATE = """-----BEGIN CERTIFICATE-----
MIIBfzCCASWgAwIBAgIUTy3QTiaC6f+4CTYNdRrdUZej0J0wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwNzIyNTU1OVoYDzIxMjYxMTEz
MjI1NTU5WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAARZChGTuhQgqr1yb757SaUaVbivV32W41yDLB5uVNePcFE75nUiDGyc
x6MlMuY74F2oq4YdlxnsJQ7WDRRmuv0ro1MwUTAdBgNVHQ4EFgQUxnykuGPFq5w8
L4lkfAEYDaJaQQMwHwYDVR0jBBgwFoAUxnykuGPFq5w8L4lkfAEYDaJaQQMwDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEA/Qigez7uk2pbfan9FOeF
odzw1Eod7eEDOD/WCmQvPqgCIDmndZwSEmb/3VxY92GvN66Au/4nybkOmW5uWrvN
iZfH
-----END CERTIFICATE-----
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgNq4Aafrwm1VWdnpT
CqYAnFeYEDYCpVUusTYYdUAdxNOhRANCAARZChGTuhQgqr1yb757SaUaVbivV32W
41yDLB5uVNePcFE75nUiDGycx6MlMuY74F2oq4YdlxnsJQ7WDRRmuv0r
-----END PRIVATE KEY-----
"""
SITES = {"localhost": b"MODEL API", "hub.example": b"VALIDATION TEXT"}


class Cdn(Accepting):
    """A TLS server on 127.0.0.1 that answers each connection with the site its hello named (SNI), and notes it."""

    def __init__(self, tmp_path: Path) -> None:
        (pem := tmp_path / "cdn.pem").write_text(CERTIFICATE)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pem)
        self.named: list[str | None] = []
        self.context.sni_callback = lambda _s, name, _c: self.named.append(name)
        super().__init__()

    def _one(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), self.context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(100)
            tls.sendall(SITES.get(self.named[-1] or "localhost", b"NO SUCH SITE"))

    def close(self) -> None:
        self.listening.close()


def _client() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def _tunnel(forwarder: Forwarder, target: str) -> socket.socket:
    client = forwarder.hand(b"-")
    client.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    established, answer = b"HTTP/1.1 200 Connection established\r\n\r\n", b""
    while len(answer) < len(established) and (data := client.recv(len(established) - len(answer))):
        answer += data  # and no more: what the host says first follows
    assert answer == established
    return client


def _fetch_over_tls(forwarder: Forwarder, target: str, name: str) -> bytes:
    """What a tunnel to `target` whose TLS hello names `name` gets (b"" where it is cut)."""
    try:
        with _client().wrap_socket(_tunnel(forwarder, target), server_hostname=name) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\n\r\n")
            return tls.recv(100)
    except (ssl.SSLError, ConnectionError):
        return b""


def test_a_tunnel_to_an_allowed_host_cannot_name_another_site_in_its_tls_hello(tmp_path) -> None:
    """BROKE, fixed: the proxy allowed `localhost` (a model API's name) and connected to its address, where a CDN
    serves every site it has by the name the hello asks for: a hello naming the hub's got the hub."""
    cdn = Cdn(tmp_path)
    try:
        with egress.Egress({egress.HOSTS_ENV: f"localhost:{cdn.port}"}) as proxy:
            forwarder = Forwarder(proxy)
            assert _fetch_over_tls(forwarder, f"localhost:{cdn.port}", "localhost") == b"MODEL API"
            assert _fetch_over_tls(forwarder, f"localhost:{cdn.port}", "hub.example") == b""
    finally:
        cdn.close()
    assert "hub.example" not in cdn.named, "a tunnel to a model API's name reached another site of its address"
    assert f"may not reach hub.example:{cdn.port}" in proxy.said()


def _hello(extensions: list[tuple[int, bytes]], pieces: int = 1) -> bytes:
    """A TLS 1.2 ClientHello with `extensions` (kind, body), in `pieces` records."""
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    listed = b"".join(kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data for kind, data in extensions)
    body += len(listed).to_bytes(2, "big") + listed
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    size = -(-len(message) // pieces)
    chunks = [message[i : i + size] for i in range(0, len(message), size)]
    return b"".join(b"\x16\x03\x01" + len(c).to_bytes(2, "big") + c for c in chunks)


def _sni(name: str) -> tuple[int, bytes]:
    entry = b"\x00" + len(name).to_bytes(2, "big") + name.encode()
    return 0, len(entry).to_bytes(2, "big") + entry


@pytest.mark.parametrize(
    "hello",
    [
        _hello([_sni("hub.example")], pieces=1),
        _hello([(0x10, b"\x00\x03\x02h2"), _sni("hub.example")], pieces=3),  # the name in a later record
        _hello([_sni("localhost"), (0xFE0D, b"\x00" * 40)]),  # an encrypted hello: its name is within
        _hello([_sni("localhost"), _sni("hub.example")]),
    ],
    ids=["another name", "in pieces", "encrypted", "two names"],
)
def test_a_tunnel_whose_hello_hides_or_changes_its_name_is_cut(hello: bytes) -> None:
    """BROKE, fixed: what the proxy reads of a hello, it reads whole: a name it cannot see is refused too."""
    echo = socket.create_server(("127.0.0.1", 0))
    heard: list[bytes] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = echo.accept()
            with conn:
                while data := conn.recv(65536):
                    heard.append(data)

    threading.Thread(target=serve, daemon=True).start()
    with egress.Egress({egress.HOSTS_ENV: f"localhost:{echo.getsockname()[1]}"}) as proxy:
        client = _tunnel(Forwarder(proxy), f"localhost:{echo.getsockname()[1]}")
        client.sendall(hello)
        assert client.recv(100) == b"", "the tunnel went on"
    echo.close()
    assert heard == []
    assert proxy.refused


def test_a_tunnel_to_a_plain_port_and_an_honest_hello_go_on() -> None:
    echo = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=lambda: _echo(echo), daemon=True).start()
    with egress.Egress({egress.HOSTS_ENV: f"localhost:{echo.getsockname()[1]}"}) as proxy:
        forwarder = Forwarder(proxy)
        for first in (b"ping", _hello([_sni("localhost")], pieces=1), _hello([])):
            client = _tunnel(forwarder, f"localhost:{echo.getsockname()[1]}")
            client.sendall(first)
            assert client.recv(len(first) + 10) == first
    echo.close()
    assert not proxy.refused


def _echo(listening: socket.socket) -> None:
    while True:
        try:
            conn, _ = listening.accept()
        except OSError:
            return
        with conn:
            conn.sendall(conn.recv(65536))


class VirtualHosts:
    """An HTTP/1.1 server on 127.0.0.3 that keeps its connections open and notes each request's Host and path."""

    def __init__(self) -> None:
        asked = self.asked = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                asked.append((self.headers.get("Host"), self.path))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.3", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_plain_request_reaches_the_host_it_names_and_no_other() -> None:
    """BROKE, fixed: a plain request to an allowed host went on with its Host (another site's), and a second on the
    connection, whatever it named, went to the same host: a server of many sites served the one named."""
    server = VirtualHosts()
    allowed = f"127.0.0.3:{server.port}"
    try:
        with egress.Egress({egress.HOSTS_ENV: allowed}) as proxy:
            forwarder = Forwarder(proxy)
            client = forwarder.hand(b"-")
            client.sendall(f"GET http://{allowed}/paper HTTP/1.1\r\nHost: hub.example\r\n\r\n".encode())
            answer = b""
            while b"ok" not in answer and (data := client.recv(1000)):
                answer += data
            assert answer.startswith(b"HTTP/1.1 200 ")
            with contextlib.suppress(OSError):
                client.sendall(b"GET /val HTTP/1.1\r\nHost: hub.example\r\n\r\n")
                while client.recv(1000):
                    pass
            assert server.asked == [(allowed, "/paper")], "another site's Host, or a second request, went on"
            folded = forwarder.hand(b"-")
            folded.sendall(f"GET http://{allowed}/x HTTP/1.1\r\nX-A: 1\nHost: hub.example\r\n\r\n".encode())
            assert folded.recv(100).startswith(b"HTTP/1.1 400 ")
    finally:
        server.close()
    assert server.asked == [(allowed, "/paper")]


def test_the_hosts_refused_are_kept_within_bounds() -> None:
    """BROKE, fixed: each refusal was kept, each name up to 64 KiB: a turn that asked for new ones without end grew
    the loop's memory, and its output, without bound."""
    kept = getattr(egress, "REFUSED_KEPT", 100)
    with egress.Egress({}) as proxy:
        forwarder = Forwarder(proxy)
        for i in range(kept + 50):
            client = forwarder.hand(b"-")
            client.sendall(f"CONNECT {'a' * 60000}{i}.example:443 HTTP/1.1\r\n\r\n".encode())
            assert client.recv(100).split(b" ")[1] in (b"400", b"403")
            client.close()
        for i in range(kept + 50):
            client = forwarder.hand(b"-")
            client.sendall(f"CONNECT hub{i}.example:443 HTTP/1.1\r\n\r\n".encode())
            assert client.recv(100).startswith(b"HTTP/1.1 403 ")
            client.close()
    assert len(proxy.refused) <= kept
    assert len(proxy.said()) < 300 * kept
    assert "hub0.example:443" in proxy.said() and "more refusals" in proxy.said()


def test_a_port_of_another_script_s_digit_is_refused_with_an_answer(monkeypatch) -> None:
    """BROKE, fixed: "²" is a digit to str.isdigit and none to int: the proxy's thread raised, the connection was
    cut without an answer, and a traceback went to the loop's stderr for each such request."""
    raised: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    with egress.Egress({}) as proxy:
        forwarder = Forwarder(proxy)
        for request in (b"CONNECT api.anthropic.com:\xb2 HTTP/1.1\r\n\r\n", b"GET http://a.b:\xb2/ HTTP/1.1\r\n\r\n"):
            client = forwarder.hand(b"-")
            client.sendall(request)
            assert client.recv(100).startswith(b"HTTP/1.1 400 ")
    assert raised == []


@pytest.mark.slow
def test_the_connections_a_turn_holds_open_take_a_bounded_share_of_the_loop_s_descriptors(monkeypatch) -> None:
    """BROKE, fixed: the cap counted the agent's ends and the hosts' alike (512), and a connection still connecting
    to its host held a socket of the loop's besides: 700 CONNECTs to a host slow to answer held 1,025 of the loop's
    descriptors, past a soft limit of 1,024 (a user's, often), where the loop could open nothing else."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if wanted < 2500:
        pytest.skip("too few descriptors to be had here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    monkeypatch.setattr(egress, "CONNECT_WAIT_S", 2.0)
    slow = socket.socket()  # a host whose queue is full: a connection to it waits
    slow.bind(("127.0.0.1", 0))
    slow.listen(0)
    port = slow.getsockname()[1]
    waiting = [socket.socket() for _ in range(4)]
    for s in waiting:
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))

    def held() -> int:
        return len(os.listdir("/proc/self/fd"))

    try:
        before = held()
        with egress.Egress({egress.HOSTS_ENV: f"localhost:{port}"}) as proxy:
            forwarder = Forwarder(proxy)
            clients = []
            for _ in range(700):
                client = forwarder.hand(b"-")
                client.sendall(f"CONNECT localhost:{port} HTTP/1.1\r\n\r\n".encode())
                clients.append(client)
            time.sleep(0.5)
            by_the_proxy = held() - before - len(clients) - 1  # not the agent's ends, nor the forwarder's
            assert by_the_proxy <= 3 * egress.MAX_CONNECTIONS, by_the_proxy
        for client in clients:
            client.close()
    finally:
        slow.close()
        for s in waiting:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_bedrock_s_wildcard_is_a_region_and_no_s3_bucket() -> None:
    """BROKE, fixed: `bedrock-runtime.*.amazonaws.com` let in bedrock-runtime.s3.amazonaws.com (and S3's website and
    accelerate names), which S3 answers for any name: there a request names the bucket it reads (its Host, its path),
    any public one, a copy of a hub's validation text in one. AWS's certificate for S3 is S3's: the hello names an
    allowed host, and the proxy sees no further."""
    proxy_rules = egress.allowed({})

    def allows(host: str) -> bool:
        return any(rule.allows(host, 443) for rule in proxy_rules)

    for region in ("us-east-1", "eu-central-1", "ap-southeast-2", "us-gov-west-1"):
        assert allows(f"bedrock-runtime.{region}.amazonaws.com")
    for other in ("s3", "s3-website-us-east-1", "s3-accelerate", "s3-us-west-2", "compute-1", "dualstack"):
        assert not allows(f"bedrock-runtime.{other}.amazonaws.com"), other


def test_a_proxy_of_yours_that_asks_for_a_password_is_given_the_one_its_url_names(monkeypatch) -> None:
    """BROKE, fixed (honest use): `HTTPS_PROXY=http://user:pass@proxy:3128` was connected through without them, and
    a proxy that asks for them refused the model API of every turn (its clients, before, sent them themselves)."""
    listening = socket.create_server(("127.0.0.1", 0))
    heads: list[bytes] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listening.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(1024)
                heads.append(head)
                if b"Proxy-Authorization: Basic dXNlcjpwQHNz\r\n" not in head:
                    conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                    return
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                conn.sendall(conn.recv(100))

    threading.Thread(target=serve, daemon=True).start()
    yours = f"http://user:p%40ss@127.0.0.1:{listening.getsockname()[1]}"
    with egress.Egress({"HTTPS_PROXY": yours}) as proxy:
        client = Forwarder(proxy).hand(b"-")
        client.sendall(b"CONNECT api.anthropic.com:443 HTTP/1.1\r\n\r\n")
        assert client.recv(100) == b"HTTP/1.1 200 Connection established\r\n\r\n"
        client.sendall(b"ping")
        assert client.recv(100) == b"ping"
    listening.close()
    assert heads[0].startswith(b"CONNECT api.anthropic.com:443 HTTP/1.1\r\n")


def test_a_tunnel_goes_on_in_a_loop_that_holds_many_descriptors() -> None:
    """A loop whose descriptors number past 1,023 (a high soft limit, many runs) waits on a tunnel's first bytes
    all the same (select.select takes none over 1023: not it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip("too few descriptors to be had here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    held = [os.dup(0) for _ in range(1100)]
    echo = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=lambda: _echo(echo), daemon=True).start()
    try:
        with egress.Egress({egress.HOSTS_ENV: f"localhost:{echo.getsockname()[1]}"}) as proxy:
            client = _tunnel(Forwarder(proxy), f"localhost:{echo.getsockname()[1]}")
            client.sendall(b"ping")
            assert client.recv(10) == b"ping"
    finally:
        echo.close()
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_name_a_wildcard_allows_with_a_label_too_long_is_refused_with_an_answer(monkeypatch) -> None:
    """BROKE, fixed: `*-aiplatform.googleapis.com` allows a first label of any length, and the resolver's IDNA codec
    raised UnicodeError (no OSError) for one over 63 characters: the connection cut without an answer, and a
    traceback on the loop's stderr for each one."""
    raised: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    with egress.Egress({}) as proxy:
        forwarder = Forwarder(proxy)
        for name in ("a" * 70 + "-aiplatform.googleapis.com", "a..openai.azure.com"):
            client = forwarder.hand(b"-")
            client.sendall(f"CONNECT {name}:443 HTTP/1.1\r\n\r\n".encode())
            assert client.recv(100)[9:12] in (b"400", b"502")
    assert raised == []


def test_a_hello_s_name_is_said_only_where_it_is_one() -> None:
    """What a refused hello names goes into the turn's output only where it is a host's name: not a terminal's
    escape sequence, nor 16 KiB of it."""
    echo = socket.create_server(("127.0.0.1", 0))
    with egress.Egress({egress.HOSTS_ENV: f"localhost:{echo.getsockname()[1]}"}) as proxy:
        forwarder = Forwarder(proxy)
        for name in ("\x1b]0;owned\x07", "a" * 16000):
            client = _tunnel(forwarder, f"localhost:{echo.getsockname()[1]}")
            client.sendall(_hello([_sni(name)]))
            assert client.recv(100) == b""
    echo.close()
    assert len(proxy.refused) == 2 and "\x1b" not in proxy.said() and len(proxy.said()) < 1000


HELLOS = """
import os, socket, ssl
def fetch(name):
    s = socket.create_connection(("127.0.0.1", int(os.environ["HTTPS_PROXY"].rsplit(":", 1)[1])), timeout=10)
    s.sendall(b"CONNECT localhost:{port} HTTP/1.1\\r\\n\\r\\n")
    assert s.recv(100).startswith(b"HTTP/1.1 200 ")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with context.wrap_socket(s, server_hostname=name) as tls:
            tls.sendall(b"GET / HTTP/1.1\\r\\n\\r\\n")
            return tls.recv(100).decode()
    except OSError:
        return "cut"
print(fetch("localhost"), fetch("hub.example"))
"""


@pytest.mark.slow
@needs_isolation
def test_a_turn_cannot_reach_another_site_of_a_model_api_s_address(tmp_path, monkeypatch) -> None:
    """BROKE, fixed: the same, from a turn in its namespace: through its proxy, a tunnel to the model API's name
    whose hello named the hub's got the hub's site, at the same address (a CDN's)."""
    cdn = Cdn(tmp_path)
    try:
        monkeypatch.setenv(egress.HOSTS_ENV, f"localhost:{cdn.port}")
        code, out, err = turn(tmp_path, HELLOS.replace("{port}", str(cdn.port)), dict(os.environ))
    finally:
        cdn.close()
    assert code == 0, err
    assert out.split() == ["MODEL", "API", "cut"]
    assert "hub.example" not in cdn.named
    assert f"may not reach hub.example:{cdn.port}" in err


def test_a_tunnel_to_a_host_that_speaks_first_goes_on() -> None:
    """What checks a tunnel's TLS hello waits for none where the host speaks first (an SSH server you list)."""
    greeter = socket.create_server(("127.0.0.1", 0))

    def greet() -> None:
        with contextlib.suppress(OSError):
            conn, _ = greeter.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                conn.sendall(conn.recv(100))

    threading.Thread(target=greet, daemon=True).start()
    with egress.Egress({egress.HOSTS_ENV: f"localhost:{greeter.getsockname()[1]}"}) as proxy:
        client = _tunnel(Forwarder(proxy), f"localhost:{greeter.getsockname()[1]}")
        assert client.recv(100) == b"SSH-2.0-OpenSSH_9.6\r\n"
        client.sendall(b"SSH-2.0-agent\r\n")
        assert client.recv(100) == b"SSH-2.0-agent\r\n"
    greeter.close()


@pytest.mark.parametrize("pieces", [1, 2], ids=["whole", "its method apart"])
def test_a_plain_request_through_a_tunnel_reaches_the_host_it_names_and_no_other(pieces: int) -> None:
    """BROKE, fixed: the same through a CONNECT to the host's plain port (80, or one you list), which a tunnel took
    unread: its Host, and a second request on it, went to the host allowed. And a request of HTTP/2 (h2c), whose
    host is within its frames, is cut."""
    server = VirtualHosts()
    allowed = f"127.0.0.3:{server.port}"
    request = b"GET /paper HTTP/1.1\r\nHost: hub.example\r\n\r\nGET /val HTTP/1.1\r\nHost: hub.example\r\n\r\n"
    try:
        with egress.Egress({egress.HOSTS_ENV: allowed}) as proxy:
            forwarder = Forwarder(proxy)
            client = _tunnel(forwarder, allowed)
            client.sendall(request[:2])
            if pieces == 2:
                time.sleep(0.2)
            client.sendall(request[2:])
            answer = b""
            with contextlib.suppress(OSError):
                while data := client.recv(1000):
                    answer += data
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert server.asked == [(allowed, "/paper")], "another site's Host, or a second request, went on"
            h2c = _tunnel(forwarder, allowed)
            h2c.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            assert h2c.recv(100) == b""
    finally:
        server.close()
    assert server.asked == [(allowed, "/paper")]
