"""The browser view's web application (Starlette): a page, its script and style, and what they ask for.

    /                        the page (static/index.html)
    /events                  the night (night.Night.snapshot) each time it changes, as server-sent events
    /api/night               the same, once
    /api/experiments/{id}    one experiment as `autoresearch show` prints it
    /progress.svg            the progress chart of `autoresearch report`

It changes nothing anywhere. What it shows is a person's research: a page elsewhere on the web must not read it
through the person's browser. So it answers only requests that name it by the host it listens on (another site's
name made to point at 127.0.0.1, DNS rebinding, is refused), lets no other site frame or script it, and its page
runs only its own script."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
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


def create_app(night: Night, hosts: list[str]) -> Starlette:
    """The application over `night`, answering requests whose Host is one of `hosts` (["*"]: any)."""

    async def page(request: Request) -> Response:
        return FileResponse(_static_dir() / "index.html")

    async def snapshot(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(night.snapshot))

    async def experiment(request: Request) -> Response:
        try:
            text = await run_in_threadpool(night.experiment, request.path_params["exp_id"])
        except AutoresearchError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse({"text": text})

    async def chart(request: Request) -> Response:
        return Response(await run_in_threadpool(night.chart), media_type="image/svg+xml")

    async def events(request: Request) -> Response:
        return StreamingResponse(_changes(night), media_type="text/event-stream")

    routes = [
        Route("/", page),
        Route("/events", events),
        Route("/api/night", snapshot),
        Route("/api/experiments/{exp_id:int}", experiment),
        Route("/progress.svg", chart),
        Mount("/static", StaticFiles(directory=_static_dir()), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts), Middleware(_Guarded)]
    return Starlette(routes=routes, middleware=middleware)


async def _changes(night: Night) -> AsyncIterator[str]:
    """The snapshot at once, then each time it differs; a comment between, so that a dead page is noticed."""
    last, quiet = None, 0.0
    while True:
        now = json.dumps(await run_in_threadpool(night.snapshot))
        if now != last:
            last, quiet = now, 0.0
            yield f"data: {now}\n\n"
        elif quiet >= KEEP_ALIVE_S:
            quiet = 0.0
            yield ": still here\n\n"
        await anyio.sleep(POLL_S)
        quiet += POLL_S


class _Guarded:
    """Adds HEADERS to every answer."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def _static_dir() -> Path:
    return Path(__file__).parent / STATIC
