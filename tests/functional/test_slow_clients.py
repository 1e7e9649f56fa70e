"""Issue 11, item 6: slow-header clients cannot starve the shipped gunicorn configuration.

A real gunicorn runs the shipped gunicorn.conf.py (one worker with two app threads, so the threaded
worker this replaced would starve on its first few slow clients). Forty connections each send a
request line and then one header byte every half second; meanwhile ``/healthz`` and a signed-less
webhook are asked from a normal client and must be answered. Everything is on loopback and every
loop is bounded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from plugin.db import Database
from tests.conftest import SECRET

ROOT = Path(__file__).resolve().parents[2]
SLOW_CLIENTS = 40
TRICKLE_SECONDS = 12.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _slow_client(port: int, stop: threading.Event, opened: list[int]) -> None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return
    with sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            opened.append(1)
            deadline = time.monotonic() + TRICKLE_SECONDS
            while not stop.is_set() and time.monotonic() < deadline:
                sock.sendall(b"X")  # an endless header name, one byte at a time
                stop.wait(0.5)
        except OSError:
            pass  # the server may drop us: that is allowed


def _serve(config: Path, port: int, tmp_path: Path, database_url: str, **extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "DATABASE_URL": database_url, "KLARNA_APP_SECRET_KEYS": SECRET,
        "KLARNA_APP_PUBLIC_URL": f"http://127.0.0.1:{port}", "KLARNA_APP_ENV": "production",
        "KLARNA_APP_INSTANCE_PATH": str(tmp_path), "KLARNA_APP_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1", "KLARNA_APP_WEB_THREADS": "2", **extra,
    }  # fmt: skip
    gunicorn = Path(sys.executable).parent / "gunicorn"
    return subprocess.Popen([str(gunicorn), "-c", str(config)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def _wait_up(proc: subprocess.Popen[bytes], url: str) -> None:
    for _ in range(200):
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"gunicorn did not start: {proc.communicate()[0].decode()[-2000:]}")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_slow_header_clients_do_not_starve_healthz_or_webhooks(database_url: str, tmp_path: Path) -> None:
    Database(database_url).upgrade()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _serve(ROOT / "gunicorn.conf.py", port, tmp_path, database_url)
    stop = threading.Event()
    opened: list[int] = []
    clients = [threading.Thread(target=_slow_client, args=(port, stop, opened), daemon=True) for _ in range(40)]
    try:
        _wait_up(proc, f"{base}/healthz")
        for thread in clients:
            thread.start()
        for _ in range(100):  # until the slow clients are all connected and trickling
            if len(opened) >= SLOW_CLIENTS:
                break
            time.sleep(0.05)
        assert len(opened) == SLOW_CLIENTS
        time.sleep(1.0)  # each has sent a few header bytes: under gthread every thread is now held
        answers = []
        for _ in range(5):
            answers.append(requests.get(f"{base}/healthz", timeout=5).status_code)
            webhook = requests.post(f"{base}/api/webhooks/order-events", data=b"{}", timeout=5,
                                    headers={"Saleor-Api-Url": "http://saleor.example/graphql/",
                                             "Saleor-Event": "order_updated", "Saleor-Signature": "x..y"})  # fmt: skip
            answers.append(webhook.status_code)  # answered (401: not installed), not starved
        assert answers == [200, 401] * 5
        assert any(thread.is_alive() for thread in clients)  # the attack was still going on
    finally:
        stop.set()
        for thread in clients:
            thread.join(5)
        proc.terminate()
        proc.wait(20)
        if proc.stdout is not None:
            proc.stdout.close()
