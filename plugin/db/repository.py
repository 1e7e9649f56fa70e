"""The ledger repository on SQLAlchemy: implements :class:`plugin.services.ports.LedgerRepository`.

The hot path uses Core statements: one read per job (:meth:`SqlLedger.load`) and one transaction per
:meth:`SqlLedger.commit`, which renews the lease (or finishes or reschedules the job) first and
writes nothing when another worker holds it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

from sqlalchemy import BindParameter, Connection, String, Table, bindparam, case, func, literal, select, text, update
from sqlalchemy.orm import Session

from plugin.crypto import SecretBox
from plugin.db import Database
from plugin.db.models import (
    ChannelSettings,
    Installation,
    Note,
    Operation,
    PaymentRequest,
    ProcessException,
    UTCDateTime,
    utcnow,
)
from plugin.domain.ledger import (
    Changes,
    ClaimedJob,
    Committed,
    ExceptionDraft,
    Finish,
    JobSnapshot,
    LedgerOperation,
    NewOperation,
    NoteDraft,
    OpenException,
    QueuedNote,
    RetryLater,
)
from plugin.domain.states import ExceptionState, NoteState, OperationKind, OperationState
from plugin.domain.transactions import Mismatch
from plugin.services import payment_requests, queue
from plugin.services.merchant import SettingsStore
from plugin.services.payment_requests import RequestState
from plugin.services.ports import LeaseLost

LOG_KEPT = 20  # exchanges kept per operation (the first ones; a retry storm does not grow the row)

_OPS = cast(Table, Operation.__table__)
_NOTES = cast(Table, Note.__table__)
_EXCEPTIONS = cast(Table, ProcessException.__table__)
_REQUESTS = cast(Table, PaymentRequest.__table__)

_INSTALLATIONS = cast(Table, Installation.__table__)
_CHANNELS = cast(Table, ChannelSettings.__table__)
# The installation with its channels' settings (none: one row of NULLs), in one round trip.
_LOAD_INSTALLATION = (
    select(
        _INSTALLATIONS.c.token_encrypted, _INSTALLATIONS.c.app_id, _CHANNELS.c.channel_slug, _CHANNELS.c.region,
        _CHANNELS.c.environment, _CHANNELS.c.username, _CHANNELS.c.password_encrypted, _CHANNELS.c.mapping,
        _CHANNELS.c.options,
    )
    .select_from(
        _INSTALLATIONS.outerjoin(_CHANNELS, _CHANNELS.c.saleor_api_url == _INSTALLATIONS.c.saleor_api_url)
    )
    .where(_INSTALLATIONS.c.saleor_api_url == bindparam("url"))
    .order_by(_CHANNELS.c.channel_slug)
)  # fmt: skip
_LOAD_OPERATIONS = select(
    _OPS.c.id, _OPS.c.kind, _OPS.c.reference, _OPS.c.amount, _OPS.c.currency, _OPS.c.klarna_order_id,
    _OPS.c.idempotency_key, _OPS.c.generation, _OPS.c.state, _OPS.c.request_body, _OPS.c.klarna_resource_id,
    _OPS.c.error_code, _OPS.c.error_message, _OPS.c.correlation_id, _OPS.c.attempts,
).where(_OPS.c.saleor_api_url == bindparam("url"), _OPS.c.order_id == bindparam("order_id")).order_by(_OPS.c.id)  # fmt: skip
_LOAD_NOTES = (
    select(_NOTES.c.id, _NOTES.c.message)
    .where(
        _NOTES.c.saleor_api_url == bindparam("url"),
        _NOTES.c.order_id == bindparam("order_id"),
        _NOTES.c.state == NoteState.PENDING.value,
    )
    .order_by(_NOTES.c.id)
)
_LOAD_EXCEPTIONS = (
    select(
        _EXCEPTIONS.c.id, _EXCEPTIONS.c.subject, _EXCEPTIONS.c.error_code, _EXCEPTIONS.c.state,
        _EXCEPTIONS.c.operation_id, _EXCEPTIONS.c.reopened,
    )
    .where(
        _EXCEPTIONS.c.saleor_api_url == bindparam("url"),
        _EXCEPTIONS.c.order_id == bindparam("order_id"),
        _EXCEPTIONS.c.state.in_([ExceptionState.OPEN.value, ExceptionState.RETRIED.value]),
    )
    .order_by(_EXCEPTIONS.c.id)
)  # fmt: skip
# A note is queued once per dedupe key: a repeat does nothing and returns no row.
_QUEUE_NOTE = text(
    "INSERT INTO notes (saleor_api_url, order_id, dedupe_key, message, state, attempts, created_at)"
    " VALUES (:url, :order_id, :dedupe_key, :message, :state, 0, :now)"
    " ON CONFLICT (dedupe_key) DO NOTHING RETURNING id"
).bindparams(bindparam("now", type_=UTCDateTime()))


def dedupe_key(saleor_api_url: str, order_id: str, dedupe: str) -> str:
    """The stored key: unique per installation and order, bounded to the column's length."""
    digest = hashlib.sha256(f"{saleor_api_url}|{order_id}".encode()).hexdigest()[:24]
    return f"{digest}:{dedupe}"[:255]


