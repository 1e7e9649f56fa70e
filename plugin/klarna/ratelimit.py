"""The Klarna rate limit per merchant, held across every worker process through the database.

Klarna counts requests per merchant, whatever process or host sends them (klarna-om.md §1.4). One
row per merchant (``klarna_rate_buckets``) is a token bucket of ``rate`` tokens a second up to
``burst``. A process takes tokens in small batches with one statement (an ``UPDATE … RETURNING``
in autocommit, on SQLite and PostgreSQL alike) and hands them to its threads: a database round trip
per batch, not per call. A take always succeeds and may leave the balance below zero; the tokens
taken past zero mature one by one at the rate, and each caller waits until its token has matured,
so many processes queue up fairly on the row instead of polling it.

A batch is at most ``BATCH_SECONDS`` of the rate, and a token not used within ``HOLD_SECONDS`` of
maturing is dropped, so tokens a process took but did not use can exceed the rate only briefly and
by little. If the database cannot be reached (or its pool has no connection to spare), calls fall
back to a local bucket at the full rate for ``FALLBACK_SECONDS``, with a warning, then try the
shared bucket again (the worker needs the database anyway).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, cast

from sqlalchemy import BindParameter, Double, Engine, Table, bindparam, case, literal, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from plugin.db.models import KlarnaRateBucket
from plugin.klarna.client import RateLimiter

__all__ = ["BATCH_SECONDS", "FALLBACK_SECONDS", "HOLD_SECONDS", "SharedRateLimiter", "bucket_key"]

logger = logging.getLogger(__name__)

BATCH_SECONDS: Final = 0.05
MAX_BATCH: Final = 20
HOLD_SECONDS: Final = 0.25
FALLBACK_SECONDS: Final = 10.0

_bucket = cast(Table, KlarnaRateBucket.__table__)


def bucket_key(base_url: str, username: str) -> str:
    """The bucket of one merchant: its Klarna API (region, environment) and its API username."""
    return hashlib.sha256(f"{base_url.rstrip('/')}\n{username}".encode()).hexdigest()


def _least(a: Any, b: Any) -> Any:
    return case((a < b, a), else_=b)


def _greatest(a: Any, b: Any) -> Any:
    return case((a > b, a), else_=b)


def _number(name: str) -> BindParameter[float]:
    # b_ prefix: SQLAlchemy reserves a column's own name for the SET clause of an UPDATE.
    return bindparam(f"b_{name}", type_=Double())


def _take_statement() -> Any:
    """Refill for the time since the last take (up to the burst), take ``take`` tokens, return the balance."""
    now, burst, rate, take = (_number(name) for name in ("now", "burst", "rate", "take"))
    elapsed = _greatest(now - _bucket.c.updated_at, literal(0.0, Double()))
    return (
        update(_bucket)
        .where(_bucket.c.key == bindparam("b_key"))
        .values(
            tokens=_least(burst, _bucket.c.tokens + elapsed * rate) - take,
            updated_at=_greatest(_bucket.c.updated_at, now),
        )
        .returning(_bucket.c.tokens)
    )


_TAKE = _take_statement()  # built once; one round trip per batch of tokens


class SharedRateLimiter:
    """A token bucket in the database, shared by every process that uses the same ``key``."""

    def __init__(
        self,
        engine: Engine,
        key: str,
        rate_per_second: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # The local bucket checks the arguments, and limits this process alone while the database is out of reach.
        self._local = RateLimiter(rate_per_second, burst, sleep=sleep)
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._key = key
        self._rate = float(rate_per_second)
        self._burst = float(burst)
        self.batch = max(1, min(MAX_BATCH, burst, math.floor(self._rate * BATCH_SECONDS)))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._ready: deque[float] = deque()  # when each token this process holds matures (clock time)
        self._fallback: RateLimiter | None = None
        self._fallback_until = 0.0

    @property
    def shared(self) -> bool:
        """False while the database is out of reach and this process limits itself alone."""
        return self._fallback is None

    def acquire(self) -> None:
        """Take one token, waiting until it has matured."""
        with self._lock:
            if self._fallback is not None and self._clock() >= self._fallback_until:
                self._fallback = None  # try the shared bucket again
            fallback = self._fallback
            if fallback is None:
                now = self._clock()
                while self._ready and self._ready[0] + HOLD_SECONDS < now:
                    self._ready.popleft()  # held too long: dropped, so unused tokens do not pile up
                if not self._ready:
                    self._ready.extend(self._take(now))
                ready = self._ready.popleft() if self._ready else None
        if fallback is not None or ready is None:
            assert self._fallback is not None
            self._fallback.acquire()
            return
        wait = ready - self._clock()
        if wait > 0:
            self._sleep(wait)

    def _take(self, now: float) -> list[float]:
        """Take ``batch`` tokens from the bucket; when each of them matures (none: use the fallback)."""
        try:
            balance = self._update(now)
            if balance is None:
                self._create(now)
                balance = self._update(now)
        except (DBAPIError, PoolTimeout) as exc:
            logger.warning(
                "Klarna rate limit: the database is unreachable, limiting this process alone for a while",
                extra={"error": exc.__class__.__name__},
            )
            self._fallback = self._local
            self._fallback_until = now + FALLBACK_SECONDS
            return []
        if balance is None:  # the row vanished between the two statements: act as a fresh bucket
            balance = self._burst - self.batch
        # The balance after the i-th token of the batch is balance + batch - i; below zero it
        # matures when the rate has refilled it.
        return [now + max(0.0, -(balance + self.batch - i)) / self._rate for i in range(1, self.batch + 1)]

    def _update(self, now: float) -> float | None:
        params = {
            "b_key": self._key,
            "b_now": now,
            "b_burst": self._burst,
            "b_rate": self._rate,
            "b_take": float(self.batch),
        }
        with self._engine.connect() as conn:
            value = conn.execute(_TAKE, params).scalar_one_or_none()
        return None if value is None else float(value)

    def _create(self, now: float) -> None:
        dialect = self._engine.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = (
            insert(_bucket)
            .values(key=self._key, tokens=self._burst, updated_at=now)
            .on_conflict_do_nothing(index_elements=[_bucket.c.key])
        )
        with self._engine.connect() as conn:
            conn.execute(statement)
