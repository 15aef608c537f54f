"""What a shell agent's turn may reach on the network: the hosts of model APIs, and no other.

Where the agent's namespaces can have a network of their own (agents/namespace.py), it has only a loopback, and one
way out: agents/forwarder.py in there hands each connection made to 127.0.0.1:PROXY_PORT (HTTPS_PROXY and the like,
in its environment) to `Egress`, a proxy in the loop, which the agent's processes cannot reach into. It connects a
CONNECT (or a plain HTTP request) only to a host `allowed` names: the model APIs the shipped agents and aider's
providers use, the hosts of the endpoints the environment names (`_BASE_URL`, `_API_BASE`, `_ENDPOINT`, as
agents/fence.py reads them), and those in HOSTS_ENV. What a tunnel's client sends first it reads: a TLS hello names
that host or none (SNI), and plain HTTP, there or asked of the proxy, is one request, to that host. Within TLS it
sees nothing: a request to another name the certificate covers (HTTP/2 reuses a connection for each) goes there.

Why: the port fence let a turn reach any host on port 443, and a hub dataset's validation text is on a public host.
An agent that fetched it could work out the scored tokens (the packing is this package's code) and put a table of
them into train.py; no check of a run sees that (red team). Through the API a model may still be asked to fetch a
page (a server-side tool): that this cannot see, being TLS.

A proxy of yours (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY as the loop was given them; an http:// one) is
where `Egress` connects through. Each host it refused is kept (`refused`), and the turn's output says which.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import re
import selectors
import shutil
import socket
import tempfile
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from autoresearch.agents import proxy_reads
from autoresearch.agents.fence import ENDPOINT_SUFFIXES

HOSTS_ENV = "AUTORESEARCH_AGENT_HOSTS"  # more hosts a turn may reach: "host", "host:port", "*.host"; "*" is any host
PROXY_PORT = 3128  # where the agent's proxy is, in its namespace (another where an endpoint takes it)
# The model APIs: the shipped agents' (Claude Code: the API, its sign-in; Codex: the API, ChatGPT's sign-in) and those
# of aider's providers (litellm's). On port 443. A `*` is one label of a name; `{region}`, an AWS region's (us-east-1):
# as a `*`, it let in bedrock-runtime.s3.amazonaws.com, which S3 answers for any name, and there a request names the
# public bucket it reads (red team).
MODEL_APIS = (
    "api.anthropic.com",
    "console.anthropic.com",
    "platform.claude.com",
    "claude.ai",
    "api.openai.com",
    "auth.openai.com",
    "chatgpt.com",
    "openrouter.ai",
    "generativelanguage.googleapis.com",
    "aiplatform.googleapis.com",
    "*-aiplatform.googleapis.com",
    "oauth2.googleapis.com",
    "bedrock-runtime.{region}.amazonaws.com",
    "*.openai.azure.com",
    "*.services.ai.azure.com",
    "api.deepseek.com",
    "api.mistral.ai",
    "api.groq.com",
    "api.x.ai",
    "api.together.xyz",
    "api.fireworks.ai",
    "api.cohere.com",
)
# Endpoint variables whose hosts are not a model's: the hub's (a data mirror), which holds the validation text
NOT_MODELS = ("HF_ENDPOINT",)
HEAD_WAIT_S = 30.0
CONNECT_WAIT_S = 30.0
# A turn's connections at once: each is a thread of the loop's, and up to three of its descriptors (the agent's end,
# the host's, a relay's selector). Counted by the agent's ends: counted with the hosts' too, twice as many of the
# agent's waited to connect, each with a socket of the loop's, 1,025 descriptors in all, past the 1,024 a loop may
# have (a user's soft limit, often), where the loop could open nothing else (red team).
MAX_CONNECTIONS = 256
# The refusals a turn's proxy keeps (`Egress.refused`), the rest only counted: a turn asked for a new long name again
# and again, and each was kept, in the loop's memory and the turn's output, without bound (red team).
REFUSED_KEPT = 100
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Rule:
    """Hosts that match `pattern` (a `*` is one label; "*" alone, any host), on `ports`."""

    pattern: str
    ports: tuple[int, ...]

    def allows(self, host: str, port: int) -> bool:
        if port not in self.ports:
            return False
        if self.pattern == "*":
            return True
        labels = re.escape(self.pattern).replace(r"\*", "[^.]+").replace(r"\{region\}", r"[a-z]{2}(-[a-z]+)+-[0-9]+")
        return re.fullmatch(labels, host) is not None


def allowed(env: Mapping[str, str]) -> list[Rule]:
    """What a turn with environment `env` may reach: MODEL_APIS on 443, each endpoint's host on its port, and what
    HOSTS_ENV lists ("host" on 443 and 80). ValueError for something there that is not a host."""
    rules = [Rule(host, (443,)) for host in MODEL_APIS]
    rules += [Rule(host, (port,)) for host, port in _endpoints(env)]
    for word in env.get(HOSTS_ENV, "").replace(",", " ").split():
        host, colon, port = word.lower().rpartition(":") if ":" in word else (word.lower(), "", "")
        if not re.fullmatch(r"\*|(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*", host) or (colon and not proxy_reads.is_port(port)):
            raise ValueError(f"{HOSTS_ENV} lists {word!r}, which is not a host, host:port or *.domain")
        rules.append(Rule(host, (int(port),) if port else (443, 80)))
    return rules


def _endpoints(env: Mapping[str, str]) -> list[tuple[str, int]]:
    """The hosts and ports of the endpoints the environment names with a URL (`OPENAI_BASE_URL=http://...`)."""
    found = []
    for name, value in env.items():
        if name.upper().endswith(ENDPOINT_SUFFIXES[:-1]) and name.upper() not in NOT_MODELS and "://" in value:
            with contextlib.suppress(ValueError):  # not a URL after all
                url = urlsplit(value.strip())
                port = url.port or {"http": 80, "https": 443}.get(url.scheme.lower())
                if url.hostname and port:
                    found.append((url.hostname.lower(), port))
    return found


def local_endpoints(env: Mapping[str, str]) -> list[str]:
    """The endpoints on this machine the environment names with a URL (`http://localhost:11434/v1`), as HOST:PORT:
    in the agent's namespace, its loopback is its own, and the forwarder tunnels each of these ports to yours."""
    return sorted({f"{host}:{port}" for host, port in _endpoints(env) if _loopback(host)})


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def proxy_port(endpoints: list[str]) -> int:
    """PROXY_PORT, or the next port no endpoint of `endpoints` takes."""
    taken = {int(e.rpartition(":")[2]) for e in endpoints}
    return next(port for port in range(PROXY_PORT, 65536) if port not in taken)


