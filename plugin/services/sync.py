"""sync_order: make Klarna reflect one Saleor order, durably, and tell the shop (DESIGN §2 steps 3-6).

Each planned operation is written to the ledger with its idempotency key before the Klarna call
and its result recorded after, so a crash at any point resumes: the next run re-reads Klarna,
recognises what was performed by its reference, and re-sends what was not with the same key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from plugin.crypto import SecretBox
from plugin.db import Database
from plugin.db.models import Installation, Note, Operation, ProcessException, utcnow
from plugin.domain.model import (
    DEFAULT_MAPPING,
    Action,
    KlarnaCapture,
    KlarnaOrder,
    KlarnaRefund,
    PlannedOperation,
    RecordedLine,
    ShopOrder,
)
from plugin.domain.money import format_minor
from plugin.domain.plan import plan
from plugin.klarna.errors import KlarnaError, KlarnaNotFoundError
from plugin.klarna.orders import parse_order, recorded_lines, request_body
from plugin.services import queue
from plugin.services.merchant import MerchantSettings, SettingsStore

logger = logging.getLogger(__name__)

KEY_NAMESPACE = uuid.UUID("8a6f1c2e-6b1e-4c35-9d7a-0c6d9b4f2a10")
FRAUD_RECHECK_SECONDS = 900.0


class SaleorPort(Protocol):
    def get_order(self, order_id: str, metadata_key: str = ...) -> ShopOrder | None: ...
    def add_note(self, order_id: str, message: str) -> None: ...
    def set_private_metadata(self, object_id: str, values: dict[str, str]) -> None: ...


class KlarnaPort(Protocol):
    def get_order(self, order_id: str) -> Any: ...
    def capture(self, order_id: str, body: dict[str, Any], idempotency_key: str) -> Any: ...
    def refund(self, order_id: str, body: dict[str, Any], idempotency_key: str) -> Any: ...
    def cancel(self, order_id: str, idempotency_key: str) -> Any: ...
    def release_remaining_authorization(self, order_id: str, idempotency_key: str) -> Any: ...


class Transient(Exception):
    """Worth another try later (Klarna 5xx/429/timeouts, Saleor unreachable)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LeaseLost(Exception):
    """Another worker took the job over; stop without touching anything."""


@dataclass
class SyncDeps:
    db: Database
    store: SettingsStore
    box: SecretBox
    saleor_for: Callable[[str, str], SaleorPort]  # (saleor_api_url, token)
    klarna_for: Callable[[MerchantSettings], KlarnaPort]
    lease_seconds: int = 60
    max_attempts: int = 8
    now: Callable[[], datetime] = utcnow


@dataclass
class Outcome:
    performed: list[str] = field(default_factory=list)
    again_in: float | None = None
    skipped: str | None = None


def idempotency_key(
    saleor_api_url: str, order_id: str, klarna_order_id: str, op: PlannedOperation, generation: int
) -> str:
    """Deterministic: the same intended operation gives the same key; another amount, another key."""
    name = "|".join((saleor_api_url, order_id, klarna_order_id, op.kind, op.reference, str(op.amount), str(generation)))
    return str(uuid.uuid5(KEY_NAMESPACE, name))


def sync_order(deps: SyncDeps, job: queue.ClaimedJob) -> Outcome:
    """Run one claimed job. Raises :class:`Transient` to be retried, :class:`LeaseLost` to walk away."""
    with deps.db.transaction() as session:
        installation = session.get(Installation, job.saleor_api_url)
        if installation is None:
            return Outcome(skipped="installation removed")
        token = deps.box.decrypt(installation.token_encrypted)
        app_id = installation.app_id
        by_channel = {m.channel: m for m in deps.store.all(session, job.saleor_api_url)}
    saleor = deps.saleor_for(job.saleor_api_url, token)
    any_channel = by_channel.get("*")
    metadata_key = any_channel.options.klarna_id_metadata_key if any_channel else "klarna_order_id"
    order = _call_saleor(lambda: saleor.get_order(job.order_id, metadata_key))
    if order is None or order.klarna_order_id is None:
        return Outcome(skipped="not a Klarna order")
    ctx = _Context(deps, job, saleor, order, app_id)
    merchant = by_channel.get(order.channel_slug, any_channel)
    if merchant is None or not merchant.has_credentials:
        mapping = merchant.mapping if merchant else DEFAULT_MAPPING
        if Action(mapping.get(order.status, Action.NONE)) is Action.NONE:
            return ctx.outcome  # nothing to do yet; tell the admin when something is
        ctx.exception_once(
            "NOT_CONFIGURED",
            f"Klarna is not configured for channel {order.channel_slug}: set the API credentials in the app's settings",
        )
        ctx.flush_notes(merchant)
        return ctx.outcome
    ctx.run(merchant)
    ctx.flush_notes(merchant)
    if ctx.outcome.performed:
        ctx.write_summary()
    return ctx.outcome


