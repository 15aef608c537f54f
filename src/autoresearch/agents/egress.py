"""What a shell agent's turn may reach on the network: the hosts of model APIs, and no other.

Where the agent's namespaces can have a network of their own (agents/namespace.py), it has only a loopback, and one
way out: agents/forwarder.py in there hands each connection made to 127.0.0.1:PROXY_PORT (HTTPS_PROXY and the like,
in its environment) to `Egress`, a proxy in the loop, which the agent's processes cannot reach into. It connects a
CONNECT (or a plain HTTP request) only to a host `allowed` names: the model APIs the shipped agents and aider's
providers use, the hosts of the endpoints the environment names (`_BASE_URL`, `_API_BASE`, `_ENDPOINT`, as
agents/fence.py reads them), and those in HOSTS_ENV.

Why: the port fence let a turn reach any host on port 443, and a hub dataset's validation text is on a public host.
An agent that fetched it could work out the scored tokens (the packing is this package's code) and put a table of
them into train.py; no check of a run sees that (red team). Through the API a model may still be asked to fetch a
page (a server-side tool): that this cannot see, being TLS.

A proxy of yours (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY as the loop was given them; an http:// one) is
where `Egress` connects through. Each host it refused is kept (`refused`), and the turn's output says which.
"""

from __future__ import annotations

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
from urllib.parse import urlsplit

from autoresearch.agents.fence import ENDPOINT_SUFFIXES

HOSTS_ENV = "AUTORESEARCH_AGENT_HOSTS"  # more hosts a turn may reach: "host", "host:port", "*.host"; "*" is any host
PROXY_PORT = 3128  # where the agent's proxy is, in its namespace (another where an endpoint takes it)
# The model APIs: the shipped agents' (Claude Code: the API, its sign-in; Codex: the API, ChatGPT's sign-in) and those
# of aider's providers (litellm's). On port 443. A `*` is one label of a name.
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
    "bedrock-runtime.*.amazonaws.com",
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
HEAD_LIMIT = 1 << 16  # a request's head, at most
HEAD_WAIT_S = 30.0
CONNECT_WAIT_S = 30.0
MAX_CONNECTIONS = 256  # a turn's at once: each is a thread of the loop's
_CHUNK = 1 << 16
_NAME = re.compile(r"[a-z0-9_.-]+|\[[0-9a-f:.]+\]")


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
        labels = re.escape(self.pattern).replace(r"\*", "[^.]+")
        return re.fullmatch(labels, host) is not None


def allowed(env: Mapping[str, str]) -> list[Rule]:
    """What a turn with environment `env` may reach: MODEL_APIS on 443, each endpoint's host on its port, and what
    HOSTS_ENV lists ("host" on 443 and 80). ValueError for something there that is not a host."""
    rules = [Rule(host, (443,)) for host in MODEL_APIS]
    for name, value in env.items():
        if name.upper().endswith(ENDPOINT_SUFFIXES[:-1]) and name.upper() not in NOT_MODELS and "://" in value:
            with contextlib.suppress(ValueError):  # not a URL after all
                url = urlsplit(value.strip())
                port = url.port or {"http": 80, "https": 443}.get(url.scheme.lower())
                if url.hostname and port:
                    rules.append(Rule(url.hostname.lower(), (port,)))
    for word in env.get(HOSTS_ENV, "").replace(",", " ").split():
        host, colon, port = word.lower().rpartition(":") if ":" in word else (word.lower(), "", "")
        if not re.fullmatch(r"\*|(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*", host) or (colon and not _port(port)):
            raise ValueError(f"{HOSTS_ENV} lists {word!r}, which is not a host, host:port or *.domain")
        rules.append(Rule(host, (int(port),) if port else (443, 80)))
    return rules


def _port(word: str) -> bool:
    return word.isdigit() and 0 < int(word) < 65536