def turn_environment(port: int, endpoints: list[str]) -> dict[str, str]:
    """The variables that send a turn's connections to its forwarder: every client the agents use reads one of them
    (Claude Code and Codex read HTTPS_PROXY, aider's litellm too); not those to its loopback, where the forwarder
    listens for the local `endpoints` too."""
    proxy = f"http://127.0.0.1:{port}"
    names = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
    near = ",".join(dict.fromkeys(["localhost", "127.0.0.1", "::1", *(e.rpartition(":")[0] for e in endpoints)]))
    return {
        **{n: proxy for n in names},
        **{n.lower(): proxy for n in names},
        "NO_PROXY": near,
        "no_proxy": near,
    }


def refusal(hosts: list[str]) -> str:
    """What a turn is told (in a 403's body) and the loop says (after the turn's output) of hosts refused."""
    return (
        f"autoresearch: the agent's turn may not reach {', '.join(dict.fromkeys(hosts))}: its network reaches the "
        f"model APIs and the endpoints its environment names (add a host to {HOSTS_ENV} to let it)"
    )


def _socket_folder() -> Path:
    """A folder of the loop's own for the proxy's socket, at a path short enough for one (108 bytes): in the
    temporary folder, or in /tmp where $TMPDIR is too deep."""
    for where in (None, "/tmp"):
        folder = Path(tempfile.mkdtemp(prefix="autoresearch-net-", dir=where))
        if len(str(folder / "s")) < 100:
            return folder
        folder.rmdir()
    raise OSError(f"no folder for the agent's proxy's socket at a path short enough: {folder}")


