"""UTCDateTime: aware datetimes go in, aware UTC datetimes come back, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from plugin.db import Database
from plugin.db.models import Installation, UTCDateTime

URL = "https://shop.example/graphql/"
# 14:30 at UTC+02:00 is 12:30 UTC: the offset must not survive, the instant must.
LOCAL = datetime(2026, 3, 1, 14, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
INSTANT = datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)
INSERT = text(
    "INSERT INTO installations (saleor_api_url, app_id, token_encrypted, jwks, installed_at)"
    " VALUES (:url, 'a', 't', 'j', :at)"
).bindparams(bindparam("at", type_=UTCDateTime()))


def _read_back(db: Database) -> datetime:
    with db.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # PostgreSQL answers in the session's time zone; the type still hands back UTC.
            conn.execute(text("SET TIME ZONE 'Asia/Tokyo'"))
        with Session(bind=conn) as session:
            return session.scalars(select(Installation.installed_at)).one()


@pytest.mark.parametrize("write", ["orm", "text"])
def test_a_datetime_reads_back_aware_in_utc(database_url: str, write: str) -> None:
    # given an aware datetime in another zone, written through the ORM or a text() statement
    db = Database(database_url)
    try:
        with db.transaction() as session:
            if write == "orm":
                session.add(
                    Installation(saleor_api_url=URL, app_id="a", token_encrypted="t", jwks="j", installed_at=LOCAL)
                )
            else:
                session.execute(INSERT, {"url": URL, "at": LOCAL})
        # when it is read back
        got = _read_back(db)
    finally:
        db.dispose()
    # then it is the same instant, aware, in UTC
    assert got == INSTANT
    assert got.tzinfo is UTC


def test_a_naive_datetime_is_refused(database_url: str) -> None:
    db = Database(database_url)
    try:
        with pytest.raises(StatementError, match="naive datetime"), db.transaction() as session:
            session.execute(INSERT, {"url": URL, "at": datetime(2026, 3, 1, 12, 30)})  # the naive value under test
    finally:
        db.dispose()
