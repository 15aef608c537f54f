"""Red team (helper 156) of `autoresearch web` (web/night.py, app.py, serve.py). Each test marked BROKE failed before
its fix.

- BROKE: an experiment number too long for Python's int (`/api/experiments/` and 5,000 digits, over its 4,300-digit
  limit) raised ValueError in Starlette's route: a 500 and a traceback on the terminal of `autoresearch web`, one for
  each such request, and a page of any other site can send them (`<img src="http://127.0.0.1:8765/api/...">`
  names the host the view answers to). Such a number is now no experiment (404, as 99 is).
- BROKE: a workspace whose path is not UTF-8 (a folder named in Latin-1, `/data/r\\xe9sum\\xe9`) made /api/night a
  500 and a traceback on every call: the path is in the night (a lone surrogate in Python), and Starlette's
  JSONResponse writes UTF-8. The answers are now JSON in ASCII, as the stream (/events) already was.
- BROKE: the view opened a missing ledger as `status` does, and SQLite made an empty one there, twice a second; where
  the workspace has experiments the view then deleted "its" empty file. A `rebuild-ledger` (the very command the
  page says to run) whose rename fell in that window had its new ledger deleted by the view, and the view's empty
  file moved aside as "the old ledger". The view now writes nothing: a missing ledger is said, not opened.
- BROKE: Ctrl-C (or SIGTERM) with a page open: its stream (/events) never ended by itself, so uvicorn cut it after
  its grace second, and wrote "Cancel 1 running task(s), timeout graceful shutdown exceeded" and a traceback
  (CancelledError) to the terminal. The streams now end as the server stops.
- BROKE: a page of another site made the view do work blind (the answer unreadable to it, but read and computed:
  `show`'s git processes for each /api/experiments request, a stream held for each /events, the traceback above),
  through the person's browser, on the machine that trains; through an `ssh -L` tunnel, from the laptop's browser to
  the GPU box. A request a browser marks as another site's (Sec-Fetch-Site: cross-site or same-site) is now refused
  (403) unless it is the person's own navigation to a page. (Chromium 156 itself refuses a public site's requests to
  loopback, Local Network Access, asking the person; a page served on this machine, a notebook's or a dev server's,
  is not asked about, and other browsers may not ask: the browser test uses such a page.)

What held (tried, no fix): the page puts every agent's and run's text in as text (descriptions with markup, `$..$`,
control characters, which the loop had made visible), and its CSP runs no script but its own; the chart draws
descriptions with parse_math=False, as glyph paths (no text of the agent's in the SVG); another site cannot read an
answer (no CORS header; CORP same-origin on the chart; nosniff on the JSON; frame-ancestors 'none'); a Host of another
name, a trailing dot, an absent Host (HTTP/1.0) are refused, upper case is the name it is; /static/ refuses `..` in
any encoding; negative numbers match no route; HEAD and OPTIONS are answered; a stream's client that never reads is
held by uvicorn's flow control (no memory grows); the lock probe (`is_locked`, shared, an instant) did not refuse
`ws.lock()` once in 10 tries under 16 threads of requests that each probe.

What is left: `--host 0.0.0.0` answers any Host (by design, tested in test_web.py), so DNS rebinding reads the night
there (the rebound page is same-origin: Sec-Fetch-Site does not stop it); a ledger that vanishes in the instant between
the view's look and its open (a rebuild's two renames) is still opened, which makes one (ledger.py's reading open
creates; not the view's to change).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest
from loop_support import make_workspace
from starlette.testclient import TestClient
from web_support import web_command

from autoresearch.loop import ledger as ledger_module
from autoresearch.loop.ledger import verified_rows
from autoresearch.loop.rebuild import rebuild
from autoresearch.loop.status import status_text
from autoresearch.web import serve as web_serve
from autoresearch.web.app import create_app
from autoresearch.web.night import Night
from autoresearch.workspace.workspace import Workspace


def client(ws: Workspace) -> TestClient:
    app = create_app(Night(ws), web_serve.answered_hosts("127.0.0.1"))
    return TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False)


def test_an_experiment_number_too_long_for_an_int_is_no_experiment_not_a_traceback(night) -> None:
    """BROKE: 500 (ValueError: Exceeds the limit (4300 digits) for integer string conversion)."""
    web = client(night)
    for number in ("9" * 5000, "9" * 4300, "9" * 40):
        answer = web.get(f"/api/experiments/{number}")
        assert answer.status_code == 404, answer.text
        assert "no such experiment" in answer.json()["error"] and len(answer.text) < 300
    assert web.get("/api/experiments/3").json()["text"].startswith("exp 3 DISCARD")
    assert web.get("/api/experiments/-1").status_code == 404


def test_a_workspace_whose_path_is_not_utf8_is_shown_not_a_traceback(tmp_path, tiny_prepared, cache_dir, monkeypatch):
    """BROKE: /api/night 500 (UnicodeEncodeError: surrogates not allowed), on every call."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache_dir))
    ws = make_workspace(Path(os.fsdecode(os.fsencode(tmp_path) + b"/r\xe9sum\xe9")), tiny_prepared)
    answer = client(ws).get("/api/night")
    assert answer.status_code == 200, answer.text
    assert answer.content.isascii() and answer.json()["workspace"] == str(ws.root)
    assert answer.json()["title"] == "No experiments yet"


