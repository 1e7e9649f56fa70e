"""The only module that knows the JSON shape of Saleor's webhook bodies (our subscription's selection)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from plugin.domain.money import MoneyError, to_minor
from plugin.domain.transactions import (
    ACTION_EVENTS,
    ActionKind,
    ActionRequest,
    GrantedRefund,
    GrantedRefundLine,
    find_request_event,
)
from plugin.saleor.transactions import ShapeError, parse_transaction


class PayloadError(ValueError):
    """The body is not what our subscription produces."""


@dataclass(frozen=True)
class OrderEvent:
    typename: str
    recipient_id: str
    principal_id: str | None
    order_id: str


def _object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise PayloadError("body is not JSON") from None
    if not isinstance(data, dict):
        raise PayloadError("body is not a JSON object")
    if "data" in data and isinstance(data["data"], dict) and len(data) <= 2:
        # Filterable top-level subscriptions (3.20+) wrap the event: {"data": {"orderUpdated": {...}}}.
        inner = next(iter(data["data"].values()), None)
        if isinstance(inner, dict):
            return inner
    return data


def _global_id(value: object) -> str | None:
    """A Saleor global id as we store it: non-empty, at most 255 characters, no NUL."""
    if isinstance(value, str) and value and len(value) <= 255 and "\x00" not in value:
        return value
    return None


def parse_order_event(body: bytes) -> OrderEvent:
    data = _object(body)
    recipient = data.get("recipient")
    order = data.get("order")
    if not isinstance(recipient, dict) or _global_id(recipient.get("id")) is None:
        raise PayloadError("recipient.id missing or not an id")
    order_id = _global_id(order.get("id")) if isinstance(order, dict) else None
    if order_id is None:
        raise PayloadError("order.id missing or not an id")
    principal = data.get("issuingPrincipal")
    principal_id = _global_id(principal.get("id")) if isinstance(principal, dict) else None
    return OrderEvent(str(data.get("__typename", ""))[:64], recipient["id"], principal_id, order_id)


def parse_app_deleted(body: bytes) -> str:
    """APP_DELETED arrives as {"app": {"id": …}} (no __typename)."""
    app = _object(body).get("app")
    app_id = app.get("id") if isinstance(app, dict) else None
    if not isinstance(app_id, str):
        raise PayloadError("app.id missing")
    return app_id


# -- TRANSACTION_*_REQUESTED (our subscription in manifest.json, "Klarna OM transaction actions") ---


def _minor(node: object, currency: str, field: str) -> int:
    amount = node.get("amount") if isinstance(node, dict) else node
    if isinstance(amount, bool) or not isinstance(amount, int | float | str):
        raise PayloadError(f"{field} is not an amount")
    try:
        return to_minor(amount, currency)
    except MoneyError as exc:
        raise PayloadError(f"{field}: {exc}") from None


def _granted_refund(node: object, currency: str) -> GrantedRefund | None:
    if not isinstance(node, dict) or _global_id(node.get("id")) is None:
        return None  # a plain refund: 3.23 sends null plus a top-level "errors" list (samples 49, 60)
    lines = []
    for raw in node.get("lines") or []:
        line_id = _global_id((raw.get("orderLine") or {}).get("id")) if isinstance(raw, dict) else None
        quantity = raw.get("quantity") if isinstance(raw, dict) else None
        if line_id is None or not isinstance(quantity, int) or isinstance(quantity, bool) or quantity <= 0:
            raise PayloadError("grantedRefund line without order line or quantity")
        lines.append(GrantedRefundLine(line_id, quantity))
    return GrantedRefund(
        id=node["id"],
        amount=_minor(node.get("amount") or 0, currency, "grantedRefund.amount"),
        lines=tuple(lines),
        shipping_included=node.get("shippingCostsIncluded") is True,
    )


def parse_transaction_action(body: bytes, event: str) -> ActionRequest:
    """TRANSACTION_CHARGE_REQUESTED / _REFUND_REQUESTED / _CANCELATION_REQUESTED -> ActionRequest."""
    kind = ACTION_EVENTS.get(event.lower())
    if kind is None:
        raise PayloadError(f"not a transaction action event: {event[:64]}")
    data = _object(body)
    recipient = data.get("recipient")
    recipient_id = _global_id(recipient.get("id")) if isinstance(recipient, dict) else None
    if recipient_id is None:
        raise PayloadError("recipient.id missing or not an id")
    action = data.get("action")
    if not isinstance(action, dict) or action.get("actionType") != kind.value:
        raise PayloadError("action missing or not of this event's type")
    currency = action.get("currency")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise PayloadError("action.currency is not a currency code")
    amount = _minor(action.get("amount") if action.get("amount") is not None else 0, currency, "action.amount")
    node = data.get("transaction")
    order = node.get("order") if isinstance(node, dict) else None
    order_id = _global_id(order.get("id")) if isinstance(order, dict) else None
    if order_id is None:
        raise PayloadError("transaction.order.id missing (a checkout's transaction is not an order's)")
    try:
        transaction = parse_transaction(node, currency.upper())
    except ShapeError as exc:
        raise PayloadError(str(exc)) from None
    return ActionRequest(
        action=kind,
        amount=amount,
        currency=currency.upper(),
        order_id=order_id,
        transaction=transaction,
        recipient_id=recipient_id,
        request_event=find_request_event(transaction.events, kind, amount),
        granted_refund=_granted_refund(data.get("grantedRefund"), currency.upper())
        if kind is ActionKind.REFUND
        else None,
    )