def _call_saleor(call: Callable[[], Any]) -> Any:
    from plugin.saleor.client import SaleorError

    try:
        return call()
    except SaleorError as exc:
        raise Transient(f"Saleor: {exc}") from None


class _Context:
    def __init__(
        self, deps: SyncDeps, job: queue.ClaimedJob, saleor: SaleorPort, order: ShopOrder, app_id: str
    ) -> None:
        self.deps, self.job, self.saleor, self.order, self.app_id = deps, job, saleor, order, app_id
        self.klarna_id: str = order.klarna_order_id or ""
        self.outcome = Outcome()
        self.klarna_state: KlarnaOrder | None = None

    # -- the run -------------------------------------------------------------------------------

    def run(self, merchant: MerchantSettings) -> None:
        if Action(merchant.mapping.get(self.order.status, Action.NONE)) is Action.NONE and not self._has_pending():
            return  # nothing to reflect: no need to ask Klarna
        klarna = self.deps.klarna_for(merchant)
        state = self._read_klarna(klarna)
        if state is None:
            return
        state = self._reconcile(state)
        self.klarna_state = state
        planned = plan(self.order, state, merchant.mapping, merchant.options, now=self.deps.now())
        self._supersede(planned.operations)
        for blocked in planned.blocked:
            if blocked.retry_later:
                self.outcome.again_in = FRAUD_RECHECK_SECONDS
            verb = "refunded" if blocked.code == "EXCEEDS_CAPTURED" else "captured"
            self.note_once(
                f"blocked:{blocked.code}:{blocked.reference}",
                f"Klarna: not {verb}: {blocked.message} (Klarna order {self.klarna_id}).",
                exception=(blocked.code, blocked.message) if blocked.code.startswith("EXCEEDS") else None,
            )
        for op in planned.operations:
            if not self._perform(klarna, op):
                break

    def _supersede(self, operations: tuple[PlannedOperation, ...]) -> None:
        """Pending rows Klarna does not have and the plan no longer wants (the order changed
        before they were sent) are closed, so they are never sent later."""
        wanted = {(op.kind, op.reference, op.amount) for op in operations}
        with self.deps.db.transaction() as session:
            for op in self._ops(session):
                if op.state == "pending" and (op.kind, op.reference, op.amount) not in wanted:
                    op.state = "superseded"

    def _read_klarna(self, klarna: KlarnaPort) -> KlarnaOrder | None:
        try:
            return parse_order(klarna.get_order(self.klarna_id).json)
        except KlarnaNotFoundError as exc:
            self.exception_once("UNKNOWN_KLARNA_ORDER", f"Klarna does not know order {self.klarna_id} ({exc})", exc)
        except KlarnaError as exc:
            if exc.retryable:
                raise Transient(str(exc), getattr(exc, "retry_after", None)) from None
            self.exception_once(
                getattr(exc, "error_code", None) or "KLARNA_ERROR",
                f"Klarna refused to read order {self.klarna_id}: {exc}",
                exc,
            )
        return None

    def _has_pending(self) -> bool:
        with self.deps.db.transaction() as session:
            return any(op.state == "pending" for op in self._ops(session))

    def _ops(self, session: Session) -> list[Operation]:
        return list(
            session.scalars(
                select(Operation)
                .where(Operation.saleor_api_url == self.job.saleor_api_url, Operation.order_id == self.order.id)
                .order_by(Operation.id)
            )
        )

    def _reconcile(self, state: KlarnaOrder) -> KlarnaOrder:
        """Settle pending ledger rows against Klarna's truth; make ledger successes visible to the plan."""
        capture_refs = {c.reference: c for c in state.captures}
        refund_refs = {r.reference: r for r in state.refunds}
        extra_captures, extra_refunds = [], []
        with self.deps.db.transaction() as session:
            for op in self._ops(session):
                if op.state in ("pending", "failed"):
                    performed = (
                        (op.kind == "capture" and op.reference in capture_refs)
                        or (op.kind == "refund" and op.reference in refund_refs)
                        or (op.kind == "cancel" and state.status == "CANCELLED")
                        or (op.kind == "release" and state.remaining == 0)
                    )
                    if performed:
                        found = capture_refs.get(op.reference) or refund_refs.get(op.reference)
                        if op.state == "failed":
                            # It failed only as far as we could tell (a lost response): Klarna has it.
                            session.execute(
                                update(ProcessException)
                                .where(ProcessException.operation_id == op.id, ProcessException.state == "open")
                                .values(state="resolved", resolved_at=utcnow())
                            )
                        self._succeeded(
                            session, op, getattr(found, "capture_id", None) or getattr(found, "refund_id", None)
                        )
                if op.state == "succeeded":
                    if op.kind == "capture" and op.reference not in capture_refs:
                        extra_captures.append(
                            KlarnaCapture(op.klarna_resource_id or "", op.reference, op.amount, _recorded(op))
                        )
                    if op.kind == "refund" and op.reference not in refund_refs:
                        extra_refunds.append(
                            KlarnaRefund(op.klarna_resource_id or "", op.reference, op.amount, _recorded(op))
                        )
        if extra_captures or extra_refunds:
            logger.warning("Klarna does not list operations the ledger recorded", extra=self._log_extra())
            state = replace(
                state, captures=state.captures + tuple(extra_captures), refunds=state.refunds + tuple(extra_refunds)
            )
        return state

    def _perform(self, klarna: KlarnaPort, planned: PlannedOperation) -> bool:
        """Ledger first, then Klarna, then the result. False stops the remaining operations."""
        with self.deps.db.transaction() as session:
            op = session.scalar(
                select(Operation).where(
                    Operation.saleor_api_url == self.job.saleor_api_url,
                    Operation.order_id == self.order.id,
                    Operation.kind == planned.kind,
                    Operation.reference == planned.reference,
                    Operation.amount == planned.amount,
                )
            )
            if op is not None and op.state == "superseded":
                op.state = "pending"  # wanted again: the same intent keeps its key
            if op is not None and op.state != "pending":
                return op.state == "succeeded"
            if op is None:
                body = request_body(planned)
                op = Operation(
                    saleor_api_url=self.job.saleor_api_url, order_id=self.order.id, klarna_order_id=self.klarna_id,
                    kind=planned.kind, reference=planned.reference, amount=planned.amount, currency=self.order.currency,
                    idempotency_key=idempotency_key(self.job.saleor_api_url, self.order.id, self.klarna_id, planned, 0),
                    request_body=json.dumps(body) if body is not None else None,
                )  # fmt: skip
                session.add(op)
            if not queue.renew(session, self.job, lease_seconds=self.deps.lease_seconds):
                raise LeaseLost(f"job {self.job.id}")
            if planned.amount == 0:
                # Free goods: Klarna refuses an empty capture or refund; the ledger remembers the
                # units so the next shipment of the line is valued after them.
                op.state = "succeeded"
                return True
            op.attempts += 1
            key = op.idempotency_key
            body = json.loads(op.request_body) if op.request_body else None
        return self._send(klarna, planned, key, body)

    def _send(self, klarna: KlarnaPort, planned: PlannedOperation, key: str, body: dict[str, Any] | None) -> bool:
        try:
            if planned.kind == "capture":
                response = klarna.capture(self.klarna_id, body or {}, key)
            elif planned.kind == "refund":
                response = klarna.refund(self.klarna_id, body or {}, key)
            elif planned.kind == "cancel":
                response = klarna.cancel(self.klarna_id, key)
            else:
                response = klarna.release_remaining_authorization(self.klarna_id, key)
        except KlarnaError as exc:
            return self._failed(planned, key, exc)
        with self.deps.db.transaction() as session:
            op = self._by_key(session, key)
            _append_log(op, response.log)
            self._succeeded(session, op, response.resource_id)
        self.outcome.performed.append(f"{planned.kind} {format_minor(planned.amount, self.order.currency)}")
        return True

    def _failed(self, planned: PlannedOperation, key: str, exc: KlarnaError) -> bool:
        final = not exc.retryable or self.job.attempts >= self.deps.max_attempts
        with self.deps.db.transaction() as session:
            op = self._by_key(session, key)
            _append_log(op, getattr(exc, "log", None))
            op.error_code = getattr(exc, "error_code", None) or exc.__class__.__name__
            op.error_message = str(exc)[:2000]
            op.correlation_id = getattr(exc, "correlation_id", None)
            if final:
                self._fail(session, op, planned, exc)
        if not final:
            # The row stays pending: the retry re-sends it with the same key.
            raise Transient(str(exc), getattr(exc, "retry_after", None))
        logger.warning(
            "Klarna operation failed", extra=self._log_extra(op_kind=planned.kind, error_code=exc.__class__.__name__)
        )
        return False

    def _fail(self, session: Session, op: Operation, planned: PlannedOperation, exc: KlarnaError) -> None:
        op.state = "failed"
        amount = format_minor(planned.amount, self.order.currency)
        reason = f"{op.error_code}: {_messages(exc)}" + (
            f" (correlation id {op.correlation_id})" if op.correlation_id else ""
        )
        if exc.retryable:
            reason = f"still failing after {self.job.attempts} attempts: {reason}"
        retry = f" (retry {op.generation})" if op.generation else ""
        message = (
            f"Klarna: {planned.kind} of {amount} failed{retry}: {reason}. Retry it from the app's process exceptions."
        )
        session.add(ProcessException(
            saleor_api_url=self.job.saleor_api_url, order_id=self.order.id, operation_id=op.id,
            error_code=op.error_code, message=message, correlation_id=op.correlation_id, log=op.log,
        ))  # fmt: skip
        self._add_note(session, f"op:{op.id}:failed:{op.generation}", message)

    def _by_key(self, session: Session, key: str) -> Operation:
        return session.scalars(select(Operation).where(Operation.idempotency_key == key)).one()

    def _succeeded(self, session: Session, op: Operation, resource_id: str | None) -> None:
        op.state = "succeeded"
        op.klarna_resource_id = resource_id or op.klarna_resource_id
        op.error_code = op.error_message = None
        self._add_note(session, f"op:{op.id}:succeeded", success_note(op, self.order))

    # -- notes, exceptions, summary ----------------------------------------------------------

    def _add_note(self, session: Session, dedupe: str, message: str) -> bool:
        key = _dedupe_key(self.job.saleor_api_url, self.order.id, dedupe)
        if session.scalar(select(Note.id).where(Note.dedupe_key == key)) is not None:
            return False
        session.add(
            Note(saleor_api_url=self.job.saleor_api_url, order_id=self.order.id, dedupe_key=key, message=message)
        )
        return True

    def note_once(self, dedupe: str, message: str, exception: tuple[str, str] | None = None) -> None:
        with self.deps.db.transaction() as session:
            if self._add_note(session, f"{dedupe}:{self.klarna_id}", message) and exception:
                session.add(ProcessException(
                    saleor_api_url=self.job.saleor_api_url, order_id=self.order.id,
                    error_code=exception[0], message=exception[1],
                ))  # fmt: skip

    def exception_once(self, code: str, message: str, exc: KlarnaError | None = None) -> None:
        with self.deps.db.transaction() as session:
            if not self._add_note(session, f"exception:{code}:{self.klarna_id}", f"Klarna: {message}."):
                return
            session.add(ProcessException(
                saleor_api_url=self.job.saleor_api_url, order_id=self.order.id, error_code=code, message=message,
                correlation_id=getattr(exc, "correlation_id", None),
                log=json.dumps([exc.log] if exc is not None and getattr(exc, "log", None) else []),
            ))  # fmt: skip
        logger.warning("process exception", extra=self._log_extra(error_code=code))

    def flush_notes(self, merchant: MerchantSettings | None) -> None:
        """Write pending notes; a failed note is retried on its own and never repeats Klarna work."""
        write = merchant is None or merchant.options.write_notes
        with self.deps.db.transaction() as session:
            pending = list(
                session.scalars(
                    select(Note)
                    .where(
                        Note.saleor_api_url == self.job.saleor_api_url,
                        Note.order_id == self.order.id,
                        Note.state == "pending",
                    )
                    .order_by(Note.id)
                )
            )
            if not write:
                for note in pending:
                    note.state = "skipped"
                return
        for note in pending:
            with self.deps.db.transaction() as session:
                # A worker whose lease ran out must not write: the one that took over will.
                if not queue.renew(session, self.job, lease_seconds=self.deps.lease_seconds):
                    raise LeaseLost(f"job {self.job.id}")
            if note.message in self.order.notes:
                # Written by a run that died before recording it: Saleor has it already.
                with self.deps.db.transaction() as session:
                    session.get(Note, note.id).state = "written"  # type: ignore[union-attr]
                continue
            try:
                self.saleor.add_note(self.order.id, note.message)
            except Exception as exc:  # noqa: BLE001 - any failure leaves the note pending
                with self.deps.db.transaction() as session:
                    session.get(Note, note.id).attempts += 1  # type: ignore[union-attr]
                raise Transient(f"order note not written: {exc}") from None
            with self.deps.db.transaction() as session:
                session.get(Note, note.id).state = "written"  # type: ignore[union-attr]

    def write_summary(self) -> None:
        """Private metadata on the order (best effort: the ledger stays the record)."""
        state = self.klarna_state
        if state is None:
            return
        with self.deps.db.transaction() as session:
            ops = [op for op in self._ops(session) if op.state == "succeeded"]
        captured = max(state.captured, sum(op.amount for op in ops if op.kind == "capture"))
        refunded = max(state.refunded, sum(op.amount for op in ops if op.kind == "refund"))
        status = ops[-1].kind if ops else state.status
        summary = {
            "klarna_om.order_id": self.klarna_id,
            "klarna_om.status": {"cancel": "CANCELLED", "release": "CAPTURED"}.get(status, state.status),
            "klarna_om.captured": format_minor(captured, self.order.currency),
            "klarna_om.refunded": format_minor(refunded, self.order.currency),
        }
        try:
            self.saleor.set_private_metadata(self.order.id, summary)
        except Exception:  # noqa: BLE001
            logger.warning("order summary metadata not written", extra=self._log_extra())

    def _log_extra(self, **more: Any) -> dict[str, Any]:
        return {
            "saleor_api_url": self.job.saleor_api_url,
            "order_id": self.order.id,
            "klarna_order_id": self.klarna_id,
            **more,
        }


