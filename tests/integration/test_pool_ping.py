"""The PostgreSQL pool pings a connection that sat idle before handing it out, and only such a one."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import event, text

import plugin.db
from plugin.db import Database
from tests.conftest import PG_SERVER

pytestmark = pytest.mark.postgres


def test_a_connection_dropped_while_idle_is_replaced_before_use(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a pooled connection whose backend PostgreSQL terminated while it sat in the pool
    monkeypatch.setattr(plugin.db, "PING_IDLE_SECONDS", 0.0)  # every pooled connection counts as idle
    db = Database(postgres_url, pool_size=1)
    try:
        with db.engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with psycopg.connect(PG_SERVER, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        # when the next transaction checks it out
        with db.engine.begin() as conn:
            again = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        # then it ran on a fresh connection instead of failing
        assert again != pid
    finally:
        db.dispose()


def test_a_connection_used_a_moment_ago_is_not_pinged(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a pool whose connection was just returned
    monkeypatch.setattr(plugin.db, "PING_IDLE_SECONDS", 3600.0)
    db = Database(postgres_url, pool_size=1)
    try:
        with db.engine.begin() as conn:
            conn.execute(text("SELECT 1"))
        pings: list[Any] = []
        event.listen(db.engine.pool, "checkout", lambda *args: pings.append(args))
        executed = []

        def on_ping(*_args: Any) -> None:
            executed.append("ping")

        monkeypatch.setattr(db.engine.dialect, "do_ping", on_ping)
        # when three transactions run one after the other
        for _ in range(3):
            with db.engine.begin() as conn:
                conn.execute(text("SELECT 1"))
        # then none of them paid a ping round trip
        assert len(pings) == 3 and executed == []
    finally:
        db.dispose()
