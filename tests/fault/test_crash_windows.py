"""The crash windows the load test under faults runs into by chance, reproduced deterministically.

Each was a bug found by that test (a note written twice after a kill; a note written by a worker
whose lease had run out; a worker process that died when its connection dropped) and is fixed.

One window stays open by nature: a worker whose lease runs out *while* its ``orderNoteAdd`` is in
flight (the lease is renewed just before) and the worker that takes over can both write the note.
Saleor's mutation has no idempotency key; the app can only keep the lease longer than any Saleor
call (the default lease, 60 s, is; the 2 s lease of the load test is not).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from plugin.db.models import Job
from plugin.domain.ledger import Changes, ClaimedJob, Committed
from plugin.saleor.client import SaleorClient
from plugin.settings import Settings
from plugin.worker import Worker
from tests.conftest import SECRET
from tests.fault.chaos import KLARNA_OM, ROOT
from tests.functional.shop import Shop

pytestmark = pytest.mark.fault


@pytest.fixture
def shop(settings: Settings) -> Shop:  # type: ignore[misc]  # a generator fixture typed by what it yields
    shop = Shop(settings)
    yield shop
    shop.close()


def _shipped_order(shop: Shop) -> str:
    shop.install()
    order_id, _ = shop.order()
    tee, shoe = shop.line_ids(order_id)
    shop.saleor.fulfill(order_id, {tee: 2, shoe: 1}, tracking_number="1Z1")
    return order_id


def test_a_note_reaches_saleor_once_when_the_worker_dies_right_after_writing_it(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a shipped order whose capture succeeded, and a worker that dies (SIGKILL, power loss)
    # the moment Saleor has accepted the capture's note, before it could record that
    order_id = _shipped_order(shop)
    original = SaleorClient.write_order

    def write_then_die(self: SaleorClient, order: str, *args: Any) -> None:
        original(self, order, *args)
        raise SystemExit("killed")  # a BaseException: nothing in the worker catches it, like a kill

    monkeypatch.setattr(SaleorClient, "write_order", write_then_die)
    [job] = shop.worker.claim(1)
    with pytest.raises(SystemExit):
        shop.worker.process(job)
    monkeypatch.undo()
    assert shop.performed("captures") == 1 and len(shop.saleor.notes(order_id)) == 1
    # when its lease runs out and another worker takes the order over
    with shop.services.db.transaction() as session:
        session.execute(update(Job).values(leased_until=None))
    shop.sync()
    # then the shop still has the one note of the one capture
    assert shop.performed("captures") == 1
    assert len(shop.saleor.notes(order_id)) == 1, shop.saleor.notes(order_id)


def test_a_worker_whose_lease_ran_out_writes_no_note(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    # given two workers with a one-second lease, and worker A stalled (GC pause, overloaded host)
    # right after it recorded the capture and queued its note, before it writes the note
    order_id = _shipped_order(shop)
    deps = replace(shop.services.sync_deps(), lease_seconds=1)
    worker_a, worker_b = Worker(deps, retry_base=0.01), Worker(deps, retry_base=0.01)
    stalled, release = threading.Event(), threading.Event()
    commit = deps.repo.commit

    def stalling_commit(job: ClaimedJob, changes: Changes, *, lease_seconds: int) -> Committed:
        committed = commit(job, changes, lease_seconds=lease_seconds)
        if threading.current_thread().name == "worker-a" and changes.notes and not stalled.is_set():
            stalled.set()  # the outcome and its note are committed
            release.wait(20)
        return committed

    monkeypatch.setattr(deps.repo, "commit", stalling_commit)
    [job_a] = worker_a.claim(1)
    thread_a = threading.Thread(target=worker_a.process, args=(job_a,), name="worker-a")
    thread_a.start()
    try:
        assert stalled.wait(20)
        # when A's lease runs out meanwhile, and B takes the order over and finishes it
        time.sleep(1.2)
        [job_b] = worker_b.claim(1)
        worker_b.process(job_b)
        assert len(shop.saleor.notes(order_id)) == 1
    finally:
        release.set()
        thread_a.join(20)
    # then A, which no longer holds the order, writes nothing more
    assert shop.performed("captures") == 1
    assert len(shop.saleor.notes(order_id)) == 1, shop.saleor.notes(order_id)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_worker_process_survives_losing_its_database_connection_while_claiming(
    database_url: str, tmp_path: Path
) -> None:
    import psycopg

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KLARNA_")},
        "DATABASE_URL": database_url, "KLARNA_APP_SECRET_KEYS": SECRET, "KLARNA_BASE_URL": "http://127.0.0.1:9",
        "KLARNA_APP_INSTANCE_PATH": str(tmp_path), "PYTHONPATH": str(ROOT), "KLARNA_APP_SALEOR_ALLOW_LOOPBACK": "1",
    }  # fmt: skip
    log = tmp_path / "worker.log"
    with (
        open(log, "wb") as out,
        psycopg.connect(database_url) as blocker,
        psycopg.connect(database_url, autocommit=True) as admin,
    ):
        proc = subprocess.Popen(
            [str(KLARNA_OM), "worker", "--concurrency", "1"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            # given a worker polling the queue, its claim held up by a lock on the jobs table
            blocker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            pid = None
            deadline = time.monotonic() + 30
            while pid is None and time.monotonic() < deadline and proc.poll() is None:
                row = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    " AND query ILIKE '%FROM jobs%' LIMIT 1"
                ).fetchone()
                pid = row[0] if row else None
                time.sleep(0.05)
            assert pid is not None, log.read_text()
            # when its connection is terminated mid-claim (a failover, an admin, a network blip)
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
            blocker.rollback()
            time.sleep(2.0)
            # then the worker is still running and polling
            assert proc.poll() is None, log.read_text()[-3000:]
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