def _subject(row: Any) -> str:
    if row.subject:
        return str(row.subject)
    return f"op:{row.operation_id}" if row.operation_id is not None else f"legacy:{row.id}"


class SqlLedger:
    """Implements :class:`plugin.services.ports.LedgerRepository`."""

    def __init__(self, db: Database, store: SettingsStore, box: SecretBox) -> None:
        self.db, self.store, self.box = db, store, box
        # PostgreSQL runs the claim (one statement) and the load (reads, each with its own snapshot
        # under READ COMMITTED either way) in autocommit: no BEGIN and COMMIT round trips. SQLite
        # keeps a transaction (the load's reads then share one snapshot).
        self._autocommit = db.engine.execution_options(isolation_level="AUTOCOMMIT") if db.is_postgres else None

    def _reads(self) -> AbstractContextManager[Connection]:
        return self._autocommit.connect() if self._autocommit is not None else self.db.engine.begin()

    def claim(self, owner: str, *, lease_seconds: int, limit: int) -> list[queue.ClaimedJob]:
        with self._reads() as conn:
            return queue.claim(conn, owner, lease_seconds=lease_seconds, limit=limit)

    def load(self, job: ClaimedJob) -> JobSnapshot | None:
        params = {"url": job.saleor_api_url, "order_id": job.order_id}
        with self._reads() as conn:  # Core statements built once; one row per channel
            rows = conn.execute(_LOAD_INSTALLATION, params).all()
            if not rows:
                return None
            installation = rows[0]
            channels = {
                m.channel: m for m in (self.store.from_row(row) for row in rows if row.channel_slug is not None)
            }
            operations = tuple(_operation(row) for row in conn.execute(_LOAD_OPERATIONS, params))
            requests = tuple(payment_requests.open_requests(conn, job.saleor_api_url, job.order_id, reported=True))
            notes = tuple(QueuedNote(row.id, row.message) for row in conn.execute(_LOAD_NOTES, params))
            exceptions = tuple(
                OpenException(
                    id=row.id,
                    subject=_subject(row),
                    code=row.error_code or "",
                    state=ExceptionState(row.state),
                    operation_id=row.operation_id,
                    reopened=row.reopened,
                )
                for row in conn.execute(_LOAD_EXCEPTIONS, params)
            )
        return JobSnapshot(
            token=self.box.decrypt(installation.token_encrypted),
            app_id=installation.app_id,
            channels=channels,
            operations=operations,
            pending_notes=notes,
            exceptions=exceptions,
            requests=requests,
        )

    def commit(self, job: ClaimedJob, changes: Changes, *, lease_seconds: int) -> Committed:
        # A Core connection, not an ORM session: every statement here is Core, built once.
        with self.db.engine.begin() as conn:
            if not _hold(conn, job, changes.job, lease_seconds):
                raise LeaseLost(f"job {job.id}")
            now = utcnow()
            mismatch = (
                payment_requests.bind(conn, job.saleor_api_url, changes.bind, job.order_id) if changes.bind else None
            )
            new = changes.new_operation if mismatch is None else None
            operation_id = _insert_operation(conn, job, new, now) if new else None
            if changes.request_reference is not None and mismatch is None:
                request_id, reference = changes.request_reference
                conn.execute(_REQUEST_REFERENCE, {"p_id": request_id, "p_reference": reference, "p_now": now})
            for change in changes.operations:
                _update_operation(conn, change.operation, change.log, change.attempted, now)
            state = NoteState.SKIPPED if changes.skip_notes else NoteState.PENDING
            queued = [q for draft in changes.notes if (q := _queue_note(conn, job, draft, now, state))]
            for draft in changes.exceptions:
                note = _open_exception(conn, job, draft, now, state)
                if note is not None:
                    queued.append(note)
            _set_notes(conn, changes.notes_written, NoteState.WRITTEN)
            _set_notes(conn, changes.notes_skipped, NoteState.SKIPPED)
            if changes.note_failures:
                conn.execute(_NOTE_FAILED, {"p_ids": list(changes.note_failures)})
            if changes.resolved:
                conn.execute(_RESOLVE, {"p_ids": list(changes.resolved), "p_now": now})
        return Committed(operation_id, tuple(queued), mismatch)

    # -- the dashboard's requests and the Klarna binding (plugin/services/payment_requests.py) ---

    def mark_request(self, job: ClaimedJob, request_id: int, state: RequestState, reason: str | None = None) -> None:
        with self.db.transaction() as session:
            payment_requests.mark(session, request_id, state, reason)

    def bind(self, job: ClaimedJob, klarna_order_id: str) -> Mismatch | None:
        with self.db.transaction() as session:
            return payment_requests.bind(session, job.saleor_api_url, klarna_order_id, job.order_id)


