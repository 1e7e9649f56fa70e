"""Several workers sharing one database: each order is synced by one worker at a time, once."""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict

import plugin.services.sync as sync
from plugin.worker import Worker
from tests.functional.shop import Shop


def test_concurrent_workers_never_hold_one_order_twice(shop: Shop, monkeypatch) -> None:  # type: ignore[no-untyped-def]  # monkeypatch is pytest's fixture
    # given ten shipped orders whose events were delivered three times each, and a slow Klarna
    shop.install()
    shop.klarna.latency = 0.01
    shop.saleor.auto_deliver = False
    orders = []
    for _ in range(10):
        order_id, kid = shop.order()
        tee, shoe = shop.line_ids(order_id)
        shop.saleor.fulfill(order_id, {tee: 1, shoe: 1}, tracking_number="A")
        orders.append((order_id, kid))
    for delivery in shop.saleor.outbox * 3:
        assert shop.saleor.deliver(delivery)[0] == 200
    # when four workers (separate owners, as on four hosts) run at once
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    lock = threading.Lock()
    original = sync.sync_order

    def traced(deps, job):  # type: ignore[no-untyped-def]  # wraps the worker's sync with its own arguments
        start = time.monotonic()
        try:
            return original(deps, job)
        finally:
            with lock:
                spans[job.order_id].append((start, time.monotonic()))

    monkeypatch.setattr("plugin.worker.sync_order", traced)
    workers = [Worker(shop.services.sync_deps(), concurrency=3, poll_interval=0.01, retry_base=0.01) for _ in range(4)]
    threads = [w.start_thread() for w in workers]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(shop.klarna.counts()["captures"] for _ in [0]) < 10:
        time.sleep(0.05)
    time.sleep(0.3)
    for w in workers:
        w.stop()
    for t in threads:
        t.join(10)
    # then every order has exactly its one capture and no two syncs of one order overlapped
    assert shop.performed("captures") == 10
    for order_id, kid in orders:
        assert shop.kstate(kid)["captured_amount"] == 11000
        intervals = sorted(spans[order_id])
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(intervals)), order_id
        assert len(shop.saleor.notes(order_id)) == 1
