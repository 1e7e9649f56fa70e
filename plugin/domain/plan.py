"""The planner: a pure, level-triggered function from (shop order, Klarna order, mapping) to operations.

It compares what Klarna should reflect with what Klarna does reflect and returns only what is
missing, so running it twice, or after a duplicate or reordered event, plans nothing new.
Captures and refunds are recognised by their ``reference`` (the Saleor fulfillment id).

Valuing units. A line's stored total (after discounts, and after its share of any order-level
discount) is spread over its units by cumulative allocation in the order they are captured: the
captures of a line always sum to its total exactly. Refunds take back captured value the same
way (r refunded units are worth the first r captured units), and only for units that were captured
and are no longer kept: a return that Saleor carves out of a shipment before it was captured
refunds nothing and leaves that shipment's value right.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from .model import (
    OPEN_STATUSES,
    RETURNED,
    SHIPPED,
    Action,
    Blocked,
    Fulfillment,
    KlarnaCapture,
    KlarnaLine,
    KlarnaOrder,
    KlarnaRefund,
    Options,
    OrderLine,
    Plan,
    PlannedOperation,
    ShopOrder,
)
from .money import format_minor, share, tax_of_gross
from .states import OperationKind

SHIPPING_REFERENCE = "shipping"
# A capture (refund) after one made from the dashboard by amount alone carries that amount back
# as a negative line under this reference, so Klarna's records say how much of it is spent.
PREPAID_REFERENCE = "prepaid"


def plan(
    order: ShopOrder,
    klarna: KlarnaOrder,
    mapping: Mapping[str, Action],
    options: Options,
    *,
    now: datetime,
    prepaid: frozenset[str] = frozenset(),
) -> Plan:
    """The Klarna operations missing for ``order`` under ``mapping``, in the order to perform them.

    ``prepaid`` names the Klarna references of captures and refunds made for the dashboard's
    buttons by amount alone (no lines): their money is counted when shipments and returns are
    planned (:func:`_prepaid_left`), so fulfilling everything captures the rest, never more.
    """
    action = Action(mapping.get(order.status, Action.NONE))
    if action is Action.CANCEL:
        return Plan(operations=_plan_cancel(klarna))
    if action is Action.NONE:
        return Plan()
    books = _Books.of(order, klarna)
    operations: list[PlannedOperation] = []
    blocked: list[Blocked] = []
    # A return implies a shipment: under a refund action, still capture what shipped, if the
    # merchant captures at all.
    if action is Action.CAPTURE or Action.CAPTURE in {Action(a) for a in mapping.values()}:
        _plan_captures(order, klarna, books, options, now, operations, blocked, prepaid)
    if action is Action.REFUND:
        _plan_refunds(order, klarna, books, options, operations, blocked, prepaid)
    return Plan(operations=tuple(operations), blocked=tuple(blocked))


def _plan_cancel(klarna: KlarnaOrder) -> tuple[PlannedOperation, ...]:
    if klarna.status == "AUTHORIZED" and klarna.captured == 0:
        return (
            PlannedOperation(
                OperationKind.CANCEL, klarna.id, klarna.remaining, description="Order cancelled in the shop"
            ),
        )
    if klarna.status == "PART_CAPTURED" and klarna.remaining > 0:
        return (
            PlannedOperation(
                OperationKind.RELEASE, klarna.id, klarna.remaining, description="Order cancelled in the shop"
            ),
        )
    return ()


@dataclass
class _Tally:
    captured_units: int = 0
    captured: int = 0
    refunded_units: int = 0
    refunded: int = 0


@dataclass
class _Books:
    """Per line reference: units and value captured and refunded so far (Klarna + this plan)."""

    lines: dict[str, _Tally]
    totals: dict[str, int]  # line id -> total after its share of the order-level adjustment
    shipping: int  # shipping after any adjustment that did not fit on the lines

    @classmethod
    def of(cls, order: ShopOrder, klarna: KlarnaOrder) -> _Books:
        lines: dict[str, _Tally] = {}
        for record in (line for c in klarna.captures for line in c.lines):
            tally = lines.setdefault(record.reference, _Tally())
            tally.captured_units += record.quantity
            tally.captured += record.amount
        for record in (line for r in klarna.refunds for line in r.lines):
            tally = lines.setdefault(record.reference, _Tally())
            tally.refunded_units += record.quantity
            tally.refunded += record.amount
        totals, shipping = _adjusted_totals(order)
        return cls(lines, totals, shipping)

    def tally(self, reference: str) -> _Tally:
        return self.lines.setdefault(reference, _Tally())


def _adjusted_totals(order: ShopOrder) -> tuple[dict[str, int], int]:
    """Spread an order-level discount (or surcharge) that Saleor kept off the lines over them.

    Lines + shipping then add up to the order total exactly; a discount larger than the lines
    comes off the shipping.
    """
    lines_total = sum(line.total_gross for line in order.lines)
    gap = lines_total + order.shipping_gross - order.total_gross
    if gap == 0 or lines_total <= 0:
        return {line.id: line.total_gross for line in order.lines}, order.shipping_gross
    on_lines = min(gap, lines_total)
    totals, before = {}, 0
    for line in order.lines:
        totals[line.id] = line.total_gross - share(on_lines, lines_total, before, line.total_gross)
        before += line.total_gross
    return totals, max(order.shipping_gross - (gap - on_lines), 0)


def _klarna_line(line: OrderLine, quantity: int, total: int) -> KlarnaLine:
    unit = line.unit_gross
    if quantity * unit < total:
        unit = -(-total // quantity)
    return KlarnaLine(
        type="physical",
        reference=line.reference,
        name=line.name,
        quantity=quantity,
        unit_price=unit,
        total_amount=total,
        total_discount_amount=quantity * unit - total,
        tax_rate=line.tax_rate_bp,
        total_tax_amount=tax_of_gross(total, line.tax_rate_bp),
    )


def klarna_line(line: OrderLine, quantity: int, total: int) -> KlarnaLine:
    """The Klarna line for ``quantity`` units of ``line`` worth ``total`` (lifecycle.py builds refunds with it)."""
    return _klarna_line(line, quantity, total)


def shipping_line(order: ShopOrder, gross: int) -> KlarnaLine:
    """The Klarna line for ``gross`` of the order's shipping (lifecycle.py refunds it with it)."""
    return _shipping_line(order, gross)


