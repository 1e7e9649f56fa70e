"""The production entry for gunicorn's asyncio worker: ``plugin.asgi:create()`` (gunicorn.conf.py).

Why not a thread per connection: gunicorn's ``gthread`` worker parses a request's headers in one of
its threads, so a few dozen clients sending headers a byte at a time hold every thread, and
``/healthz`` and Saleor's webhooks go unanswered (issue 11, item 6). Here gunicorn's event loop
reads each request (headers and body) as it trickles in, at the cost of a coroutine, and only a
complete request reaches a thread of the bounded pool that runs the Flask (WSGI) app. Bodies are
capped at ``KLARNA_APP_MAX_BODY_BYTES`` while they arrive; a request line or headers too long are
refused by gunicorn's own limits (``limit_request_*``). Put a buffering proxy in front all the same
(deploy/nginx.conf): it also times out slow clients and terminates TLS.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class WsgiBridge:
    """An ASGI app that runs a WSGI app in a thread pool once the whole request has arrived."""

    def __init__(self, wsgi_app: WSGIApp, *, threads: int = 8, max_body_bytes: int = 1024 * 1024) -> None:
        self.wsgi_app = wsgi_app
        self.max_body_bytes = max_body_bytes
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="klarna-om-web")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await self._body(receive)
        if body is None:
            await _plain(send, 413, b'{"error":{"type":"REQUEST_ENTITY_TOO_LARGE","message":"body too large"}}')
            return
        environ = _environ(scope, body)
        loop = asyncio.get_running_loop()
        status, headers, chunks = await loop.run_in_executor(self._pool, self._run, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": chunks})

    async def _body(self, receive: Receive) -> bytes | None:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(parts)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def _run(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
            started[:] = [status, headers]
            return lambda data: None  # the legacy write() callable: Flask never uses it

        result = self.wsgi_app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started
        encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        return int(status.split(" ", 1)[0]), encoded, body

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._pool.shutdown(wait=True)
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _plain(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """PEP 3333 environ from an ASGI HTTP scope (the ASGI spec's own mapping)."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    root = scope.get("root_path", "")
    path = scope["path"]
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root.encode("utf-8").decode("latin-1"),
        "PATH_INFO": path.removeprefix(root).encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1]),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope.get("headers", []):
        if b"_" in raw_name:
            continue  # "Saleor_Api_Url" would pose as "Saleor-Api-Url" (gunicorn's header_map=drop)
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif name == "CONTENT_LENGTH":
            continue  # the body is complete: its real length is set above
        else:
            key = f"HTTP_{name}"
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def create() -> WsgiBridge:
    """gunicorn's ASGI entry: the same app as ``plugin.wsgi:create()``, behind the bridge."""
    from plugin.wsgi import create as create_wsgi

    app = create_wsgi()
    settings = app.extensions["klarna_om"].settings
    threads = int(os.environ.get("KLARNA_APP_WEB_THREADS", "8"))
    return WsgiBridge(app.wsgi_app, threads=threads, max_body_bytes=settings.max_body_bytes)


def bridge(spec: str) -> WsgiBridge:
    """Any WSGI app behind the bridge, for gunicorn.conf.py: ``plugin.asgi:bridge('pkg.mod:factory()')``
    (the benchmarks serve their reference apps this way, under the same configuration as the app)."""
    module, _, attribute = spec.partition(":")
    target = getattr(importlib.import_module(module), attribute.removesuffix("()"))
    app = target() if attribute.endswith("()") else target
    threads = int(os.environ.get("KLARNA_APP_WEB_THREADS", "8"))
    return WsgiBridge(getattr(app, "wsgi_app", app), threads=threads)
