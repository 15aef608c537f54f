"""A fake Hugging Face Hub on 127.0.0.1 for hermetic download tests, with faults on demand.

It speaks the part of the protocol `hf_hub_download` uses: HEAD and GET on
`/datasets/{repo_id}/resolve/{revision}/{filename}`, answered with `X-Repo-Commit`, an `ETag` (the sha256 for
LFS-like files, also sent as `X-Linked-Etag` with `X-Linked-Size`, as the real Hub does), `Content-Length`, and
Range requests (206 with `Content-Range`). Errors carry the Hub's `X-Error-Code` (RepoNotFound, EntryNotFound).

Use the `fake_hub` fixture (`pytest_plugins = ["fake_hub"]`): it starts a server, points HF_ENDPOINT at it and
HF_HOME / HF_HUB_CACHE under tmp_path, makes `time.sleep` (retry back-off) return at once while recording the
delays asked for in `hub.sleeps`, and refuses to resolve any host name but 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest

RESOLVE = re.compile(r"/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)")


@dataclass
class Request:
    method: str
    filename: str
    range: str | None


@dataclass
class FakeHub:
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    lfs: set[tuple[str, str]] = field(default_factory=set)
    requests: list[Request] = field(default_factory=list)  # to /resolve/ only
    other_paths: list[str] = field(default_factory=list)  # anything else: huggingface_hub's own look-ups
    fail: dict[str, list[int]] = field(default_factory=lambda: {"HEAD": [], "GET": []})  # statuses to answer first
    cut_after: int | None = None  # the next GET of a body sends this many bytes, then drops the connection
    corrupt: dict[str, int] = field(default_factory=dict)  # filename -> how many GETs serve damaged bytes (-1: all)
    sleeps: list[float] = field(default_factory=list)
    blocked_hosts: list[str] = field(default_factory=list)  # look-ups of other hosts, refused
    endpoint: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, repo_id: str, filename: str, data: bytes, *, lfs: bool = True) -> str:
        """Serve `data` as `filename` of dataset `repo_id`; returns its ETag."""
        self.files[(repo_id, filename)] = data
        if lfs:
            self.lfs.add((repo_id, filename))
        return self.etag(repo_id, filename)

    def etag(self, repo_id: str, filename: str) -> str:
        data = self.files[(repo_id, filename)]
        if (repo_id, filename) in self.lfs:
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id

    def gets(self, filename: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and filename in (None, r.filename)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._resolve(send_body=False)

    def do_GET(self) -> None:
        self._resolve(send_body=True)

    def _resolve(self, send_body: bool) -> None:
        hub = self.server.hub
        match = RESOLVE.fullmatch(unquote(urlsplit(self.path).path))
        if match is None:
            hub.other_paths.append(self.path)
            return self._empty(404, {})
        filename = match["filename"]
        with hub.lock:
            hub.requests.append(Request(self.command, filename, self.headers.get("Range")))
            status = hub.fail[self.command].pop(0) if hub.fail[self.command] else None
            cut, damaged = None, False
            if send_body and status is None:
                cut, hub.cut_after = hub.cut_after, None
                left = hub.corrupt.get(filename, 0)
                damaged = left != 0
                if left > 0:
                    hub.corrupt[filename] = left - 1
        repos = {repo for repo, _ in hub.files}
        if status is not None:
            return self._empty(status, {"X-Error-Message": "fake hub failure"})
        if match["repo"] not in repos:
            return self._empty(404, {"X-Error-Code": "RepoNotFound"})
        key = (match["repo"], filename)
        if key not in hub.files:
            return self._empty(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": hub.commit})
        data = hub.files[key]
        if damaged:  # same length, same ETag, different bytes
            middle = len(data) // 2
            data = data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 16]) + data[middle + 16 :]
        etag = hub.etag(*key)
        headers = {"X-Repo-Commit": hub.commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if key in hub.lfs:
            headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))}
        start, status = 0, 200
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if wanted and send_body:
            start, status = int(wanted[1]), 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body if cut is None else body[:cut])
            self.wfile.flush()
            self.close_connection = cut is not None

    def _empty(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: FakeHub


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[FakeHub]:
    hub = FakeHub()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.hub = hub
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HUB_ENABLE_HF_TRANSFER"):
        monkeypatch.delenv(name, raising=False)

    real_sleep = time.sleep

    def quick_sleep(seconds: float) -> None:
        hub.sleeps.append(seconds)
        real_sleep(min(seconds, 0.01))

    monkeypatch.setattr(time, "sleep", quick_sleep)

    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host: object, *args: object, **kwargs: object) -> object:
        """Name resolution for 127.0.0.1 only, so that nothing here can reach another machine, whatever
        huggingface_hub was configured with when it was imported (it looks up a registry at its import-time
        HF_ENDPOINT, for instance)."""
        if host not in ("127.0.0.1", b"127.0.0.1"):
            hub.blocked_hosts.append(str(host))
            raise socket.gaierror(socket.EAI_NONAME, f"fake_hub: {host} is not 127.0.0.1")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
