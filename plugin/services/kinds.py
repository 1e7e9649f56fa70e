"""What differs by operation kind, in one table: :data:`KINDS`.

A row says how to build the request body Klarna takes (stored in the ledger with the key), which
Klarna port call performs it, how the order note words its success, and how Klarna's order shows
it was done (so a run after a crash or a lost answer recognises it instead of sending it again).
A new kind (extend or update the authorization) is a new row and, where Klarna needs one, a port method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from plugin.domain.ledger import LedgerOperation
from plugin.domain.model import (
    KlarnaCapture,
    KlarnaOrder,
    KlarnaRefund,
    PlannedOperation,
    RecordedLine,
    ShopOrder,
    recorded_lines,
)
from plugin.domain.money import format_minor
from plugin.domain.states import OperationKind
from plugin.services.ports import KlarnaPort, OperationResult

Body = Mapping[str, Any]


@dataclass(frozen=True)
class Done:
    """Klarna's order shows the operation; ``resource_id`` where Klarna gave it one."""

    resource_id: str | None = None


@dataclass(frozen=True)
class KindSpec:
    label: str  # what a note calls it: "capture", "refund"
    body: Callable[[PlannedOperation], Body | None]
    send: Callable[[KlarnaPort, str, Body | None, str], OperationResult]  # (port, klarna order id, body, key)
    success_note: Callable[[LedgerOperation, ShopOrder], str]
    done_in: Callable[[LedgerOperation, KlarnaOrder], Done | None]
    # Klarna's order with a ledger success added that Klarna does not list (yet), so the plan
    # counts it; None where the plan reads the kind from Klarna's status instead.
    show_in: Callable[[KlarnaOrder, LedgerOperation], KlarnaOrder] | None = None


def _lines(op: PlannedOperation) -> list[dict[str, object]]:
    return [line.as_json() for line in op.lines]


def _capture_body(op: PlannedOperation) -> Body:
    body: dict[str, Any] = {"captured_amount": op.amount, "reference": op.reference[:255], "order_lines": _lines(op)}
    if op.description:
        body["description"] = op.description[:255]
    if op.tracking_number:
        body["shipping_info"] = [{"tracking_number": op.tracking_number[:100]}]
    return body


def _refund_body(op: PlannedOperation) -> Body:
    body: dict[str, Any] = {"refunded_amount": op.amount, "reference": op.reference[:255], "order_lines": _lines(op)}
    if op.description:
        body["description"] = op.description[:255]
    return body


def _recorded_lines(body: Body | None) -> tuple[RecordedLine, ...]:
    return recorded_lines((body or {}).get("order_lines"))


def _with_capture(state: KlarnaOrder, op: LedgerOperation) -> KlarnaOrder:
    capture = KlarnaCapture(op.klarna_resource_id or "", op.reference, op.amount, _recorded_lines(op.request_body))
    return replace(state, captures=(*state.captures, capture))


def _with_refund(state: KlarnaOrder, op: LedgerOperation) -> KlarnaOrder:
    refund = KlarnaRefund(op.klarna_resource_id or "", op.reference, op.amount, _recorded_lines(op.request_body))
    return replace(state, refunds=(*state.refunds, refund))


def fulfillment_name(order: ShopOrder, fulfillment_id: str, noun: str) -> str:
    """A shipment or return as Saleor's order page titles it (``#21-2``), or plainly if Saleor removed it."""
    found = next((f for f in order.fulfillments if f.id == fulfillment_id), None)
    if found is None:
        return f"a {noun}"
    return f"{noun} #{order.number}-{found.number}" if order.number else f"{noun} {found.number}"


def _amount(op: LedgerOperation) -> str:
    return format_minor(op.amount, op.currency)


def _capture_note(op: LedgerOperation, order: ShopOrder) -> str:
    found = next((f for f in order.fulfillments if f.id == op.reference), None)
    tracking = f", tracking {found.tracking_number}" if found and found.tracking_number else ""
    what = fulfillment_name(order, op.reference, "shipment")
    return f"Klarna: captured {_amount(op)} for {what}{tracking}. Capture {op.klarna_resource_id}."


