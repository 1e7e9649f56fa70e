"""The planner: a pure, level-triggered function from (shop order, Klarna order, mapping) to operations.

It compares what Klarna should reflect with what Klarna does reflect and returns only what is
missing, so running it twice, or after a duplicate or reordered event, plans nothing new.
Captures are recognised by their ``reference`` (the Saleor fulfillment id), refunds likewise.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from .model import (
    RETURNED,
    SHIPPED,
    Action,
    Blocked,
    Fulfillment,
    KlarnaLine,
    KlarnaOrder,
    Options,
    Plan,
    PlannedOperation,
    ShopOrder,
)
from .money import format_minor, share, tax_of_gross

SHIPPING_REFERENCE = "shipping"
ADJUSTMENT_REFERENCE = "order-adjustment"
_CAPTURABLE = frozenset({"AUTHORIZED", "PART_CAPTURED"})


def plan(
    order: ShopOrder,
    klarna: KlarnaOrder,
    mapping: Mapping[str, Action],
    options: Options,
    *,
    now: datetime,
) -> Plan:
    """The Klarna operations missing for ``order`` under ``mapping``, in the order to perform them."""
    action = Action(mapping.get(order.status, Action.NONE))
    if action is Action.CANCEL:
        return Plan(operations=_plan_cancel(klarna))
    if action is Action.NONE:
        return Plan()
    operations: list[PlannedOperation] = []
    blocked: list[Blocked] = []
    # A return implies a shipment: under a refund action, still capture what shipped, if the
    # merchant captures at all.
    if action is Action.CAPTURE or Action.CAPTURE in {Action(a) for a in mapping.values()}:
        _plan_captures(order, klarna, options, now, operations, blocked)
    if action is Action.REFUND:
        _plan_refunds(order, klarna, options, operations, blocked)
    return Plan(operations=tuple(operations), blocked=tuple(blocked))


def _plan_cancel(klarna: KlarnaOrder) -> tuple[PlannedOperation, ...]:
    if klarna.status == "AUTHORIZED" and klarna.captured == 0:
        return (PlannedOperation("cancel", klarna.id, klarna.remaining, description="Order cancelled in the shop"),)
    if klarna.status == "PART_CAPTURED" and klarna.remaining > 0:
        return (PlannedOperation("release", klarna.id, klarna.remaining, description="Order cancelled in the shop"),)
    return ()


def _positions(order: ShopOrder) -> dict[tuple[str, str], int]:
    """For each (fulfillment, line): how many units of the line earlier fulfillments hold."""
    seen: dict[str, int] = {}
    positions: dict[tuple[str, str], int] = {}
    for fulfillment in sorted(order.fulfillments, key=lambda f: f.number):
        if fulfillment.status not in SHIPPED | RETURNED:
            continue
        for fline in fulfillment.lines:
            positions[(fulfillment.id, fline.order_line_id)] = seen.get(fline.order_line_id, 0)
            seen[fline.order_line_id] = seen.get(fline.order_line_id, 0) + fline.quantity
    return positions


def _fulfillment_lines(
    order: ShopOrder, fulfillment: Fulfillment, positions: dict[tuple[str, str], int]
) -> list[KlarnaLine]:
    lines = []
    for fline in fulfillment.lines:
        line = order.line(fline.order_line_id)
        if line is None or fline.quantity <= 0:
            continue
        before = min(positions.get((fulfillment.id, line.id), 0), line.quantity - fline.quantity)
        total = share(line.total_gross, line.quantity, max(before, 0), fline.quantity)
        unit = line.unit_gross
        if fline.quantity * unit < total:
            unit = -(-total // fline.quantity)
        lines.append(
            KlarnaLine(
                type="physical",
                reference=line.reference,
                name=line.name,
                quantity=fline.quantity,
                unit_price=unit,
                total_amount=total,
                total_discount_amount=fline.quantity * unit - total,
                tax_rate=line.tax_rate_bp,
                total_tax_amount=tax_of_gross(total, line.tax_rate_bp),
            )
        )
    return lines


def _shipping_line(order: ShopOrder) -> KlarnaLine:
    gross, tax = order.shipping_gross, order.shipping_tax
    rate = round(10000 * tax / (gross - tax)) if gross - tax > 0 and tax > 0 else 0
    return KlarnaLine("shipping_fee", SHIPPING_REFERENCE, "Shipping", 1, gross, gross, 0, rate, tax_of_gross(gross, rate))


def _adjustment_line(gap: int) -> KlarnaLine:
    """Order-level discount (gap > 0) or surcharge (gap < 0) that Saleor kept off the lines."""
    kind, name = ("discount", "Order discount") if gap > 0 else ("surcharge", "Order surcharge")
    return KlarnaLine(kind, ADJUSTMENT_REFERENCE, name, 1, -gap, -gap, 0, 0, 0)


def _fully_fulfilled(order: ShopOrder) -> bool:
    held: dict[str, int] = {}
    for fulfillment in order.fulfillments:
        if fulfillment.status in SHIPPED | RETURNED:
            for fline in fulfillment.lines:
                held[fline.order_line_id] = held.get(fline.order_line_id, 0) + fline.quantity
    return all(held.get(line.id, 0) >= line.quantity for line in order.lines)


def _capture_gate(klarna: KlarnaOrder, now: datetime) -> Blocked | None:
    if klarna.status == "CANCELLED":
        return Blocked("KLARNA_CANCELLED", "the Klarna order is cancelled; nothing can be captured")
    expired = klarna.expires_at is not None and klarna.expires_at <= now
    if klarna.status in ("EXPIRED", "CLOSED") or (expired and klarna.status in _CAPTURABLE):
        return Blocked("AUTHORIZATION_EXPIRED", "the Klarna authorization has expired; the shipment cannot be captured")
    if klarna.fraud_status == "PENDING":
        return Blocked(
            "FRAUD_PENDING",
            "Klarna's fraud review is still pending; the capture waits until Klarna accepts the order",
            retry_later=True,
        )
    if klarna.fraud_status not in ("ACCEPTED", ""):
        return Blocked("FRAUD_REJECTED", f"Klarna's fraud status is {klarna.fraud_status}; do not ship this order")
    return None


def _plan_captures(
    order: ShopOrder,
    klarna: KlarnaOrder,
    options: Options,
    now: datetime,
    operations: list[PlannedOperation],
    blocked: list[Blocked],
) -> None:
    captured_refs = {c.reference for c in klarna.captures}
    pending = [
        f
        for f in sorted(order.fulfillments, key=lambda f: f.number)
        if f.status in SHIPPED and f.id not in captured_refs and f.lines
    ]
    if not pending:
        return
    gate = _capture_gate(klarna, now)
    if gate is not None:
        blocked.append(gate)
        return
    positions = _positions(order)
    captured_types = {t for c in klarna.captures for t in c.line_types}
    complete = _fully_fulfilled(order)
    gap = sum(line.total_gross for line in order.lines) + order.shipping_gross - order.total_gross
    remaining = klarna.remaining
    for index, fulfillment in enumerate(pending):
        lines = _fulfillment_lines(order, fulfillment, positions)
        is_first, is_last = index == 0, index == len(pending) - 1
        wants_shipping = is_first if options.shipping_with == "first" else (is_last and complete)
        if order.shipping_gross > 0 and wants_shipping and "shipping_fee" not in captured_types:
            lines.append(_shipping_line(order))
        if gap and is_last and complete and not captured_types & {"discount", "surcharge"}:
            lines.append(_adjustment_line(gap))
        amount = sum(line.total_amount for line in lines)
        if amount <= 0:
            continue
        if amount > remaining:
            blocked.append(
                Blocked(
                    "EXCEEDS_REMAINING",
                    f"shipment {fulfillment.number} is worth {format_minor(amount, order.currency)} but only "
                    f"{format_minor(remaining, order.currency)} remains authorized in Klarna",
                    reference=fulfillment.id,
                )
            )
            return
        remaining -= amount
        operations.append(
            PlannedOperation(
                "capture",
                fulfillment.id,
                amount,
                tuple(lines),
                tracking_number=fulfillment.tracking_number if options.send_tracking else "",
                description=f"Shipment {fulfillment.number} of order {order.number}",
            )
        )


def _plan_refunds(
    order: ShopOrder,
    klarna: KlarnaOrder,
    options: Options,
    operations: list[PlannedOperation],
    blocked: list[Blocked],
) -> None:
    refunded_refs = {r.reference for r in klarna.refunds}
    captures = [op for op in operations if op.kind == "capture"]
    available = klarna.captured + sum(op.amount for op in captures) - klarna.refunded
    positions = _positions(order)
    wanted: list[tuple[str, list[KlarnaLine], str]] = []
    for fulfillment in sorted(order.fulfillments, key=lambda f: f.number):
        if fulfillment.status in RETURNED and fulfillment.id not in refunded_refs:
            wanted.append((fulfillment.id, _fulfillment_lines(order, fulfillment, positions), f"Return {fulfillment.number}"))
    shipping_captured = any("shipping_fee" in c.line_types for c in klarna.captures) or any(
        line.type == "shipping_fee" for op in captures for line in op.lines
    )
    if (
        order.status == "RETURNED"
        and options.refund_shipping_on_full_return
        and shipping_captured
        and SHIPPING_REFERENCE not in refunded_refs
    ):
        wanted.append((SHIPPING_REFERENCE, [_shipping_line(order)], "Shipping of a fully returned order"))
    for reference, lines, description in wanted:
        amount = sum(line.total_amount for line in lines)
        if amount <= 0:
            continue
        if amount > available:
            blocked.append(
                Blocked(
                    "EXCEEDS_CAPTURED",
                    f"the refund of {format_minor(amount, order.currency)} is more than the "
                    f"{format_minor(max(available, 0), order.currency)} captured and not yet refunded in Klarna",
                    reference=reference,
                )
            )
            continue
        available -= amount
        operations.append(PlannedOperation("refund", reference, amount, tuple(lines), description=f"{description} of order {order.number}"))
