"""The browser view's web application (Starlette): a page, its script and style, and what they ask for.

    /                        the page (static/index.html)
    /events                  the night (night.Night.snapshot) each time it changes, as server-sent events (without
                             its "experiments" where they are as last sent)
    /api/night               the same, once
    /api/experiments/{id}    one experiment as `autoresearch show` prints it
    /progress.svg            the progress chart of `autoresearch report`

It changes nothing anywhere. What it shows is a person's research: a page elsewhere on the web must not read it
through the person's browser. So it answers only requests that name it by the host it listens on (another site's
name made to point at 127.0.0.1, DNS rebinding, is refused), lets no other site frame or script it, and its page
runs only its own script."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autoresearch.errors import AutoresearchError
from autoresearch.web.night import Night

POLL_S = 1.0  # how often an open page's stream looks for a change
KEEP_ALIVE_S = 15.0  # a comment line this often keeps proxies and browsers from closing a quiet stream
STATIC = "static"

HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


def create_app(night: Night, hosts: list[str], stopping: threading.Event | None = None) -> Starlette:
    """The application over `night`, answering requests whose Host is one of `hosts` (["*"]: any); its streams end
    once `stopping` is set (the server stopping: uvicorn would cut them after its grace, with a traceback)."""
    stopping = stopping or threading.Event()

    async def page(request: Request) -> Response:
        return FileResponse(_static_dir() / "index.html")

    async def snapshot(request: Request) -> Response:
        return _JSON(await run_in_threadpool(night.snapshot))

    async def experiment(request: Request) -> Response:
        number = request.path_params["exp_id"]
        if not re.fullmatch("[0-9]{1,18}", number):  # no id; Starlette's int() of 4,301 digits or more raised
            return _JSON({"error": "no such experiment"}, status_code=404)
        try:
            text = await run_in_threadpool(night.experiment, int(number))
        except AutoresearchError as exc:
            return _JSON({"error": str(exc)}, status_code=404)
        return _JSON({"text": text})

    async def chart(request: Request) -> Response:
        return Response(await run_in_threadpool(night.chart), media_type="image/svg+xml")

    async def events(request: Request) -> Response:
        return StreamingResponse(_changes(night, stopping), media_type="text/event-stream")

    routes = [
        Route("/", page),
        Route("/events", events),
        Route("/api/night", snapshot),
        Route("/api/experiments/{exp_id}", experiment),
        Route("/progress.svg", chart),
        Mount("/static", StaticFiles(directory=_static_dir()), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts), Middleware(_Guarded)]
    return Starlette(routes=routes, middleware=middleware)


async def _changes(night: Night, stopping: threading.Event) -> AsyncIterator[str]:
    """The snapshot at once, then each time it differs, its rows only where they did (a run's clock changes the status
    each second: a night of 2,000 experiments sent 400 KB a second to each page); a comment between, so that a dead
    page is noticed. It ends when `stopping` is set."""
    last, rows_sent, quiet = None, None, 0.0
    while not stopping.is_set():
        snapshot = await run_in_threadpool(night.snapshot)
        now = json.dumps(snapshot)
        if now != last:
            last, quiet = now, 0.0
            rows = json.dumps(snapshot.get("experiments"))
            if rows == rows_sent:
                now = json.dumps({key: value for key, value in snapshot.items() if key != "experiments"})
            rows_sent = rows
            yield f"data: {now}\n\n"
        elif quiet >= KEEP_ALIVE_S:
            quiet = 0.0
            yield ": still here\n\n"
        for _ in range(10):  # POLL_S in tenths: the stream ends within one of the server's stopping
            if stopping.is_set():
                return
            await anyio.sleep(POLL_S / 10)
        quiet += POLL_S


class _JSON(JSONResponse):
    """JSON in ASCII, as the stream sends it: a text that is no UTF-8 (a workspace's path of Latin-1 bytes, held as
    lone surrogates) is escaped, where Starlette's UTF-8 raised."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


class _Guarded:
    """Adds HEADERS to every answer, and refuses what a page of another site asks through the person's browser."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        if scope["type"] == "http" and _of_another_site(scope):
            refused = PlainTextResponse("refused: asked by a page of another site", status_code=403)
            await refused(scope, receive, with_headers)
            return
        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def _of_another_site(scope: Scope) -> bool:
    """Whether a browser says a page of another site asks this (Sec-Fetch-Site; a port of its own is a site's):
    it cannot read the answer, but each request it sends is read, computed (`show`'s git processes) and held (a
    stream) on the machine that trains. The person's own navigation to a page (a link followed) is let through."""
    headers = Headers(scope=scope)
    if headers.get("sec-fetch-site") not in ("cross-site", "same-site"):
        return False  # the page's own ("same-origin"), typed or bookmarked ("none"), or no browser's
    navigated = headers.get("sec-fetch-mode") == "navigate" and headers.get("sec-fetch-dest") == "document"
    return not (navigated and scope["method"] in ("GET", "HEAD"))


def _static_dir() -> Path:
    return Path(__file__).parent / STATIC