def authorization_lines(order: ShopOrder) -> tuple[KlarnaLine, ...]:
    """The whole order as Klarna lines, each at its total after order-level discounts, then shipping.

    They add up to ``order.total_gross`` (what an authorization update sends, lifecycle.py).
    """
    totals, shipping = _adjusted_totals(order)
    lines = [_klarna_line(line, line.quantity, totals[line.id]) for line in order.lines if line.quantity > 0]
    if shipping > 0:
        lines.append(_shipping_line(order, shipping))
    return tuple(lines)


def _capture_lines(order: ShopOrder, fulfillment: Fulfillment, books: _Books) -> list[KlarnaLine]:
    lines = []
    for fline in fulfillment.lines:
        line = order.line(fline.order_line_id)
        if line is None or fline.quantity <= 0:
            continue
        tally = books.tally(line.reference)
        quantity = min(fline.quantity, line.quantity)
        before = min(tally.captured_units, line.quantity - quantity)
        total = share(books.totals[line.id], line.quantity, before, quantity)
        tally.captured_units += quantity
        tally.captured += total
        lines.append(_klarna_line(line, quantity, total))
    return lines


def _shipping_line(order: ShopOrder, gross: int) -> KlarnaLine:
    tax, net = order.shipping_tax, order.shipping_gross - order.shipping_tax
    # Klarna's tax_rate from Saleor's amounts, rounded half up in integers (no floats).
    rate = (20000 * tax + net) // (2 * net) if net > 0 and tax > 0 else 0
    return KlarnaLine(
        "shipping_fee", SHIPPING_REFERENCE, "Shipping", 1, gross, gross, 0, rate, tax_of_gross(gross, rate)
    )


def _prepaid_left(records: Sequence[KlarnaCapture | KlarnaRefund], prepaid: frozenset[str]) -> int:
    """Money captured (refunded) by amount alone for the buttons, not yet spent on a shipment (return)."""
    paid = sum(r.amount for r in records if r.reference in prepaid and not r.lines)
    spent = -sum(line.amount for r in records for line in r.lines if line.reference == PREPAID_REFERENCE)
    return max(paid - spent, 0)


