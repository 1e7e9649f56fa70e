"""The only module that knows the JSON shape of Saleor's webhook bodies (our subscription's selection)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


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
    if not isinstance(app, dict) or not isinstance(app.get("id"), str):
        raise PayloadError("app.id missing")
    return app["id"]
