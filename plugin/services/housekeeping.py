"""Housekeeping: rows that only record the past are deleted after the retention period.

Deliveries (the webhook log) and idle jobs (a finished sync-order row, not leased, nothing
requested since) older than ``KLARNA_APP_RETENTION_DAYS``. The ledger (operations), notes,
exceptions and settings are never pruned: they are the books and the merchant's own data.
Deletes go in small batches so a large backlog never holds a long lock; the worker loop calls
:func:`prune` at start and then once an hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, delete, or_, select

from plugin.db import Database
from plugin.db.models import Delivery, Job, utcnow

BATCH = 2000
MAX_BATCHES = 50  # per table and call: the next call continues


@dataclass(frozen=True)
class Pruned:
    deliveries: int
    jobs: int


def prune(db: Database, retention: timedelta, *, now: datetime | None = None) -> Pruned:
    """Delete deliveries and idle jobs last touched before ``now - retention``."""
    now = now or utcnow()
    cutoff = now - retention
    old_deliveries = select(Delivery.id).where(Delivery.received_at < cutoff)
    idle_jobs = select(Job.id).where(
        Job.done_seq >= Job.requested_seq,
        Job.updated_at < cutoff,
        Job.run_after < cutoff,
        or_(Job.leased_until.is_(None), Job.leased_until < now),
    )
    return Pruned(
        deliveries=_delete_batches(db, Delivery, old_deliveries),
        jobs=_delete_batches(db, Job, idle_jobs),
    )


def _delete_batches(db: Database, model: type[Delivery] | type[Job], ids: Select[tuple[int]]) -> int:
    total = 0
    for _ in range(MAX_BATCHES):
        with db.transaction() as session:
            batch = list(session.scalars(ids.limit(BATCH)))
            if not batch:
                break
            # The id list, with the condition repeated: a row touched since the select stays.
            session.execute(delete(model).where(model.id.in_(batch), ids.whereclause))  # type: ignore[arg-type]  # Optional in SQLAlchemy's types; ids always has a WHERE
        total += len(batch)
        if len(batch) < BATCH:
            break
    return total
