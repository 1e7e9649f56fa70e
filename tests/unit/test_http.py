"""plugin/http.py against hostile servers on loopback: huge answers, trickled bytes, inflation bombs,
redirects, and addresses the filter refuses (issue 11, items 3 and 4).

Each server is a raw socket on 127.0.0.1 that writes exactly the bytes of the attack, so nothing in
between (a WSGI server, a proxy) can soften it. Sends are bounded: a server stops after a fixed
number of bytes or seconds, whatever the client does.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import requests

from plugin import http
from plugin.http import AddressRefused, Bounds, DeadlineExceeded, ResponseTooLarge, address_allowed, bounded_session

Handler = Callable[[socket.socket], None]


@contextmanager
def raw_server(handler: Handler) -> Iterator[tuple[int, dict[str, int]]]:
    """Serve ``handler`` on a loopback port; yields (port, stats) where stats counts connections."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stats = {"connections": 0}
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            stats["connections"] += 1
            with conn:
                conn.settimeout(5)
                try:
                    _read_request(conn)
                    handler(conn)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], stats
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _read_request(conn: socket.socket) -> bool:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return False
        data += chunk
    return True


def _huge(conn: socket.socket) -> None:
    """Claims nothing, sends up to 64 MB (the attack used 400 MB) until the client hangs up."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
    block = b"x" * 65536
    for _ in range(1024):
        conn.sendall(block)


def _trickle_body(conn: socket.socket) -> None:
    """Headers at once, then one byte every 0.2 s for at most 20 s (each under the read timeout)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n")
    for _ in range(100):
        conn.sendall(b"x")
        time.sleep(0.2)


def _trickle_headers(conn: socket.socket) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200:
        conn.sendall(bytes([byte]))
        time.sleep(0.1)


def _bomb(conn: socket.socket) -> None:
    body = gzip.compress(b"\0" * (32 * 1024 * 1024))  # 32 kB on the wire, 32 MB inflated
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )


def _redirect(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://10.0.0.1/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def _ok(conn: socket.socket) -> None:
    """Answers every request on the connection (keep-alive) until the client closes it."""
    while True:
        conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Type: application/json\r\n\r\n{"ok":true}')
        if not _read_request(conn):
            return


LOOPBACK = Bounds(deadline=2.0, max_bytes=1024 * 1024, filter_addresses=True, allow_loopback=True)


def test_a_huge_answer_is_cut_at_the_cap() -> None:
    with raw_server(_huge) as (port, _), pytest.raises(ResponseTooLarge):
        bounded_session(LOOPBACK).get(f"http://127.0.0.1:{port}/", timeout=5)


def test_a_declared_huge_answer_is_refused_before_reading() -> None:
    def declared(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 400000000\r\nConnection: close\r\n\r\n" + b"x" * 1000)

    with raw_server(declared) as (port, _), pytest.raises(ResponseTooLarge, match="400000000"):
        bounded_session(LOOPBACK).get(f"http://127.0.0.1:{port}/", timeout=5)


@pytest.mark.parametrize("handler", [_trickle_body, _trickle_headers], ids=["body", "headers"])
def test_a_trickling_server_cannot_hold_a_call_past_the_deadline(handler: Handler) -> None:
    # each byte arrives well inside the 5 s read timeout: only the total deadline (2 s) can end it
    with raw_server(handler) as (port, _), pytest.raises(DeadlineExceeded):
        bounded_session(LOOPBACK).get(f"http://127.0.0.1:{port}/", timeout=(1, 5))


def test_an_inflation_bomb_is_cut_at_the_cap() -> None:
    with raw_server(_bomb) as (port, _), pytest.raises(ResponseTooLarge, match="inflates"):
        bounded_session(LOOPBACK).get(f"http://127.0.0.1:{port}/", timeout=5)


def test_redirects_are_never_followed() -> None:
    with raw_server(_redirect) as (port, _), pytest.raises(requests.TooManyRedirects):
        bounded_session(LOOPBACK).get(f"http://127.0.0.1:{port}/", timeout=5)


def test_loopback_is_refused_at_connect_time_unless_allowed() -> None:
    with raw_server(_ok) as (port, stats):
        strict = bounded_session(Bounds(filter_addresses=True))
        for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]"):
            with pytest.raises(requests.ConnectionError) as caught:
                strict.get(f"http://{host}:{port}/", timeout=5)
            assert isinstance(caught.value.args[0].reason, AddressRefused), caught.value
        assert stats["connections"] == 0  # refused before dialling
        # the same call with the development setting goes through, and the connection is reused
        session = bounded_session(LOOPBACK)
        assert session.get(f"http://127.0.0.1:{port}/", timeout=5).json() == {"ok": True}
        assert session.get(f"http://127.0.0.1:{port}/", timeout=5).json() == {"ok": True}
        session.close()
        assert stats["connections"] == 1


def test_private_and_link_local_addresses_are_refused_without_a_connection() -> None:
    strict = bounded_session(Bounds(filter_addresses=True, allow_loopback=True))
    for url in ("http://10.0.0.1/graphql/", "http://169.254.169.254/latest/meta-data/", "http://192.168.1.1:8000/"):
        with pytest.raises(requests.ConnectionError) as caught:
            strict.get(url, timeout=5)
        assert isinstance(caught.value.args[0].reason, AddressRefused), url


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("8.8.8.8", True),
        ("2a00:1450:4001:80e::200e", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_saleors_address_rule(address: str, allowed: bool) -> None:
    assert address_allowed(address, allow_loopback=False) is allowed


def test_a_good_answer_is_read_whole_and_the_watchdog_lets_it_be() -> None:
    with raw_server(_ok) as (port, stats):
        session = bounded_session(Bounds(deadline=0.5))
        for _ in range(3):
            assert session.get(f"http://127.0.0.1:{port}/", timeout=5).json() == {"ok": True}
        time.sleep(0.7)  # past every deadline armed above: the pooled connection must still work
        assert session.get(f"http://127.0.0.1:{port}/", timeout=5).json() == {"ok": True}
        session.close()
        assert stats["connections"] == 1


def test_sliding_window_bounds_each_key() -> None:
    now = [0.0]
    window = http.SlidingWindow(3, 60, clock=lambda: now[0])
    assert [window.allow("a") for _ in range(4)] == [True, True, True, False]
    assert window.allow("b")
    now[0] = 61
    assert window.allow("a")
