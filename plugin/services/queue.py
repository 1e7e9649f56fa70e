"""The durable sync-order queue: one row per order (see ``Job``), leased by workers.

PostgreSQL claims with ``SELECT … FOR UPDATE SKIP LOCKED``; SQLite, which serializes writers,
claims with a compare-and-set UPDATE. Either way a job is held by one lease at a time.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Table, and_, bindparam, case, or_, select, text, update
from sqlalchemy.orm import Session

from plugin.db.models import Job, UTCDateTime, utcnow
from plugin.domain.ledger import ClaimedJob

__all__ = [
    "ClaimedJob", "check_now", "claim", "counts", "enqueue", "finish", "renew", "retry_later", "run_now",
    "scheduled_checks",
]  # fmt: skip


# One statement for PostgreSQL and SQLite (>= 3.24), built once: the webhook path runs it on every
# event, and SQLAlchemy cannot cache a dialect-specific ON CONFLICT construct.
_ENQUEUE = text(
    "INSERT INTO jobs (saleor_api_url, order_id, requested_seq, done_seq, claimed_seq, run_after, attempts,"
    " created_at, updated_at) VALUES (:url, :order_id, 1, 0, 0, :due, 0, :now, :now)"
    " ON CONFLICT (saleor_api_url, order_id) DO UPDATE SET"
    " requested_seq = jobs.requested_seq + 1,"
    # An idle job runs at once; a scheduled check (no error) is brought forward; a job backing off
    # after an error keeps its time.
    " run_after = CASE WHEN jobs.done_seq >= jobs.requested_seq THEN excluded.run_after"
    " WHEN jobs.last_error IS NULL AND excluded.run_after < jobs.run_after THEN excluded.run_after"
    " ELSE jobs.run_after END,"
    " attempts = CASE WHEN jobs.done_seq >= jobs.requested_seq THEN 0 ELSE jobs.attempts END,"
    " updated_at = excluded.updated_at"
).bindparams(bindparam("due", type_=UTCDateTime()), bindparam("now", type_=UTCDateTime()))


def enqueue(
    conn: Session | Connection, saleor_api_url: str, order_id: str, *, now: datetime | None = None, delay: float = 0
) -> None:
    """Ask for a sync of the order; coalesces with a job for it that is still waiting."""
    now = now or utcnow()
    conn.execute(
        _ENQUEUE, {"url": saleor_api_url, "order_id": order_id, "due": now + timedelta(seconds=delay), "now": now}
    )


def run_now(session: Session, saleor_api_url: str, order_id: str) -> None:
    """An admin asked: the order's waiting job runs at once, with a fresh attempt budget."""
    now = utcnow()
    session.execute(
        update(Job)
        .where(Job.saleor_api_url == saleor_api_url, Job.order_id == order_id, Job.requested_seq > Job.done_seq)
        .values(run_after=now, attempts=0, updated_at=now)
    )


# The worker's statements are built once with bind parameters (SQLAlchemy then reuses their cache
# key and compiled SQL) and run as Core on the jobs table, not through the ORM: they run several
# times per order. Parameter names carry a p_ prefix (a column's own name is reserved in SET).
_JOBS = cast(Table, Job.__table__)
_NOW = bindparam("p_now", type_=UTCDateTime())
_HELD = and_(_JOBS.c.id == bindparam("p_id"), _JOBS.c.lease_owner == bindparam("p_owner"))


def _claim_statement(postgres: bool) -> Any:
    due = and_(
        _JOBS.c.requested_seq > _JOBS.c.done_seq,
        _JOBS.c.run_after <= _NOW,
        or_(_JOBS.c.leased_until.is_(None), _JOBS.c.leased_until < _NOW),
    )
    ids = select(_JOBS.c.id).where(due).order_by(_JOBS.c.run_after, _JOBS.c.id).limit(bindparam("p_limit"))
    if postgres:
        ids = ids.with_for_update(skip_locked=True)
    return (
        update(_JOBS)
        .where(_JOBS.c.id.in_(ids.scalar_subquery()), due)
        .values(
            leased_until=bindparam("p_until", type_=UTCDateTime()),
            lease_owner=bindparam("p_owner"),
            claimed_seq=_JOBS.c.requested_seq,
            updated_at=_NOW,
        )
        .returning(_JOBS.c.id, _JOBS.c.saleor_api_url, _JOBS.c.order_id, _JOBS.c.attempts)
    )


