"""Part (d): CPU per call of the app's HTTP clients against a bare ``http.client`` and ``requests.Session``.

All four talk to the same keep-alive loopback server in this process. The figure is the CPU time
of the calling thread (``time.thread_time``) per call, so the server's own work is not counted: it is
what one call costs the process that makes it. Klarna calls are ``GET /ordermanagement/v1/orders/{id}``
answered with a small order; Saleor calls are the ``orderNoteAdd`` mutation answered with no errors.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from plugin.klarna.client import KlarnaOrdersClient
from plugin.saleor.client import NOTE_ADD, SaleorClient

KLARNA_ORDER = json.dumps(
    {"order_id": "f3392f8b-6116-4073-ab96-e330819e2c07", "status": "AUTHORIZED", "purchase_currency": "USD",
     "order_amount": 13000, "captured_amount": 0, "refunded_amount": 0, "remaining_authorized_amount": 13000,
     "order_lines": [], "captures": [], "refunds": []}
).encode()  # fmt: skip
NOTE_ANSWER = json.dumps({"data": {"orderNoteAdd": {"errors": []}}}).encode()
ORDER_ID = "f3392f8b-6116-4073-ab96-e330819e2c07"
SALEOR_ORDER = "T3JkZXI6ZjMzOTJmOGItNjExNi00MDczLWFiOTYtZTMzMDgxOWUyYzA3"
NOTE = "Klarna: captured 130.00 USD (capture 4ba29b50-be7b-44f5-a492-113e6a865e22)."


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def _answer(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(KLARNA_ORDER, {"Klarna-Correlation-Id": "2f1b6c8d-bench"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(NOTE_ANSWER)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass


class LoopbackHTTP:
    """A keep-alive HTTP/1.1 server on 127.0.0.1 answering like Klarna (GET) and Saleor (POST)."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="bench-http", daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@dataclass(frozen=True)
class ClientRow:
    name: str
    calls: int
    cpu_us: float  # CPU of the calling thread per call


def cpu_per_call(call: Callable[[], object], calls: int, warmup: int) -> float:
    """Microseconds of the calling thread's CPU per call."""
    for _ in range(warmup):
        call()
    started = time.thread_time()
    for _ in range(calls):
        call()
    return (time.thread_time() - started) / calls * 1e6


def _bare_http_client(port: int) -> tuple[Callable[[], object], Callable[[], object], Callable[[], None]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    path = f"/ordermanagement/v1/orders/{ORDER_ID}"
    body = json.dumps({"query": NOTE_ADD, "variables": {"order": SALEOR_ORDER, "message": NOTE}}).encode()
    headers = {"Authorization": "Basic UEtfYmVuY2g6c2VjcmV0", "Accept": "application/json"}
    post_headers = {"Authorization": "Bearer bench-token", "Content-Type": "application/json"}

    def get() -> object:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return json.loads(response.read())

    def post() -> object:
        conn.request("POST", "/graphql/", body=body, headers=post_headers)
        response = conn.getresponse()
        return json.loads(response.read())

    return get, post, conn.close


def _bare_requests(base: str) -> tuple[Callable[[], object], Callable[[], object], Callable[[], None]]:
    session = requests.Session()
    url = f"{base}/ordermanagement/v1/orders/{ORDER_ID}"
    variables = {"order": SALEOR_ORDER, "message": NOTE}

    def get() -> object:
        return session.get(url, auth=("PK_bench", "secret"), timeout=10).json()

    def post() -> object:
        return session.post(
            f"{base}/graphql/",
            json={"query": NOTE_ADD, "variables": variables},
            headers={"Authorization": "Bearer bench-token"},
            timeout=10,
        ).json()

    return get, post, session.close


def measure(calls: int = 2000, warmup: int = 100) -> list[ClientRow]:
    """CPU per call of each client against one loopback server (rows in the table's order)."""
    server = LoopbackHTTP()
    closers: list[Callable[[], None]] = []
    try:
        bare_get, bare_post, close = _bare_http_client(server.port)
        closers.append(close)
        req_get, req_post, close = _bare_requests(server.base_url)
        closers.append(close)
        klarna = KlarnaOrdersClient(server.base_url, "PK_bench", "secret")
        closers.append(klarna.close)
        saleor = SaleorClient(f"{server.base_url}/graphql/", "bench-token")
        closers.append(saleor.close)
        cases: list[tuple[str, Callable[[], object]]] = [
            ("bare http.client, GET", bare_get),
            ("bare requests.Session, GET", req_get),
            ("app Klarna client, get_order", lambda: klarna.get_order(ORDER_ID)),
            ("bare http.client, GraphQL POST", bare_post),
            ("bare requests.Session, GraphQL POST", req_post),
            ("app Saleor client, add_note", lambda: saleor.add_note(SALEOR_ORDER, NOTE)),
        ]
        return [ClientRow(name, calls, cpu_per_call(call, calls, warmup)) for name, call in cases]
    finally:
        for close in closers:
            close()
        server.stop()


def render(rows: list[ClientRow]) -> list[str]:
    out = [
        "| client, call | µs CPU per call | vs bare http.client | vs bare requests.Session |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        kind = "GET" if "GET" in row.name or "Klarna" in row.name else "POST"
        bare = next(r for r in rows if r.name.startswith("bare http.client") and kind in r.name)
        session = next(r for r in rows if r.name.startswith("bare requests") and kind in r.name)
        out.append(
            f"| {row.name} | {row.cpu_us:,.0f} | {row.cpu_us / bare.cpu_us:.2f}x | {row.cpu_us / session.cpu_us:.2f}x |"
        )
    return out


if __name__ == "__main__":
    print("\n".join(render(measure())))