def test_a_missing_ledger_is_said_not_made_and_a_rebuild_meanwhile_is_not_undone(night, monkeypatch) -> None:
    """BROKE: the view's read made an empty ledger.sqlite (and -wal, -shm), then, the workspace having experiments,
    deleted them; a `rebuild-ledger` between the two moved the view's empty file aside and had its own deleted."""
    state, ledger = night.state, ledger_module.ledger_path(night.root)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)  # `git clean -xfd`, say
    seen = []
    has_history = ledger_module.has_history

    def rebuilt_meanwhile(root: Path) -> bool:  # `rebuild-ledger` in another terminal, as the view reads
        seen.append(sorted(path.name for path in state.iterdir()))
        rebuild(root, night.git)
        return has_history(root)

    monkeypatch.setattr(ledger_module, "has_history", rebuilt_meanwhile)
    data = Night(night).snapshot()
    assert seen and not any("ledger.sqlite" in names for names in seen), f"the view made a ledger: {seen}"
    assert "is missing" in data["error"] and "rebuild-ledger" in data["error"]
    monkeypatch.undo()
    assert [e.id for e in verified_rows(night.root)] == [1, 2, 3, 4]  # the rebuild's ledger, kept
    assert [r["id"] for r in Night(night).snapshot()["experiments"]] == [4, 3, 2, 1]


def test_a_workspace_with_no_ledger_yet_is_shown_as_status_says_and_none_made(
    tmp_path, tiny_prepared, cache_dir, monkeypatch
) -> None:
    """BROKE: .autoresearch/ledger.sqlite made by the view of a workspace `init` had just made."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache_dir))
    ws = make_workspace(tmp_path / "ws", tiny_prepared)
    before = sorted(path.name for path in ws.state.iterdir())
    assert "ledger.sqlite" not in before
    data = Night(ws).snapshot()
    assert sorted(path.name for path in ws.state.iterdir()) == before
    assert data["status"] == status_text(ws) and data["experiments"] == [] and data["title"] == "No experiments yet"


@pytest.mark.slow  # a process: a second or two
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_with_a_page_open_stops_without_a_traceback(night, signum) -> None:
    """BROKE: "ERROR: Cancel 1 running task(s), timeout graceful shutdown exceeded" and a CancelledError traceback,
    the page's stream cut by uvicorn after its grace second."""
    proc = web_command(night)
    try:
        url = proc.stdout.readline().split("live: ", 1)[1].split()[0]
        with httpx.stream("GET", url + "events", timeout=10) as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            proc.send_signal(signum)
            try:
                rest = list(lines)  # the stream ends: the page says it lost the server, and reconnects
            except httpx.RemoteProtocolError:
                rest = None  # cut mid-answer by uvicorn
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum and "stopped the web view" in err
    assert "Traceback" not in err and "Cancel" not in err, err
    assert rest is not None and all(not line.startswith("data: ") for line in rest)


def test_what_a_page_of_another_site_asks_is_refused_unread(night, monkeypatch) -> None:
    """BROKE: 200, `show` computed (git) for each `<img src=http://127.0.0.1:8765/api/experiments/2>` of a page
    elsewhere; a stream held for each /events."""
    asked = []
    experiment = Night.experiment
    monkeypatch.setattr(Night, "experiment", lambda self, exp_id: asked.append(exp_id) or experiment(self, exp_id))
    web = client(night)
    for site in ("cross-site", "same-site"):  # another site; another port of this machine (a notebook's, say)
        blind = {"sec-fetch-site": site, "sec-fetch-mode": "no-cors", "sec-fetch-dest": "image"}
        for path in ("/api/experiments/2", "/api/night", "/progress.svg", "/events", "/static/app.js"):
            answer = web.get(path, headers=blind)
            assert answer.status_code == 403, (site, path)
            assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert web.get("/api/night", headers={**blind, "sec-fetch-mode": "cors", "sec-fetch-dest": "empty"}).is_error
        assert web.get("/", headers={**blind, "sec-fetch-dest": "iframe", "sec-fetch-mode": "navigate"}).is_error
    assert asked == []
    link = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate", "sec-fetch-dest": "document"}
    assert web.get("/", headers=link).status_code == 200  # a link to the page, followed by the person
    own = {"sec-fetch-site": "same-origin", "sec-fetch-mode": "cors", "sec-fetch-dest": "empty"}
    assert web.get("/api/experiments/2", headers=own).status_code == 200 and asked == [2]
    assert web.get("/api/night", headers={"sec-fetch-site": "none"}).status_code == 200


@pytest.mark.slow  # a browser: a few seconds
def test_in_a_browser_a_page_of_another_site_makes_the_view_do_nothing(night, monkeypatch) -> None:
    """BROKE: a page of another site on this machine (http://localhost:PORT, another site than 127.0.0.1: a notebook's
    output, a dev server's page; Chromium lets a page on loopback reach loopback unasked) had the view read the night
    and compute `show` for each of its `<img>`, `fetch(no-cors)` and EventSource, none of which it could read."""
    from playwright.sync_api import sync_playwright
    from web_support import chromium, served

    asked = []
    snapshot = Night.snapshot
    monkeypatch.setattr(Night, "snapshot", lambda self: asked.append("snapshot") or snapshot(self))
    with served(night) as url, _attacker_site(url) as attacker, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(attacker)
            page.wait_for_function("document.title === 'done'", timeout=10_000)
            assert asked == []
            page.goto(url)  # the person's own page is served as ever
            page.locator("#experiments tbody tr").first.wait_for()
            assert asked
        finally:
            browser.close()


@contextlib.contextmanager
def _attacker_site(url: str):
    """A page at http://localhost:PORT/ that asks the view at `url` (127.0.0.1) for all it serves; its URL."""
    body = (
        f'<img src="{url}api/experiments/2"><img src="{url}progress.svg"><script>'
        f'new EventSource("{url}events"); fetch("{url}api/night", {{mode: "no-cors"}})'
        '.finally(() => setTimeout(() => { document.title = "done"; }, 1500))</script>'
    ).encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page) as site:
        thread = threading.Thread(target=site.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://localhost:{site.server_address[1]}/"
        finally:
            site.shutdown()
