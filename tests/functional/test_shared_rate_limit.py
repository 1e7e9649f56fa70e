"""The Klarna rate limit holds per merchant across worker processes (the bucket lives in the database)."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from plugin.db import Database
from plugin.klarna.client import KlarnaOrdersClient
from plugin.klarna.ratelimit import FALLBACK_SECONDS, SharedRateLimiter, bucket_key
from plugin.testing.loopback import LoopbackServer

ORDER = json.dumps({"order_id": "o-1", "status": "AUTHORIZED"}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


def test_two_limiters_on_one_bucket_share_the_rate(db: Database) -> None:
    # given two processes' limiters for one merchant (rate 2/s, burst 3) on one clock
    clock = Clock()
    first, second = (
        SharedRateLimiter(db.engine, bucket_key("https://k", "PK_1"), 2.0, 3, clock=clock, sleep=clock.sleep)
        for _ in range(2)
    )
    # when they take 7 tokens in turn
    for limiter in (first, second, first, second, first, second, first):
        limiter.acquire()
    # then the burst went at once and every later token waited its 0.5 s: 7 tokens in 2 s, not 2 x 7
    assert clock.sleeps == [0.5, 0.5, 0.5, 0.5]
    # and another merchant has a bucket of its own
    other = SharedRateLimiter(db.engine, bucket_key("https://k", "PK_2"), 2.0, 3, clock=clock, sleep=clock.sleep)
    other.acquire()
    assert clock.sleeps == [0.5, 0.5, 0.5, 0.5]


def test_an_idle_bucket_refills_up_to_its_burst(db: Database) -> None:
    clock = Clock()
    limiter = SharedRateLimiter(db.engine, bucket_key("https://k", "PK_1"), 10.0, 2, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        limiter.acquire()
    assert clock.sleeps == [0.1]
    clock.now += 60  # a minute idle refills two tokens, not six hundred
    for _ in range(3):
        limiter.acquire()
    assert clock.sleeps == [0.1, 0.1]


def test_batches_are_small_and_bounded() -> None:
    engine: Any = type("E", (), {"execution_options": lambda self, **_: self})()
    assert SharedRateLimiter(engine, "k", 25, 25).batch == 1
    assert SharedRateLimiter(engine, "k", 200, 200).batch == 10
    assert SharedRateLimiter(engine, "k", 100_000, 100_000).batch == 20
    assert SharedRateLimiter(engine, "k", 100_000, 5).batch == 5


def test_an_unreachable_database_falls_back_to_a_local_limit_for_a_while(tmp_path: Any) -> None:
    # given a database without the table yet (as if unreachable)
    db = Database(f"sqlite:///{tmp_path / 'late.sqlite3'}")
    clock = Clock()
    limiter = SharedRateLimiter(db.engine, "k", 1000.0, 2, clock=clock, sleep=clock.sleep)
    # when tokens are taken / then calls go on, limited by this process alone
    for _ in range(3):
        limiter.acquire()
    assert not limiter.shared
    # and once the database answers again and the fallback time is over, the shared bucket is used
    db.upgrade()
    clock.now += FALLBACK_SECONDS
    limiter.acquire()
    assert limiter.shared
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM klarna_rate_buckets")).scalar_one() == 1
    db.dispose()


# -- two real processes against one counting server ------------------------------------------


RATE, BURST, CALLS_EACH = 10.0, 2, 12


def _calls(database_url: str, base_url: str, calls: int) -> None:
    database = Database(database_url)
    limiter = SharedRateLimiter(database.engine, bucket_key(base_url, "PK_shared"), RATE, BURST)
    with KlarnaOrdersClient(base_url, "PK_shared", "secret", rate_limiter=limiter) as klarna:
        for _ in range(calls):
            klarna.get_order("o-1")
    database.dispose()


def test_two_worker_processes_together_stay_under_the_merchants_rate(database_url: str, db: Database) -> None:
    # given a Klarna stand-in that records when each request arrives
    arrivals: list[float] = []
    lock = threading.Lock()

    def klarna(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with lock:
            arrivals.append(time.time())
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(ORDER)))])
        return [ORDER]

    server = LoopbackServer(klarna, "counting-klarna")
    base_url = f"http://127.0.0.1:{server.port}"
    try:
        # when two processes each make 12 calls for the same merchant (rate 10/s, burst 2)
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_calls, args=(database_url, base_url, CALLS_EACH)) for _ in range(2)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(120)
        assert [proc.exitcode for proc in procs] == [0, 0]
    finally:
        server.stop()
    # then every call arrived, and no one-second window holds more than rate + burst (+1 for the
    # moment between taking a token and the request reaching the server); one limiter per process
    # would let about twice that through
    assert len(arrivals) == 2 * CALLS_EACH
    arrivals.sort()
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert busiest <= RATE + BURST + 1, busiest