def _hold(session: Session | Connection, job: ClaimedJob, end: Finish | RetryLater | None, lease_seconds: int) -> bool:
    """Renew the lease, or end the run as asked; False if another worker holds the job."""
    if isinstance(end, Finish):
        return queue.finish(session, job, again_in=end.again_in)
    if isinstance(end, RetryLater):
        return queue.retry_later(session, job, delay=end.delay, error=end.error, failed=end.failed)
    return queue.renew(session, job, lease_seconds=lease_seconds)


def _operation(row: Any) -> LedgerOperation:
    return LedgerOperation(
        id=row.id,
        kind=OperationKind(row.kind),
        reference=row.reference,
        amount=row.amount,
        currency=row.currency,
        klarna_order_id=row.klarna_order_id,
        idempotency_key=row.idempotency_key,
        generation=row.generation,
        state=OperationState(row.state),
        request_body=json.loads(row.request_body) if row.request_body else None,
        klarna_resource_id=row.klarna_resource_id,
        error_code=row.error_code,
        error_message=row.error_message,
        correlation_id=row.correlation_id,
        attempts=row.attempts,
    )


def _insert_operation(conn: Connection, job: ClaimedJob, new: NewOperation, now: Any) -> int:
    sent = new.state is OperationState.PENDING
    row = conn.execute(
        _INSERT_OPERATION,
        {
            "saleor_api_url": job.saleor_api_url, "order_id": job.order_id, "klarna_order_id": new.klarna_order_id,
            "kind": new.kind.value, "reference": new.reference, "amount": new.amount, "currency": new.currency,
            "idempotency_key": new.idempotency_key, "generation": 0, "state": new.state.value,
            "request_body": json.dumps(new.request_body) if new.request_body is not None else None,
            "attempts": 1 if sent else 0, "log": "[]", "created_at": now, "updated_at": now,
        },
    ).one()  # fmt: skip
    return int(row.id)


def _update_operation(
    conn: Connection, op: LedgerOperation, log: Mapping[str, Any] | None, attempted: bool, now: Any
) -> None:
    params: dict[str, Any] = {
        "p_id": op.id, "p_state": op.state.value, "p_resource": op.klarna_resource_id, "p_code": op.error_code,
        "p_message": op.error_message, "p_correlation": op.correlation_id, "p_now": now,
    }  # fmt: skip
    if log:
        params["p_entry"] = json.dumps(log, default=str)
    conn.execute(_UPDATE_OPERATION[attempted, bool(log)], params)