_CLAIM = {True: _claim_statement(True), False: _claim_statement(False)}
_RENEW = update(_JOBS).where(_HELD).values(leased_until=bindparam("p_until", type_=UTCDateTime()), updated_at=_NOW)
_FINISHED = {
    "done_seq": _JOBS.c.claimed_seq, "leased_until": None, "lease_owner": None,
    "attempts": 0, "last_error": None, "updated_at": _NOW,
}  # fmt: skip
_FINISH = update(_JOBS).where(_HELD).values(**_FINISHED)
# again_in: one more sync later, unless a newer request already asks for one now.
_FINISH_AGAIN = (
    update(_JOBS)
    .where(_HELD)
    .values(
        **_FINISHED,
        requested_seq=case(
            (_JOBS.c.requested_seq > _JOBS.c.claimed_seq, _JOBS.c.requested_seq), else_=_JOBS.c.claimed_seq + 1
        ),
        run_after=case(
            (_JOBS.c.requested_seq > _JOBS.c.claimed_seq, _NOW), else_=bindparam("p_later", type_=UTCDateTime())
        ),
    )
)
_RETRY = {
    failed: update(_JOBS)
    .where(_HELD)
    .values(
        leased_until=None,
        lease_owner=None,
        run_after=bindparam("p_later", type_=UTCDateTime()),
        last_error=bindparam("p_error"),
        attempts=_JOBS.c.attempts + 1 if failed else 0,
        updated_at=_NOW,
    )
    for failed in (True, False)
}


def _held(conn: Session | Connection, statement: Any, params: dict[str, Any]) -> bool:
    result = conn.execute(statement, params)
    return cast(CursorResult[Any], result).rowcount == 1  # an UPDATE's result


def claim(
    session: Session | Connection, owner: str, *, lease_seconds: int, limit: int = 1, now: datetime | None = None
) -> list[ClaimedJob]:
    """Lease up to ``limit`` due jobs for ``owner`` in one statement; commit the session afterwards.

    A claim is not an attempt: ``attempts`` counts failed runs (see :func:`retry_later`), so a worker
    killed mid-job does not use up the order's budget.

    PostgreSQL: the inner SELECT locks with FOR UPDATE SKIP LOCKED, so concurrent claimers take
    different rows. SQLite runs the whole UPDATE under its single write lock.
    """
    leased_at = time.monotonic()
    now = now or utcnow()
    postgres = session.get_bind().dialect.name == "postgresql" if isinstance(session, Session) else (
        session.dialect.name == "postgresql"
    )  # fmt: skip
    params = {"p_now": now, "p_until": now + timedelta(seconds=lease_seconds), "p_owner": owner, "p_limit": limit}
    rows = session.execute(_CLAIM[postgres], params).all()
    return [ClaimedJob(row.id, row.saleor_api_url, row.order_id, row.attempts, owner, leased_at) for row in rows]


def renew(session: Session | Connection, job: ClaimedJob, *, lease_seconds: int) -> bool:
    """Extend the lease; False when another worker took the job over (ours expired)."""
    now = utcnow()
    params = {"p_id": job.id, "p_owner": job.owner, "p_now": now, "p_until": now + timedelta(seconds=lease_seconds)}
    return _held(session, _RENEW, params)


def finish(session: Session | Connection, job: ClaimedJob, *, again_in: float | None = None) -> bool:
    """Mark the claimed sequence done; ``again_in`` asks for one more sync later (e.g. fraud review).

    False when another worker holds the job (nothing changed)."""
    now = utcnow()
    params: dict[str, Any] = {"p_id": job.id, "p_owner": job.owner, "p_now": now}
    if again_in is None:
        return _held(session, _FINISH, params)
    return _held(session, _FINISH_AGAIN, {**params, "p_later": now + timedelta(seconds=again_in)})


def retry_later(
    session: Session | Connection, job: ClaimedJob, *, delay: float, error: str, failed: bool = True
) -> bool:
    """Release the lease and try again after ``delay`` seconds (the work is still due).

    ``failed`` counts the run against the attempt budget; a run that made progress starts it afresh.
    False when another worker holds the job (nothing changed)."""
    now = utcnow()
    params = {
        "p_id": job.id, "p_owner": job.owner, "p_now": now,
        "p_later": now + timedelta(seconds=delay), "p_error": error[:2000],
    }  # fmt: skip
    return _held(session, _RETRY[failed], params)


def counts(session: Session) -> dict[str, int]:
    """Queued (due or waiting), running (leased) and idle jobs."""
    now = utcnow()
    rows = session.execute(
        select(
            case(
                (Job.requested_seq <= Job.done_seq, "idle"),
                (and_(Job.leased_until.is_not(None), Job.leased_until >= now), "running"),
                else_="queued",
            ).label("state"),
            Job.id,
        )
    ).all()
    result = {"queued": 0, "running": 0, "idle": 0}
    for row in rows:
        result[row.state] += 1
    return result


# -- the schedule (issue 10): each open Klarna order keeps its next check as its job's delayed run --


def scheduled_checks(session: Session) -> list[tuple[str, str]]:
    """(saleor_api_url, order_id) of every order whose check waits on the schedule (not backing off)."""
    rows = session.execute(
        select(Job.saleor_api_url, Job.order_id)
        .where(Job.requested_seq > Job.done_seq, Job.last_error.is_(None))
        .order_by(Job.id)
    ).all()
    return [(row.saleor_api_url, row.order_id) for row in rows]


def check_now(session: Session, saleor_api_url: str, order_id: str) -> None:
    """Bring the order's scheduled check forward to now (``klarna-om reconcile``)."""
    enqueue(session, saleor_api_url, order_id)
