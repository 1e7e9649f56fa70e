"""Database access: engine, sessions and migrations (plain SQLAlchemy 2, no Flask)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

import migrations

if TYPE_CHECKING:  # alembic is imported only when migrating
    from alembic.config import Config

MIGRATIONS_DIR = Path(migrations.__file__).parent


PING_IDLE_SECONDS = 1.0  # a pooled connection idle longer than this is pinged before use


class NotMigratedError(Exception):
    """The database schema is not at the newest migration."""


def make_engine(url: str, pool_size: int = 10) -> Engine:
    """An engine with pooling suited to the backend; SQLite gets WAL and foreign keys."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            _create_private(Path(path))
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    for scheme in ("postgresql://", "postgres://"):  # postgres:// is what Heroku and others hand out
        if url.startswith(scheme):
            url = "postgresql+psycopg://" + url.removeprefix(scheme)
    # connect_timeout: a server that does not answer is reported in seconds, not after the OS gives up.
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, connect_args={"connect_timeout": 5})
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Pre-ping, but only a connection that sat in the pool for ``PING_IDLE_SECONDS``: a connection
    PostgreSQL dropped is replaced before use instead of failing a request, without a round trip
    on every checkout (the worker checks a connection out several times per order). A connection
    used a moment ago that breaks now fails like one that breaks mid-transaction: SQLAlchemy sees
    the disconnect and renews the pool, and the request or job is retried."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn, record):  # type: ignore[no-untyped-def]
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn, record, _proxy):  # type: ignore[no-untyped-def]
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since < PING_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(f"stale pooled connection: {exc.__class__.__name__}") from exc


def _create_private(path: Path) -> None:
    """The embedded database holds tokens, settings and the ledger: a new folder is 0700, a new file
    0600 (SQLite gives its -wal and -shm files the database file's mode)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


class Database:
    """Holds the engine and the session factory."""

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside one transaction: committed on success, rolled back on error."""
        with self.sessions() as session, session.begin():
            yield session

    def alembic_config(self) -> Config:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        cfg.attributes["engine"] = self.engine
        return cfg

    def upgrade(self, revision: str = "head") -> None:
        from alembic import command

        command.upgrade(self.alembic_config(), revision)

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self.alembic_config()).get_current_head()

    def check_migrated(self) -> None:
        """Raise NotMigratedError unless the schema is at head."""
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            raise NotMigratedError(
                f"database is at revision {current or 'none'}, the code needs {head}: run `klarna-om db upgrade`"
            )

    def dispose(self) -> None:
        self.engine.dispose()