def local_endpoints(env: Mapping[str, str]) -> list[str]:
    """The endpoints on this machine the environment names with a URL (`http://localhost:11434/v1`), as HOST:PORT:
    in the agent's namespace, its loopback is its own, and the forwarder tunnels each of these ports to yours."""
    found = []
    for name, value in env.items():
        if name.upper().endswith(ENDPOINT_SUFFIXES[:-1]) and name.upper() not in NOT_MODELS and "://" in value:
            with contextlib.suppress(ValueError):
                url = urlsplit(value.strip())
                port = url.port or {"http": 80, "https": 443}.get(url.scheme.lower())
                if port and url.hostname and _loopback(url.hostname):
                    found.append(f"{url.hostname.lower()}:{port}")
    return sorted(set(found))


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
        self._folder = Path(tempfile.mkdtemp(prefix="autoresearch-net-"))
        self.socket = self._folder / "s"
        self._open: set[socket.socket] = set()
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
        return refusal(self.refused) if self.refused else ""

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
            if not self._track(client):
                return
            try:
                if asked == b"-":
                    upstream = self._proxied(client)
                else:
                    upstream = self._tunnel(client, asked.decode("ascii", errors="replace"))
                if upstream is not None:
                    _relay(client, upstream)
            except OSError:
                pass
            finally:
                self._forget(client, *([upstream] if upstream else []))
                if upstream is not None:
                    upstream.close()

    def _proxied(self, client: socket.socket) -> socket.socket | None:
        """Speak HTTP proxy to a connection made to the agent's HTTPS_PROXY: the connection it asks for, made."""
        client.settimeout(HEAD_WAIT_S)
        head, rest = _head(client)
        if head is None:
            return None
        asked = _target(head)
        if asked is None:
            return _answer(client, 400, "not a request this proxy takes (CONNECT host:port, or an http:// URL)")
        host, port, origin_form = asked
        upstream = self._reach(client, host, port)
        if upstream is None:
            return None
        client.settimeout(None)
        if origin_form is None:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            upstream.sendall(rest)
        else:
            upstream.sendall(origin_form + rest)
        return upstream

    def _tunnel(self, client: socket.socket, endpoint: str) -> socket.socket | None:
        """A connection made to a local endpoint's port in the namespace, joined to that endpoint."""
        host, _, port = endpoint.lower().rpartition(":")
        if not _port(port) or not _NAME.fullmatch(host):
            return None
        return self._reach(client, host, int(port))

    def _reach(self, client: socket.socket, host: str, port: int) -> socket.socket | None:
        if not self.allows(host, port):
            self.refused.append(f"{host}:{port}")
            return _answer(client, 403, refusal([f"{host}:{port}"]))
        try:
            upstream = self._connect(host.strip("[]"), port)
        except OSError as err:
            return _answer(client, 502, f"could not reach {host}:{port}: {err}")
        if not self._track(upstream):
            upstream.close()
            return _answer(client, 503, "too many connections at once")
        upstream.settimeout(None)
        return upstream

    def _connect(self, host: str, port: int) -> socket.socket:
        """A connection to `host`:`port`, through your proxy where one is to be used (never for this machine)."""
        proxy = self.upstream.get("https_proxy" if port != 80 else "http_proxy") or self.upstream.get("all_proxy")
        bypass = _loopback(host) or bool(
            self.no_proxy and urllib.request.proxy_bypass_environment(host, {"no": self.no_proxy})
        )
        url = urlsplit(proxy) if proxy and not bypass and "://" in proxy else None
        if url is None or url.scheme.lower() != "http" or not url.hostname:
            return socket.create_connection((host, port), timeout=CONNECT_WAIT_S)
        upstream = socket.create_connection((url.hostname, url.port or 80), timeout=CONNECT_WAIT_S)
        try:
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            upstream.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head, rest = _head(upstream)
            if head is None or head.split(b" ", 2)[1:2] != [b"200"] or rest:
                raise ConnectionError(f"your proxy {url.hostname} refused CONNECT {target}")
        except BaseException:
            upstream.close()
            raise
        return upstream

    def _track(self, s: socket.socket) -> bool:
        with self._lock:
            if self._closed or len(self._open) >= 2 * MAX_CONNECTIONS:
                return False
            self._open.add(s)
            return True

    def _forget(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._open.difference_update(sockets)


def _head(s: socket.socket) -> tuple[bytes | None, bytes]:
    """A request's (or an answer's) head, through its blank line, and what came after it; None for a head over
    HEAD_LIMIT or a connection closed first."""
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > HEAD_LIMIT:
            return None, b""
        chunk = s.recv(_CHUNK)
        if not chunk:
            return None, b""
        data += chunk
    return data[: end + 4], data[end + 4 :]


def _target(head: bytes) -> tuple[str, int, bytes | None] | None:
    """The host and port a request asks for, and for a plain HTTP one, its head with the origin-form line (None for
    a CONNECT); None for a request that is neither."""
    line, _, fields = head.partition(b"\r\n")
    words = line.decode("latin-1").split(" ")
    if len(words) != 3 or not words[2].startswith("HTTP/1."):
        return None
    method, target, version = words
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        if not _port(port) or not _NAME.fullmatch(host.lower()):
            return None
        return host.lower(), int(port), None
    try:
        url = urlsplit(target)
        port = url.port or 80
    except ValueError:
        return None
    if url.scheme.lower() != "http" or not url.hostname or not _NAME.fullmatch(url.hostname.lower()):
        return None
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return host.lower(), port, f"{method} {path} {version}\r\n".encode("latin-1") + fields


def _answer(client: socket.socket, status: int, text: str) -> None:
    """Tell the agent's client why there is no connection (None: there is none to relay)."""
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway", 503: "Service Unavailable"}[status]
    body = (text + "\n").encode()
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
    with contextlib.suppress(OSError):
        client.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Bytes both ways until both ends have closed (or the turn ends: `Egress.close` shuts every socket down)."""
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
                if data:
                    peer[s].sendall(data)
                    continue
                selector.unregister(s)
                with contextlib.suppress(OSError):
                    peer[s].shutdown(socket.SHUT_WR)
