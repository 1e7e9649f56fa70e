"""Dashboard requests (TRANSACTION_*_REQUESTED) and the Klarna order <-> Saleor order binding.

The webhook records a request here *before* it answers Saleor with the request's pspReference;
the worker reads the open requests of an order, performs them through the ledger and reports the
outcome on the transaction with that same pspReference (protocol §5.4).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, CursorResult, bindparam, select, text, update
from sqlalchemy.orm import Session

from plugin.db.models import KlarnaBinding, PaymentRequest, UTCDateTime, utcnow
from plugin.domain.requests import OpenRequest, RequestState
from plugin.domain.transactions import REQUEST_EVENT, ActionKind, ActionRequest, Mismatch, MismatchCode

__all__ = ["OpenRequest", "RecordedRequest", "RequestState", "bind", "mark", "open_requests", "record", "request_key"]

_NAMESPACE = uuid.UUID("5b0f7d3e-8a8e-4f51-9a57-0c1f0a4d2b11")


@dataclass(frozen=True)
class RecordedRequest:
    id: int
    psp_reference: str
    created: bool  # False: an identical delivery was already recorded


def request_key(request: ActionRequest, raw_body: bytes) -> str:
    """Saleor's *_REQUEST event id when the payload names it unambiguously, else a digest of the body.

    Saleor never re-sends a sync webhook's body (its retries are empty), so an identical body is a
    replay. Two presses of the same button in quick succession can both be unanswered in one
    payload; then the event id is ambiguous and the body (its ``issuedAt`` differs) tells them apart.
    """
    event = request.request_event
    candidates = [
        e for e in request.transaction.events
        if e.type == REQUEST_EVENT[request.action] and not e.psp_reference and e.amount == request.amount
    ]  # fmt: skip
    if event is not None and event.id and len(candidates) == 1:
        return f"event:{event.id}"[:255]
    return "body:" + hashlib.sha256(raw_body).hexdigest()


def psp_reference_for(saleor_api_url: str, key: str) -> str:
    """Deterministic: the same request always gets the same pspReference."""
    return str(uuid.uuid5(_NAMESPACE, f"{saleor_api_url}\n{key}"))


def details_of(request: ActionRequest) -> dict[str, object]:
    refund = request.granted_refund
    if refund is None:
        return {}
    return {
        "granted_refund": {
            "id": refund.id,
            "amount": refund.amount,
            "shipping_included": refund.shipping_included,
            "lines": [{"order_line_id": ln.order_line_id, "quantity": ln.quantity} for ln in refund.lines],
        }
    }


_RECORD = text(
    "INSERT INTO payment_requests (saleor_api_url, request_key, order_id, transaction_id, klarna_order_id, action,"
    " amount, currency, psp_reference, details, state, created_at, updated_at) VALUES (:url, :key, :order_id,"
    " :transaction_id, :klarna_order_id, :action, :amount, :currency, :psp, :details, :state, :now, :now)"
    " ON CONFLICT DO NOTHING"
).bindparams(bindparam("now", type_=UTCDateTime()))


def record(conn: Session | Connection, saleor_api_url: str, request: ActionRequest, key: str) -> RecordedRequest:
    """Store the request once; an identical delivery returns the first row's pspReference."""
    psp = psp_reference_for(saleor_api_url, key)
    inserted: CursorResult[Any] = conn.execute(  # type: ignore[assignment] # text() INSERT gives a CursorResult
        _RECORD,
        {
            "url": saleor_api_url, "key": key, "order_id": request.order_id, "transaction_id": request.transaction.id,
            "klarna_order_id": request.transaction.psp_reference, "action": request.action.value,
            "amount": request.amount, "currency": request.currency.upper(), "psp": psp,
            "details": json.dumps(details_of(request)), "state": RequestState.RECORDED.value, "now": utcnow(),
        },
    )  # fmt: skip
    row = conn.execute(
        select(PaymentRequest.id, PaymentRequest.psp_reference).where(
            PaymentRequest.saleor_api_url == saleor_api_url, PaymentRequest.request_key == key
        )
    ).one()
    return RecordedRequest(row.id, row.psp_reference, created=inserted.rowcount == 1)


def open_requests(
    conn: Session | Connection, saleor_api_url: str, order_id: str, *, reported: bool = False
) -> list[OpenRequest]:
    """The order's requests still to perform or to report (with ``reported``, all), oldest first."""
    # The table's columns, not the ORM entity: rows read the same on a Session and a Connection.
    query = select(*PaymentRequest.__table__.columns).where(
        PaymentRequest.saleor_api_url == saleor_api_url, PaymentRequest.order_id == order_id
    )
    if not reported:
        query = query.where(PaymentRequest.state != RequestState.REPORTED.value)
    rows = conn.execute(query.order_by(PaymentRequest.id)).all()
    return [
        OpenRequest(
            r.id,
            r.order_id,
            r.transaction_id,
            r.klarna_order_id,
            ActionKind(r.action),
            r.amount,
            r.currency,
            r.psp_reference,
            json.loads(r.details),
            RequestState(r.state),
            r.reason,
            r.klarna_reference,
        )
        for r in rows
    ]


def mark(conn: Session | Connection, request_id: int, state: RequestState, reason: str | None = None) -> None:
    conn.execute(
        update(PaymentRequest)
        .where(PaymentRequest.id == request_id)
        .values(state=state.value, reason=reason, updated_at=utcnow())
    )


_BIND = text(
    "INSERT INTO klarna_bindings (saleor_api_url, klarna_order_id, order_id, created_at)"
    " VALUES (:url, :klarna, :order_id, :now) ON CONFLICT DO NOTHING"
).bindparams(bindparam("now", type_=UTCDateTime()))


def bind(conn: Session | Connection, saleor_api_url: str, klarna_order_id: str, order_id: str) -> Mismatch | None:
    """Bind the Klarna order to the Saleor order, or say which binding stands in the way."""
    conn.execute(_BIND, {"url": saleor_api_url, "klarna": klarna_order_id, "order_id": order_id, "now": utcnow()})
    rows = conn.execute(
        select(KlarnaBinding.klarna_order_id, KlarnaBinding.order_id).where(
            KlarnaBinding.saleor_api_url == saleor_api_url,
            (KlarnaBinding.klarna_order_id == klarna_order_id) | (KlarnaBinding.order_id == order_id),
        )
    ).all()
    for row in rows:
        if row.klarna_order_id == klarna_order_id and row.order_id != order_id:
            return Mismatch(
                MismatchCode.BOUND_ELSEWHERE, f"Klarna order {klarna_order_id} already belongs to order {row.order_id}"
            )
        if row.order_id == order_id and row.klarna_order_id != klarna_order_id:
            return Mismatch(
                MismatchCode.BOUND_ELSEWHERE,
                f"this order is already paid by Klarna order {row.klarna_order_id}, not {klarna_order_id}",
            )
    return None