def success_note(op: Operation, order: ShopOrder) -> str:
    amount = format_minor(op.amount, op.currency)
    if op.kind == "capture":
        fulfillment = next((f for f in order.fulfillments if f.id == op.reference), None)
        what = f"shipment {fulfillment.number}" if fulfillment else "a shipment"
        tracking = f", tracking {fulfillment.tracking_number}" if fulfillment and fulfillment.tracking_number else ""
        return f"Klarna: captured {amount} for {what} (capture {op.klarna_resource_id}{tracking})."
    if op.kind == "refund":
        fulfillment = next((f for f in order.fulfillments if f.id == op.reference), None)
        what = f"return {fulfillment.number}" if fulfillment else op.reference
        return f"Klarna: refunded {amount} for {what} (refund {op.klarna_resource_id})."
    if op.kind == "cancel":
        return f"Klarna: order {op.klarna_order_id} cancelled; the authorization of {amount} is void."
    return f"Klarna: released the remaining authorization of {amount} (order {op.klarna_order_id})."


def _messages(exc: KlarnaError) -> str:
    messages = getattr(exc, "error_messages", None) or []
    return "; ".join(messages) if messages else str(exc)


def _recorded(op: Operation) -> tuple[RecordedLine, ...]:
    body = json.loads(op.request_body) if op.request_body else {}
    return recorded_lines(body.get("order_lines"))


def _append_log(op: Operation, entry: dict[str, Any] | None) -> None:
    if entry:
        log = json.loads(op.log or "[]")
        log.append(entry)
        op.log = json.dumps(log[-20:], default=str)


def _dedupe_key(saleor_api_url: str, order_id: str, dedupe: str) -> str:
    digest = hashlib.sha256(f"{saleor_api_url}|{order_id}".encode()).hexdigest()[:24]
    return f"{digest}:{dedupe}"[:255]