def _update_operation_statement(attempted: bool, logged: bool) -> Any:
    values: dict[str, Any] = {
        "state": bindparam("p_state"), "klarna_resource_id": bindparam("p_resource"),
        "error_code": bindparam("p_code"), "error_message": bindparam("p_message"),
        "correlation_id": bindparam("p_correlation"), "updated_at": bindparam("p_now", type_=UTCDateTime()),
    }  # fmt: skip
    if attempted:
        values["attempts"] = _OPS.c.attempts + 1
    if logged:
        # Appended in SQL ("[...]" -> "[..., entry]"), so the row's log is never read back here.
        values["log"] = _appended_log(bindparam("p_entry", type_=String()))
    return update(_OPS).where(_OPS.c.id == bindparam("p_id")).values(**values)


def _appended_log(entry: Any) -> Any:
    log = _OPS.c.log
    head = func.substr(log, 1, func.length(log) - 1)
    return case(
        (_OPS.c.attempts > LOG_KEPT, log),
        (log == "[]", literal("[") + entry + literal("]")),
        else_=head + literal(",") + entry + literal("]"),
    )


# Built once (SQLAlchemy reuses their cache keys and compiled SQL): the sync runs them per order.
_INSERT_OPERATION = _OPS.insert().returning(_OPS.c.id)
_UPDATE_OPERATION = {(a, b): _update_operation_statement(a, b) for a in (True, False) for b in (True, False)}
_IDS: BindParameter[list[int]] = bindparam("p_ids", expanding=True)
_REQUEST_REFERENCE = (
    update(_REQUESTS)
    .where(_REQUESTS.c.id == bindparam("p_id"))
    .values(klarna_reference=bindparam("p_reference"), updated_at=bindparam("p_now", type_=UTCDateTime()))
)
_NOTE_FAILED = update(_NOTES).where(_NOTES.c.id.in_(_IDS)).values(attempts=_NOTES.c.attempts + 1)
_RESOLVE = (
    update(_EXCEPTIONS)
    .where(
        _EXCEPTIONS.c.id.in_(_IDS), _EXCEPTIONS.c.state.in_([ExceptionState.OPEN.value, ExceptionState.RETRIED.value])
    )
    .values(state=ExceptionState.RESOLVED.value, resolved_at=bindparam("p_now", type_=UTCDateTime()))
)
_SET_NOTES = (
    update(_NOTES)
    .where(_NOTES.c.id.in_(_IDS), _NOTES.c.state == NoteState.PENDING.value)
    .values(state=bindparam("p_state"))
)


def _queue_note(conn: Connection, job: ClaimedJob, draft: NoteDraft, now: Any, state: NoteState) -> QueuedNote | None:
    row = conn.execute(
        _QUEUE_NOTE,
        {
            "url": job.saleor_api_url,
            "order_id": job.order_id,
            "dedupe_key": dedupe_key(job.saleor_api_url, job.order_id, draft.dedupe),
            "message": draft.message,
            "state": state.value,
            "now": now,
        },
    ).first()
    return QueuedNote(int(row.id), draft.message) if row is not None else None


def _open_exception(
    conn: Connection, job: ClaimedJob, draft: ExceptionDraft, now: Any, state: NoteState
) -> QueuedNote | None:
    """Reopen, or open if its note is new; returns the note queued with it."""
    note = _queue_note(conn, job, draft.note, now, state)
    values = {
        "error_code": draft.code, "message": draft.message, "correlation_id": draft.correlation_id,
        "log": json.dumps(list(draft.log), default=str),
    }  # fmt: skip
    if draft.reopen is not None:
        conn.execute(
            update(_EXCEPTIONS)
            .where(_EXCEPTIONS.c.id == draft.reopen)
            .values(**values, state=ExceptionState.OPEN.value, reopened=_EXCEPTIONS.c.reopened + 1, resolved_at=None)
        )
    elif note is not None:
        conn.execute(
            _EXCEPTIONS.insert().values(
                **values, saleor_api_url=job.saleor_api_url, order_id=job.order_id, operation_id=draft.operation_id,
                subject=draft.subject, state=ExceptionState.OPEN.value, reopened=0, created_at=now,
            )
        )  # fmt: skip
    return note


def _set_notes(conn: Connection, ids: Sequence[int], state: NoteState) -> None:
    if ids:
        conn.execute(_SET_NOTES, {"p_ids": list(ids), "p_state": state.value})
