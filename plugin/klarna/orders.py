"""Klarna's order JSON -> the domain's :class:`KlarnaOrder`, and request bodies from planned operations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from plugin.domain.model import KlarnaCapture, KlarnaOrder, KlarnaOrderId, KlarnaRefund, PlannedOperation, RecordedLine


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def recorded_lines(lines: list[dict[str, Any]] | None) -> tuple[RecordedLine, ...]:
    """Klarna's order_lines of a capture or refund (or of a request body we sent)."""
    return tuple(
        RecordedLine(
            str(line.get("type") or "physical"),
            str(line.get("reference") or ""),
            int(line.get("quantity") or 0),
            int(line.get("total_amount") or 0),
        )
        for line in lines or []
    )


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


def request_body(op: PlannedOperation) -> dict[str, Any] | None:
    """The JSON body Klarna expects for ``op`` (None for cancel, release and extend_authorization, which take none)."""
    lines = [line.as_json() for line in op.lines]
    if op.kind == "capture":
        body: dict[str, Any] = {"captured_amount": op.amount, "reference": op.reference[:255], "order_lines": lines}
        if op.description:
            body["description"] = op.description[:255]
        if op.tracking_number:
            body["shipping_info"] = [{"tracking_number": op.tracking_number[:100]}]
        return body
    if op.kind == "refund":
        body = {"refunded_amount": op.amount, "reference": op.reference[:255], "order_lines": lines}
        if op.description:
            body["description"] = op.description[:255]
        return body
    if op.kind == "update_authorization":
        # The lines sent replace Klarna's; an empty list would delete them, so an update always has lines.
        body = {"order_amount": op.amount, "order_lines": lines}
        if op.description:
            body["description"] = op.description[:255]
        return body
    return None
