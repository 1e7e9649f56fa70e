"""Klarna's order JSON -> the domain's :class:`KlarnaOrder`. (Request bodies: ``plugin/services/kinds.py``.)"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from plugin.domain.model import KlarnaCapture, KlarnaOrder, KlarnaOrderId, KlarnaRefund, recorded_lines


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def parse_order(raw: dict[str, Any]) -> KlarnaOrder:
    return KlarnaOrder(
        id=KlarnaOrderId(raw["order_id"]),
        status=raw.get("status", ""),
        fraud_status=raw.get("fraud_status", ""),
        currency=raw.get("purchase_currency", ""),
        order_amount=int(raw.get("order_amount", 0)),
        captured=int(raw.get("captured_amount", 0)),
        refunded=int(raw.get("refunded_amount", 0)),
        remaining=int(raw.get("remaining_authorized_amount", 0)),
        expires_at=_time(raw.get("expires_at")),
        created_at=_time(raw.get("created_at")),
        merchant_reference1=raw.get("merchant_reference1") or None,
        captures=tuple(
            KlarnaCapture(
                c["capture_id"],
                c.get("reference"),
                int(c.get("captured_amount", 0)),
                recorded_lines(c.get("order_lines")),
            )
            for c in raw.get("captures") or []
        ),
        refunds=tuple(
            KlarnaRefund(
                r["refund_id"],
                r.get("reference"),
                int(r.get("refunded_amount", 0)),
                recorded_lines(r.get("order_lines")),
            )
            for r in raw.get("refunds") or []
        ),
    )
