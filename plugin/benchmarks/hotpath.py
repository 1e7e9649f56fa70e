"""The worker's CPU for one order, measured in-process: ``python -m plugin.benchmarks.hotpath``.

Sets up the app on a fresh PostgreSQL database with the fakes (Saleor and Klarna serve from their
own threads), queues ``--orders`` shipped orders, then claims and syncs them one at a time in this
thread. The figure is this thread's CPU time (``time.thread_time``) per claim and per sync, so the
fakes' CPU and a busy machine's other load are left out. ``--profile`` adds a cProfile of the
syncs (this thread only), sorted by cumulative time. A figure to compare before and after a
change on the same machine; not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psycopg
from sqlalchemy import text

from plugin.app import Services, create_app
from plugin.benchmarks.harness import POSTGRES_ADMIN
from plugin.db import Database
from plugin.services.merchant import MerchantSettings
from plugin.settings import Settings
from plugin.testing.klarna import FakeKlarnaServer
from plugin.testing.saleor import FakeSaleor, wsgi_transport
from plugin.worker import Worker

LINES = [
    {"name": "Tee", "sku": "1", "quantity": 2, "unit_gross": "20.00", "unit_net": "20.00", "tax_rate": "0.00"},
    {"name": "Shoe", "sku": "2", "quantity": 1, "unit_gross": "90.00", "unit_net": "90.00", "tax_rate": "0.00"},
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=45)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    name = f"klarna_om_hotpath_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{POSTGRES_ADMIN.rsplit('/', 1)[0]}/{name}"
    klarna_server = FakeKlarnaServer().start()
    services: Services | None = None
    saleor: FakeSaleor | None = None
    try:
        Database(url).upgrade()
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                public_url="http://127.0.0.1:5056", database_url=url, secret_keys=("x" * 32,),
                instance_path=Path(tmp), saleor_allow_loopback=True, register_per_minute=1000,
            ).validated()  # fmt: skip
            settings = replace(settings, klarna_base_url=klarna_server.base_url)
            services = Services.build(settings)
            app = create_app(services=services)
            saleor = FakeSaleor(app_transport=wsgi_transport(app.wsgi_app)).start()
            assert saleor.install(f"{settings.public_base}/api/manifest").ok
            with services.db.transaction() as session:
                merchant = MerchantSettings(channel="*", username="PK_test", password="secret")
                services.store.save(session, saleor.api_url, merchant)
            worker = Worker(services.sync_deps(), concurrency=1)
            klarna = klarna_server.fake
            total = args.warmup + args.orders
            orders = []
            for _ in range(total):
                kid = klarna.create_order(order_amount=13000, currency="USD", fraud_status="ACCEPTED")
                orders.append(saleor.create_order(lines=LINES, currency="USD", klarna_order_id=kid))
            worker.run_until_idle()  # the creation's own jobs (nothing to capture yet)
            for order_id in orders:
                ids = [line["id"] for line in saleor.order(order_id)["lines"]]
                saleor.fulfill(order_id, {ids[0]: 2, ids[1]: 1}, tracking_number="1Z1")
            with services.db.engine.begin() as conn:  # every shipped order's job is due now
                conn.execute(text("UPDATE jobs SET run_after = now() WHERE requested_seq > done_seq"))
            # CPU time of this thread, not wall time: waits on the database and the fakes are left out
            profiler = cProfile.Profile(time.thread_time) if args.profile else None
            claims: list[float] = []
            syncs: list[float] = []
            captures_before = klarna.counts()["captures"]
            i, idle_until = 0, time.monotonic() + 10
            while i < total and time.monotonic() < idle_until:
                t0 = time.thread_time()
                jobs = worker.claim(1)
                t1 = time.thread_time()
                if not jobs:  # the app may still be taking the webhooks in
                    time.sleep(0.05)
                    continue
                idle_until = time.monotonic() + 10
                if profiler is not None and i >= args.warmup:
                    profiler.enable()
                worker.process(jobs[0])
                if profiler is not None:
                    profiler.disable()
                t2 = time.thread_time()
                if i >= args.warmup:
                    claims.append(t1 - t0)
                    syncs.append(t2 - t1)
                i += 1
            captured = klarna.counts()["captures"] - captures_before
            print(f"orders synced {len(syncs)} (+{args.warmup} warm-up), captures {captured}")
            print(
                f"worker thread CPU per order: claim {statistics.mean(claims) * 1000:.2f} ms, "
                f"sync {statistics.mean(syncs) * 1000:.2f} ms (median {statistics.median(syncs) * 1000:.2f}), "
                f"total {(statistics.mean(claims) + statistics.mean(syncs)) * 1000:.2f} ms"
            )
            if profiler is not None:
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.top)
                print(out.getvalue())
    finally:
        if saleor is not None:
            saleor.stop()
        klarna_server.stop()
        if services is not None:
            services.db.dispose()
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