class Egress:
    """The proxy of one turn: `socket` is where its forwarder connects, once, before the agent starts; `with` it
    while the turn runs. Each connection handed over is a thread of the loop's, ended when the turn ends."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.rules = allowed(env)
        self.upstream = {
            k.lower(): v for k, v in env.items() if k.lower() in ("https_proxy", "http_proxy", "all_proxy")
        }
        self.no_proxy = env.get("no_proxy", env.get("NO_PROXY", ""))
        self.refused: list[str] = []
        self.more_refused = 0  # refusals beyond REFUSED_KEPT, not kept
        self._folder = _socket_folder()
        self.socket = self._folder / "s"
        self._open: set[socket.socket] = set()
        self._clients: set[socket.socket] = set()  # the agent's ends of `_open`, MAX_CONNECTIONS at most
        self._lock = threading.Lock()
        self._closed = False
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(str(self.socket))
        self._listener.listen(1)
        self._control: socket.socket | None = None
        threading.Thread(target=self._serve, name="egress", daemon=True).start()

    def __enter__(self) -> Egress:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for s in (self._listener, self._control, *self._open):
                if s is not None:
                    with contextlib.suppress(OSError):  # wakes the threads that wait on it
                        s.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def said(self) -> str:
        """A line for the turn's output naming the hosts refused, or nothing."""
        more = f" ({self.more_refused} more refusals)" if self.more_refused else ""
        return refusal(self.refused) + more if self.refused else ""

    def allows(self, host: str, port: int) -> bool:
        return any(rule.allows(host, port) for rule in self.rules)

    def _serve(self) -> None:
        """The forwarder's connection, the first and only one taken (the socket is gone then); each message on it a
        connection handed over, with what it asks for."""
        try:
            control, _ = self._listener.accept()
        except OSError:
            return
        finally:
            self._listener.close()
            shutil.rmtree(self._folder, ignore_errors=True)
        with control:
            with self._lock:
                if self._closed:
                    return
                self._control = control
            while True:
                try:
                    message, fds, _, _ = socket.recv_fds(control, 512, 1, socket.MSG_CMSG_CLOEXEC)
                except OSError:
                    return
                if not message and not fds:
                    return
                if fds:
                    client = socket.socket(fileno=fds[0])
                    threading.Thread(target=self._handle, args=(client, message), daemon=True).start()

    def _handle(self, client: socket.socket, asked: bytes) -> None:
        upstream = None
        with client:
            if not self._track(client, client=True):
                return
            try:
                if asked == b"-":
                    made = self._proxied(client)
                else:
                    made = self._tunnel(client, asked.decode("ascii", errors="replace"))
                if made is not None:
                    upstream, exchange = made
                    _relay(client, upstream, exchange)
            except OSError:
                pass
            finally:
                self._forget(client, *([upstream] if upstream else []))
                if upstream is not None:
                    upstream.close()

    def _proxied(self, client: socket.socket) -> tuple[socket.socket, proxy_reads.Exchange | None] | None:
        """Speak HTTP proxy to a connection made to the agent's HTTPS_PROXY: the connection it asks for, made, and
        where it is plain HTTP, the exchange it is."""
        client.settimeout(HEAD_WAIT_S)
        head, rest = proxy_reads.read_head(client)
        if head is None:
            return None
        asked = proxy_reads.target(head)
        if asked is None:
            return _answer(client, 400, "not a request this proxy takes (CONNECT host:port, or an http:// URL)")
        host, port, exchange = asked
        reached = self._reach(client, host, port, plain=exchange is not None)
        if reached is None:
            return None
        upstream, proxy = reached
        try:
            if exchange is None:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                first = self._hello(client, upstream, host, port, rest)
                if first is None:
                    raise ConnectionAbortedError
                data, exchange = first
                upstream.sendall(data)
            else:
                upstream.sendall(exchange.head(proxy) + exchange.asked(rest))
            client.settimeout(None)
        except BaseException:
            self._forget(upstream)
            upstream.close()
            raise
        return upstream, exchange

    def _hello(
        self, client: socket.socket, upstream: socket.socket, host: str, port: int, rest: bytes
    ) -> tuple[bytes, proxy_reads.Exchange | None] | None:
        """What a tunnel's client sent first, where it may go on to `host`, with the exchange it is where it is plain
        HTTP: a TLS hello that names no other host (SNI), in one record, and hides none (ECH), or what is no TLS
        (nothing, where the host speaks first); None where it may not (the tunnel is cut). The proxy connects by
        name, and a model API's name is one of many a CDN's addresses serve: a tunnel to api.openai.com whose hello
        named another site on the CDN was that site (red team)."""
        data = rest
        if not data:
            with selectors.DefaultSelector() as selector:  # not select.select: no descriptor over 1023
                for s in (client, upstream):
                    selector.register(s, selectors.EVENT_READ)
                ready = [key.fileobj for key, _ in selector.select(HEAD_WAIT_S)]
            if client not in ready:
                return (b"", None) if ready else None  # a host that speaks first (SSH, SMTP: no TLS hello), or neither
        while not data or (data[0] == 0x16 and len(data) < 5 + int.from_bytes(data[3:5].ljust(2, b"\0"), "big")):
            if len(data) > proxy_reads.HELLO_LIMIT:
                break
            chunk = client.recv(_CHUNK)
            if not chunk:
                return None
            data += chunk
        if data[0] != 0x16:  # no TLS: HTTP (one request, to `host`), or another protocol to a host and port allowed
            return proxy_reads.plain(client, host, port, data)
        name = proxy_reads.hello_name(data)
        if name is None or (name and name != host.strip("[]")):
            shown = name if name and proxy_reads.NAME.fullmatch(name) else "a TLS hello that names its host otherwise"
            self._refuse(f"{shown}:{port}")  # not what is no name (the turn's output, your terminal, show it)
            return None
        return data, None

    def _tunnel(self, client: socket.socket, endpoint: str) -> tuple[socket.socket, proxy_reads.Exchange | None] | None:
        """A connection made to a local endpoint's port in the namespace, joined to that endpoint."""
        host, _, port = endpoint.lower().rpartition(":")
        if not proxy_reads.is_port(port) or not proxy_reads.NAME.fullmatch(host):
            return None
        reached = self._reach(client, host, int(port))
        return None if reached is None else (reached[0], None)

    def _reach(
        self, client: socket.socket, host: str, port: int, plain: bool = False
    ) -> tuple[socket.socket, str | None] | None:
        """A connection to `host`:`port` where it is allowed (else the client told why), and where it is one to your
        proxy for a `plain` HTTP request, the Proxy-Authorization field that request is to carry ("" for none)."""
        if not self.allows(host, port):
            self._refuse(f"{host}:{port}")
            return _answer(client, 403, refusal([f"{host}:{port}"]))
        try:
            upstream, proxy = self._connect(host.strip("[]"), port, plain)
        except (OSError, ValueError) as err:  # ValueError: what the resolver says of a name it takes for none
            return _answer(client, 502, f"could not reach {host}:{port}: {err}")
        if not self._track(upstream):
            upstream.close()
            return _answer(client, 503, "the turn has ended")
        upstream.settimeout(None)
        return upstream, proxy

    def _connect(self, host: str, port: int, plain: bool) -> tuple[socket.socket, str | None]:
        """A connection to `host`:`port`, through your proxy where one is to be used (never for this machine): for a
        `plain` HTTP request, HTTP_PROXY, which it is sent to (with the Proxy-Authorization field it is to carry); else
        HTTPS_PROXY, by CONNECT. A plain request to http://host:8080 went around your HTTP_PROXY (walk)."""
        proxy = self.upstream.get("http_proxy" if plain else "https_proxy") or self.upstream.get("all_proxy")
        bypass = _loopback(host) or bool(
            self.no_proxy and urllib.request.proxy_bypass_environment(host, {"no": self.no_proxy})
        )
        url = urlsplit(proxy) if proxy and not bypass and "://" in proxy else None
        if url is None or url.scheme.lower() != "http" or not url.hostname:
            return socket.create_connection((host, port), timeout=CONNECT_WAIT_S), None
        upstream = socket.create_connection((url.hostname, url.port or 80), timeout=CONNECT_WAIT_S)
        # with the user and password its URL names: without them, a proxy that asks for them refused every turn the
        # model (the turn's clients, before, sent them themselves)
        sign_in = f"{unquote(url.username)}:{unquote(url.password or '')}" if url.username is not None else None
        said = f"Proxy-Authorization: Basic {base64.b64encode(sign_in.encode()).decode()}\r\n" if sign_in else ""
        if plain:
            return upstream, said
        try:
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            upstream.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{said}\r\n".encode())
            head, rest = proxy_reads.read_head(upstream)
            if head is None or head.split(b" ", 2)[1:2] != [b"200"] or rest:
                raise ConnectionError(f"your proxy {url.hostname} refused CONNECT {target}")
        except BaseException:
            upstream.close()
            raise
        return upstream, None

    def _refuse(self, what: str) -> None:
        with self._lock:
            if len(self.refused) < REFUSED_KEPT:
                self.refused.append(what)
            else:
                self.more_refused += 1

    def _track(self, s: socket.socket, client: bool = False) -> bool:
        with self._lock:
            if self._closed or (client and len(self._clients) >= MAX_CONNECTIONS):
                return False
            self._open.add(s)
            if client:
                self._clients.add(s)
            return True

    def _forget(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._open.difference_update(sockets)
            self._clients.difference_update(sockets)


def _answer(client: socket.socket, status: int, text: str) -> None:
    """Tell the agent's client why there is no connection (None: there is none to relay)."""
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway", 503: "Service Unavailable"}[status]
    body = (text + "\n").encode()
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
    with contextlib.suppress(OSError):
        client.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)


def _relay(a: socket.socket, b: socket.socket, exchange: proxy_reads.Exchange | None = None) -> None:
    """Bytes both ways between the client `a` and the host `b` until both ends have closed (or the turn ends:
    `Egress.close` shuts every socket down); where they are a plain HTTP `exchange`, only what it lets on."""
    peer = {a: b, b: a}
    with selectors.DefaultSelector() as selector:
        for s in (a, b):
            selector.register(s, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select():
                s = key.fileobj
                try:
                    data = s.recv(_CHUNK)
                except OSError:
                    data = b""
                if data and exchange is not None:
                    data = exchange.asked(data) if s is a else exchange.answered(data)
                    if not data:
                        continue
                if data:
                    peer[s].sendall(data)
                    continue
                if s is b and exchange is not None and (held := exchange.held()):
                    with contextlib.suppress(OSError):
                        a.sendall(held)
                selector.unregister(s)
                with contextlib.suppress(OSError):
                    peer[s].shutdown(socket.SHUT_WR)