def _refund_note(op: LedgerOperation, order: ShopOrder) -> str:
    found = next((f for f in order.fulfillments if f.id == op.reference), None)
    noun = "cancelled shipment" if found is not None and found.status == "CANCELED" else "return"
    what = "the shipping" if op.reference == "shipping" else fulfillment_name(order, op.reference, noun)
    return f"Klarna: refunded {_amount(op)} for {what}. Refund {op.klarna_resource_id}."


def _by_reference(op: LedgerOperation, found: Mapping[str | None, str]) -> Done | None:
    return Done(found[op.reference]) if op.reference in found else None


def _update_body(op: PlannedOperation) -> Body:
    # The lines sent replace Klarna's; an empty list would delete them, so an update always has lines.
    body: dict[str, Any] = {"order_amount": op.amount, "order_lines": _lines(op)}
    if op.description:
        body["description"] = op.description[:255]
    return body


def _extended(op: LedgerOperation, state: KlarnaOrder) -> Done | None:
    """Klarna's expiry is later than the one the extension was planned against (``expires:<iso>``)."""
    _, _, before = op.reference.partition(":")
    try:
        planned_against = datetime.fromisoformat(before)
    except ValueError:
        return None
    return Done() if state.expires_at is not None and state.expires_at > planned_against else None


def _update_note(op: LedgerOperation, _order: ShopOrder) -> str:
    what = str((op.request_body or {}).get("description") or "the order was edited in the shop")
    return f"Klarna: authorization changed to {_amount(op)} ({what})."


KINDS: Mapping[OperationKind, KindSpec] = {
    OperationKind.CAPTURE: KindSpec(
        label="capture",
        body=_capture_body,
        send=lambda klarna, order_id, body, key: klarna.capture(order_id, body or {}, key),
        success_note=_capture_note,
        done_in=lambda op, state: _by_reference(op, {c.reference: c.capture_id for c in state.captures}),
        show_in=_with_capture,
    ),
    OperationKind.REFUND: KindSpec(
        label="refund",
        body=_refund_body,
        send=lambda klarna, order_id, body, key: klarna.refund(order_id, body or {}, key),
        success_note=_refund_note,
        done_in=lambda op, state: _by_reference(op, {r.reference: r.refund_id for r in state.refunds}),
        show_in=_with_refund,
    ),
    OperationKind.CANCEL: KindSpec(
        label="cancel",
        body=lambda _op: None,
        send=lambda klarna, order_id, _body, key: klarna.cancel(order_id, key),
        success_note=lambda op, _order: f"Klarna: the order is cancelled; the authorization of {_amount(op)} is void.",
        done_in=lambda _op, state: Done() if state.status == "CANCELLED" else None,
    ),
    OperationKind.RELEASE: KindSpec(
        label="release of the remaining authorization",
        body=lambda _op: None,
        send=lambda klarna, order_id, _body, key: klarna.release_remaining_authorization(order_id, key),
        success_note=lambda op, _order: f"Klarna: released the remaining authorization of {_amount(op)}.",
        done_in=lambda _op, state: Done() if state.remaining == 0 else None,
    ),
    # The authorization's life (issue 10). Neither shows in Klarna's captures or refunds, so the
    # plan reads them from Klarna's order (expires_at, order_amount): no show_in.
    OperationKind.EXTEND_AUTHORIZATION: KindSpec(
        label="extension of the authorization",
        body=lambda _op: None,
        send=lambda klarna, order_id, _body, key: klarna.extend_authorization_time(order_id, key),
        # The new expiry is told once Klarna is read again (plugin/services/lifecycle.py).
        success_note=lambda _op, _order: "Klarna: authorization extended.",
        done_in=_extended,
    ),
    OperationKind.UPDATE_AUTHORIZATION: KindSpec(
        label="change of the authorization",
        body=_update_body,
        send=lambda klarna, order_id, body, key: klarna.update_authorization(order_id, body or {}, key),
        success_note=_update_note,
        done_in=lambda op, state: Done() if state.order_amount == op.amount else None,
    ),
}
