"""The order's scheduled check lives in its job row (issue 10): on SQLite and PostgreSQL a webhook
brings it forward, a backoff keeps its time, a finished run keeps one delayed run, and only one
worker ever holds the order; migration 0007 admits the new operation kinds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text

from plugin.db import Database
from plugin.db.models import Job, utcnow
from plugin.services import queue

URL, ORDER = "https://shop.example.com/graphql/", "T3JkZXI6MQ=="


@pytest.fixture
def db(database_url: str) -> Database:
    """The database with an installation (jobs and operations belong to one)."""
    database = Database(database_url)
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO installations (saleor_api_url, app_id, token_encrypted, jwks, installed_at)"
                " VALUES (:url, 'a', 't', 'j', CURRENT_TIMESTAMP)"
            ),
            {"url": URL},
        )
    return database


def _run_after(db: Database) -> timedelta:
    with db.transaction() as session:
        job = session.scalars(select(Job)).one()
        return job.run_after - utcnow()


def _finish_with_check_in(db: Database, seconds: float) -> None:
    with db.transaction() as session:
        [job] = queue.claim(session, "w1", lease_seconds=60)
        assert queue.finish(session, job, again_in=seconds)


def test_a_webhook_brings_the_scheduled_check_forward(db: Database) -> None:
    with db.transaction() as session:
        queue.enqueue(session, URL, ORDER)
    _finish_with_check_in(db, 24 * 3600)
    assert _run_after(db) > timedelta(hours=23)
    # when Saleor sends an event for the order
    with db.transaction() as session:
        queue.enqueue(session, URL, ORDER)
    # then it runs now, once: one worker claims it, a second finds nothing
    assert _run_after(db) <= timedelta(0)
    with db.transaction() as session:
        assert len(queue.claim(session, "w1", lease_seconds=60)) == 1
    with db.transaction() as session:
        assert queue.claim(session, "w2", lease_seconds=60) == []


def test_a_job_backing_off_keeps_its_time(db: Database) -> None:
    with db.transaction() as session:
        queue.enqueue(session, URL, ORDER)
    with db.transaction() as session:
        [job] = queue.claim(session, "w1", lease_seconds=60)
        assert queue.retry_later(session, job, delay=600, error="Klarna 503")
    with db.transaction() as session:
        queue.enqueue(session, URL, ORDER)
    assert _run_after(db) > timedelta(minutes=9)


def test_reconcile_lists_the_scheduled_checks_and_runs_them_now(db: Database) -> None:
    with db.transaction() as session:
        queue.enqueue(session, URL, ORDER)
    _finish_with_check_in(db, 3600)
    with db.transaction() as session:
        assert queue.scheduled_checks(session) == [(URL, ORDER)]
        queue.check_now(session, URL, ORDER)
    assert _run_after(db) <= timedelta(0)


def test_the_new_operation_kinds_are_stored(db: Database) -> None:
    insert = text(
        "INSERT INTO operations (saleor_api_url, order_id, klarna_order_id, kind, reference, amount, currency,"
        " idempotency_key, generation, state, attempts, log, created_at, updated_at)"
        " VALUES (:url, 'o', 'k', :kind, 'r', 1, 'EUR', :kind, 0, 'pending', 0, '[]', CURRENT_TIMESTAMP,"
        " CURRENT_TIMESTAMP)"
    )
    with db.engine.begin() as conn:
        for kind in ("extend_authorization", "update_authorization"):
            conn.execute(insert, {"kind": kind, "url": URL})
        assert conn.scalar(text("SELECT count(*) FROM operations")) == 2