def _prepaid_line(amount: int, name: str) -> KlarnaLine:
    return KlarnaLine("discount", PREPAID_REFERENCE, name, 1, -amount, -amount, 0, 0, 0)


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
    if klarna.status in ("EXPIRED", "CLOSED") or (expired and klarna.status in OPEN_STATUSES):
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
    books: _Books,
    options: Options,
    now: datetime,
    operations: list[PlannedOperation],
    blocked: list[Blocked],
    prepaid: frozenset[str] = frozenset(),
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
    shipping_captured = "shipping_fee" in {t for c in klarna.captures for t in c.line_types}
    complete = _fully_fulfilled(order)
    remaining = klarna.remaining
    credit = _prepaid_left(klarna.captures, prepaid)
    for index, fulfillment in enumerate(pending):
        lines = _capture_lines(order, fulfillment, books)
        is_last = index == len(pending) - 1
        wants_shipping = index == 0 if options.shipping_with == "first" else (is_last and complete)
        if books.shipping > 0 and wants_shipping and not shipping_captured:
            lines.append(_shipping_line(order, books.shipping))
            tally = books.tally(SHIPPING_REFERENCE)
            tally.captured_units, tally.captured = 1, books.shipping
        amount = sum(line.total_amount for line in lines)
        if credit > 0 and amount > 0:
            used = min(credit, amount)
            lines.append(_prepaid_line(used, "Captured earlier from the dashboard"))
            amount, credit = amount - used, credit - used
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
        # An amount of 0 (free goods) is recorded, not sent: Klarna refuses empty captures.
        operations.append(
            PlannedOperation(
                OperationKind.CAPTURE,
                fulfillment.id,
                amount,
                tuple(lines),
                tracking_number=fulfillment.tracking_number if options.send_tracking else "",
                description=f"Shipment {fulfillment.number} of order {order.number}",
            )
        )


def _refundable(
    order: ShopOrder, klarna: KlarnaOrder, operations: list[PlannedOperation], books: _Books
) -> dict[str, int]:
    """Per line reference: units captured, not refunded, and not still kept in a captured shipment."""
    captured_refs = {c.reference for c in klarna.captures} | {
        op.reference for op in operations if op.kind is OperationKind.CAPTURE
    }
    kept: dict[str, int] = {}
    for fulfillment in order.fulfillments:
        if fulfillment.status in SHIPPED and fulfillment.id in captured_refs:
            for fline in fulfillment.lines:
                line = order.line(fline.order_line_id)
                if line is not None:
                    kept[line.reference] = kept.get(line.reference, 0) + fline.quantity
    return {
        reference: max(tally.captured_units - tally.refunded_units - kept.get(reference, 0), 0)
        for reference, tally in books.lines.items()
    }


def _refund_lines(
    order: ShopOrder, fulfillment: Fulfillment, books: _Books, refundable: dict[str, int]
) -> list[KlarnaLine]:
    lines = []
    for fline in fulfillment.lines:
        line = order.line(fline.order_line_id)
        if line is None:
            continue
        quantity = min(fline.quantity, refundable.get(line.reference, 0))
        if quantity <= 0:
            continue
        refundable[line.reference] -= quantity
        tally = books.tally(line.reference)
        # The same cumulative allocation as the captures: r refunded units are worth what the
        # first r captured units were, so a line never gives back more than it took.
        before = min(tally.refunded_units, line.quantity - quantity)
        total = min(share(books.totals[line.id], line.quantity, before, quantity), tally.captured - tally.refunded)
        tally.refunded_units += quantity
        tally.refunded += total
        lines.append(_klarna_line(line, quantity, total))
    return lines


def _plan_refunds(
    order: ShopOrder,
    klarna: KlarnaOrder,
    books: _Books,
    options: Options,
    operations: list[PlannedOperation],
    blocked: list[Blocked],
    prepaid: frozenset[str] = frozenset(),
) -> None:
    refunded_refs = {r.reference for r in klarna.refunds}
    credit = _prepaid_left(klarna.refunds, prepaid)
    available = (
        klarna.captured + sum(op.amount for op in operations if op.kind is OperationKind.CAPTURE) - klarna.refunded
    )
    refundable = _refundable(order, klarna, operations, books)
    wanted: list[tuple[str, list[KlarnaLine], str]] = []
    for fulfillment in sorted(order.fulfillments, key=lambda f: f.number):
        if fulfillment.status in RETURNED and fulfillment.id not in refunded_refs:
            lines = _refund_lines(order, fulfillment, books, refundable)
            if lines:
                wanted.append((fulfillment.id, lines, f"Return {fulfillment.number}"))
    shipping = books.tally(SHIPPING_REFERENCE)
    if (
        order.status == "RETURNED"
        and options.refund_shipping_on_full_return
        and shipping.captured > shipping.refunded
        and SHIPPING_REFERENCE not in refunded_refs
    ):
        gross = shipping.captured - shipping.refunded
        wanted.append((SHIPPING_REFERENCE, [_shipping_line(order, gross)], "Shipping of a fully returned order"))
    for reference, lines, description in wanted:
        amount = sum(line.total_amount for line in lines)
        if credit > 0 and amount > 0:
            used = min(credit, amount)
            lines = [*lines, _prepaid_line(used, "Refunded earlier from the dashboard")]
            amount, credit = amount - used, credit - used
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
        operations.append(
            PlannedOperation(
                OperationKind.REFUND,
                reference,
                amount,
                tuple(lines),
                description=f"{description} of order {order.number}",
            )
        )
