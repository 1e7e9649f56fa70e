"""plugin/asgi.py: the bridge gunicorn's asyncio worker runs the Flask app through."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from flask import Flask, jsonify, request

from plugin.asgi import WsgiBridge


def _app() -> Flask:
    app = Flask(__name__)

    @app.post("/echo/<name>")
    def echo(name: str):  # type: ignore[no-untyped-def]  # a Flask view in a test app
        return jsonify(
            name=name, query=request.args.get("q"), body=request.get_data(as_text=True),
            api_url=request.headers.get("Saleor-Api-Url"), remote=request.remote_addr,
            length=request.content_length,
        )  # fmt: skip

    return app


def _call(bridge: WsgiBridge, scope: dict[str, Any], chunks: list[bytes]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # a thread of its own: a browser test's event loop may still be set on the main thread
    thread = threading.Thread(target=lambda: asyncio.run(bridge(scope, receive, send)))
    thread.start()
    thread.join(10)
    return sent


def _scope(**headers: str) -> dict[str, Any]:
    return {
        "type": "http", "method": "POST", "path": "/echo/zażółć", "query_string": b"q=1", "scheme": "http",
        "http_version": "1.1", "server": ("127.0.0.1", 8000), "client": ("203.0.113.9", 5555),
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }  # fmt: skip


def test_a_request_arrives_whole_and_as_flask_expects() -> None:
    bridge = WsgiBridge(_app().wsgi_app, threads=2)
    sent = _call(bridge, _scope(**{"saleor-api-url": "https://s.example/graphql/", "content-type": "text/plain"}),
                 [b"hello ", b"world"])  # fmt: skip
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"]) == {
        "name": "zażółć", "query": "1", "body": "hello world", "api_url": "https://s.example/graphql/",
        "remote": "203.0.113.9", "length": 11,
    }  # fmt: skip


def test_headers_with_underscores_cannot_pose_as_dashed_ones() -> None:
    bridge = WsgiBridge(_app().wsgi_app, threads=1)
    sent = _call(bridge, _scope(**{"saleor_api_url": "https://evil.example/graphql/"}), [b""])
    assert json.loads(sent[1]["body"])["api_url"] is None


def test_a_body_over_the_cap_is_refused_while_it_arrives() -> None:
    bridge = WsgiBridge(_app().wsgi_app, threads=1, max_body_bytes=10)
    sent = _call(bridge, _scope(), [b"x" * 8, b"x" * 8, b"never read"])
    assert sent[0]["status"] == 413
