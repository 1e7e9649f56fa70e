"""The authorization's whole life (issue 10): pure planning around :func:`plan.plan`.

Level-triggered like the planner: given the shop order as it is now, the Klarna order as it is now,
and what the app's ledger says it did (:class:`AppHistory`), :func:`plan_life` returns what is missing:

* **Drift.** Captures and refunds in Klarna that no ledger row and no app reference explains (the
  merchant portal, another system) are :class:`SeenInKlarna` facts, noted once each (``key``), and are
  recomputed into the plan on every run: an outside capture covers the shop's shipments in order
  (whole shipments, by value), an outside refund covers returns and cancelled shipments the same way,
  so nothing is ever done twice. What no shipment, return or cancelled shipment explains is a
  ``DRIFT_*`` :class:`Blocked`. Releases and cancels made outside are facts too.
* **Edits before capture.** While nothing is captured, an order whose total differs from Klarna's
  authorization gets an ``update_authorization`` with the whole order's lines. Saleor allows line
  edits only in ``EDITABLE_STATUSES`` (saleor/order/__init__.py ``ORDER_EDITABLE_STATUS``, enforced by
  ``EditableOrderValidationMixin`` in saleor/graphql/order/mutations/utils.py), so a difference seen
  later (the order was confirmed before the app ran) comes from such an edit too. An amount Klarna
  refused is not sent again: it is a ``AUTHORIZATION_UPDATE_REFUSED`` block saying what to do.
* **Cancelled shipments.** A captured shipment cancelled in Saleor is refunded for the units captured
  for it that are neither kept nor already refunded (so never twice, and a later return of the same
  units finds nothing left to refund), or flagged, per channel.
* **Leftovers.** Nothing left to ship and an authorization remaining: release it (cancel it when
  nothing was ever captured), only where the app captures at all.
* **Expiry.** ``extend_authorization`` ``extension_margin_days`` before ``expires_at`` while something
  remains to capture; Klarna's 180-day limit (from the purchase) is announced
  ``final_expiry_warning_days`` ahead; a lapsed authorization with goods still to capture is blocked.
* **Fraud.** PENDING is re-checked soon (:func:`next_check_at`); REJECTED or STOPPED: do not ship.

Operation kinds are :class:`OperationKind` members; the new ones are ``EXTEND_AUTHORIZATION`` and
``UPDATE_AUTHORIZATION``. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

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
    PlannedOperation,
    RecordedLine,
    ShopOrder,
)
from .money import format_minor, share
from .plan import SHIPPING_REFERENCE, authorization_lines, klarna_line, plan, shipping_line
from .states import OperationKind

EXTEND = OperationKind.EXTEND_AUTHORIZATION
UPDATE = OperationKind.UPDATE_AUTHORIZATION
EDITABLE_STATUSES = frozenset({"DRAFT", "UNCONFIRMED"})
CANCELLED_FULFILLMENT = "CANCELED"
MAX_AUTHORIZATION_AGE = timedelta(days=180)  # Klarna: no authorization past 180 days after the purchase
_FRAUD_STOP = frozenset({"REJECTED", "STOPPED"})
_SHOP_CANCELLED = frozenset({"CANCELED", "EXPIRED"})


@dataclass(frozen=True)
class AppHistory:
    """What the app's ledger says about this Klarna order (succeeded rows unless said otherwise)."""

    capture_ids: frozenset[str] = frozenset()  # Capture-Id of each capture the app made
    refund_ids: frozenset[str] = frozenset()  # Refund-Id of each refund the app made
    released: bool = False
    cancelled: bool = False
    updates: int = 0  # authorization updates performed: a new update gets a new reference
    refused_update_amounts: frozenset[int] = frozenset()  # amounts Klarna finally refused to authorize
    references: frozenset[str] = frozenset()  # Klarna references of the app's own captures and refunds (buttons)


@dataclass(frozen=True)
class SeenInKlarna:
    """Something done in Klarna outside this app: noted once under ``key``, counted on every run."""

    key: str
    kind: OperationKind  # CAPTURE, REFUND, RELEASE, CANCEL
    amount: int
    klarna_id: str  # the capture or refund id, or the order id
    message: str


@dataclass(frozen=True)
class LifePlan:
    operations: tuple[PlannedOperation, ...] = ()
    blocked: tuple[Blocked, ...] = ()
    seen: tuple[SeenInKlarna, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.operations and not self.blocked


def plan_life(
    order: ShopOrder,
    klarna: KlarnaOrder,
    mapping: Mapping[str, Action],
    options: Options,
    history: AppHistory,
    *,
    now: datetime,
    prepaid: frozenset[str] = frozenset(),
) -> LifePlan:
    """Everything missing for ``order``: the mapping's operations (:func:`plan.plan`) plus the authorization's life.

    Operations come in the order to perform them: an authorization update first (captures count on
    its amount), then captures and refunds, then a release or cancel of leftovers, then an extension.
    """
    seen = tuple(_seen(order, klarna, history))
    view, capture_credit, refund_credit = _attribute(order, klarna, history, mapping, options, now)
    shop_cancelled = _shop_cancelled(order, mapping)
    blocked: list[Blocked] = []
    update = _update_authorization(order, klarna, options, history, shop_cancelled, now, blocked)
    if update is not None:
        # What follows the update is planned against the authorization it asks for; if Klarna
        # refuses, the operations after it are not sent and the next plan blocks instead.
        view = replace(view, order_amount=update.amount, remaining=update.amount - view.captured)
    base = plan(order, view, mapping, options, now=now, prepaid=prepaid)
    operations = list(base.operations)
    blocked[:0] = base.blocked
    if shop_cancelled and Action(mapping.get(order.status, Action.NONE)) is Action.CANCEL:
        # Saleor cancels an order whose shipments were all cancelled or returned: the returns are
        # still refunded (the mapping's cancel alone would only release what remains).
        as_refund = {**mapping, order.status: Action.REFUND}
        returns = [
            op for op in plan(order, view, as_refund, options, now=now).operations if op.kind is OperationKind.REFUND
        ]
        refund_credit = _absorb_refunds(returns, refund_credit)
        operations[:0] = returns

    if update is not None:
        operations.insert(0, update)
    refunds = _cancelled_shipment_refunds(order, view, options, _available(view, operations), blocked)
    if shop_cancelled and options.refund_shipping_on_full_return:
        refunds.extend(_shipping_refund(order, view, _available(view, operations + refunds)))
    refund_credit = _absorb_refunds(refunds, refund_credit)
    operations.extend(refunds)
    captures = [op for op in operations if op.kind is OperationKind.CAPTURE]
    capture_blocked = any(b.code in _CAPTURE_BLOCKS for b in blocked)
    leftover = _leftover(order, view, mapping, options, captures, capture_blocked, shop_cancelled, now)
    if leftover is not None:
        operations.append(leftover)
    # Something remains to capture: goods to ship, or shipments waiting for a capture.
    outstanding = not shop_cancelled and (not _nothing_left_to_ship(order) or bool(captures) or capture_blocked)
    if outstanding and leftover is None:
        extension = _expiry(order, klarna, options, captures, now, blocked)
        if extension is not None:
            operations.append(extension)
    if klarna.fraud_status in _FRAUD_STOP and not shop_cancelled:
        blocked.append(
            Blocked(
                "FRAUD_REJECTED",
                f"Klarna's fraud status is {klarna.fraud_status}; do not ship this order (cancel it in Saleor)",
            )
        )
    if klarna.status == "CANCELLED" and not history.cancelled and not shop_cancelled:
        blocked.append(
            Blocked(
                "KLARNA_CANCELLED",
                "the Klarna order was cancelled outside this app; nothing can be captured: do not ship, "
                "or cancel the order in Saleor",
            )
        )
    blocked.extend(_drift_blocks(order, capture_credit, refund_credit, outstanding, capture_blocked))
    return LifePlan(tuple(operations), _unique(blocked), seen)


_CAPTURE_BLOCKS = frozenset(
    {"EXCEEDS_REMAINING", "FRAUD_PENDING", "FRAUD_REJECTED", "AUTHORIZATION_EXPIRED", "KLARNA_CANCELLED"}
)


def next_check_at(order: ShopOrder, klarna: KlarnaOrder, options: Options, now: datetime) -> datetime | None:
    """When this order should be looked at again; None when nothing is authorized any more.

    The earliest of: the routine re-read (``recheck_hours``, to see drift), a pending fraud decision,
    the extension time, the 180-day warning, and the expiry itself (to report a lapse).
    """
    if klarna.status not in OPEN_STATUSES or klarna.remaining <= 0:
        return None
    times = [now + timedelta(hours=options.recheck_hours)]
    if klarna.fraud_status == "PENDING":
        times.append(now + timedelta(minutes=options.fraud_recheck_minutes))
    if klarna.expires_at is not None:
        times.append(klarna.expires_at)
        limit = _limit(klarna)
        if options.extend_authorization and (limit is None or klarna.expires_at < limit):
            times.append(klarna.expires_at - timedelta(days=options.extension_margin_days))
        if limit is not None:
            times.append(limit - timedelta(days=options.final_expiry_warning_days))
    future = [t for t in times if t > now]
    # A time already past was acted on in this run (or cannot be): look again at the routine time.
    return min(future) if future else now + timedelta(hours=options.recheck_hours)


# --------------------------------------------------------------------------- drift


def _app_references(order: ShopOrder) -> frozenset[str]:
    return frozenset({f.id for f in order.fulfillments} | {SHIPPING_REFERENCE})


def _outside_captures(order: ShopOrder, klarna: KlarnaOrder, history: AppHistory) -> list[KlarnaCapture]:
    ours = _app_references(order)
    ours |= history.references
    return [c for c in klarna.captures if c.capture_id not in history.capture_ids and c.reference not in ours]


def _outside_refunds(order: ShopOrder, klarna: KlarnaOrder, history: AppHistory) -> list[KlarnaRefund]:
    ours = _app_references(order)
    ours |= history.references
    return [r for r in klarna.refunds if r.refund_id not in history.refund_ids and r.reference not in ours]


def _seen(order: ShopOrder, klarna: KlarnaOrder, history: AppHistory) -> Iterable[SeenInKlarna]:
    def money(amount: int) -> str:
        return format_minor(amount, order.currency)

    for c in _outside_captures(order, klarna, history):
        yield SeenInKlarna(
            f"seen:capture:{c.capture_id}",
            OperationKind.CAPTURE,
            c.amount,
            c.capture_id,
            f"Klarna: seen in Klarna: captured {money(c.amount)} outside this app (capture {c.capture_id}).",
        )
    for r in _outside_refunds(order, klarna, history):
        yield SeenInKlarna(
            f"seen:refund:{r.refund_id}",
            OperationKind.REFUND,
            r.amount,
            r.refund_id,
            f"Klarna: seen in Klarna: refunded {money(r.amount)} outside this app (refund {r.refund_id}).",
        )
    released = klarna.order_amount - klarna.captured
    if klarna.status == "CAPTURED" and released > 0 and not history.released:
        yield SeenInKlarna(
            "seen:release",
            OperationKind.RELEASE,
            released,
            klarna.id,
            f"Klarna: seen in Klarna: the remaining {money(released)} was released outside this app.",
        )
    if klarna.status == "CANCELLED" and not history.cancelled:
        yield SeenInKlarna(
            "seen:cancel",
            OperationKind.CANCEL,
            klarna.order_amount,
            klarna.id,
            f"Klarna: seen in Klarna: the order was cancelled outside this app ({money(klarna.order_amount)}).",
        )


def _attribute(
    order: ShopOrder,
    klarna: KlarnaOrder,
    history: AppHistory,
    mapping: Mapping[str, Action],
    options: Options,
    now: datetime,
) -> tuple[KlarnaOrder, int, int]:
    """Klarna's order as the planner should see it: outside captures and refunds attributed to the
    shipments and returns they cover (whole ones, in order, by value). Returns the view and the
    capture and refund amounts nothing explained."""
    outside_captures = _outside_captures(order, klarna, history)
    outside_refunds = _outside_refunds(order, klarna, history)
    if not outside_captures and not outside_refunds:
        return klarna, 0, 0
    captures = [c for c in klarna.captures if c not in outside_captures]
    refunds = [r for r in klarna.refunds if r not in outside_refunds]
    credit = sum(c.amount for c in outside_captures)
    if credit:
        # What would the app capture if the outside money were still authorized?
        probe_view = replace(klarna, captures=tuple(captures), remaining=klarna.remaining + credit)
        for op in plan(order, probe_view, mapping, options, now=now).operations:
            if op.kind is not OperationKind.CAPTURE or op.amount > credit:
                break
            credit -= op.amount
            captures.append(_covered_capture(op))
    view = replace(klarna, captures=tuple(captures), refunds=tuple(refunds))
    refund_credit = sum(r.amount for r in outside_refunds)
    if refund_credit:
        for op in plan(order, view, mapping, options, now=now).operations:
            if op.kind is not OperationKind.REFUND:
                continue
            if op.amount > refund_credit:
                break
            refund_credit -= op.amount
            refunds.append(_covered_refund(op))
        view = replace(view, refunds=tuple(refunds))
    return view, credit, refund_credit


def _recorded(lines: tuple[KlarnaLine, ...]) -> tuple[RecordedLine, ...]:
    return tuple(line.recorded() for line in lines)


def _covered_capture(op: PlannedOperation) -> KlarnaCapture:
    return KlarnaCapture(f"outside:{op.reference}", op.reference, op.amount, _recorded(op.lines))


def _covered_refund(op: PlannedOperation) -> KlarnaRefund:
    return KlarnaRefund(f"outside:{op.reference}", op.reference, op.amount, _recorded(op.lines))


def _absorb_refunds(refunds: list[PlannedOperation], credit: int) -> int:
    """Drop refunds an outside refund already paid (whole ones, in order); returns what is left of it."""
    while refunds and credit and refunds[0].amount <= credit:
        credit -= refunds.pop(0).amount
    return credit


def _drift_blocks(
    order: ShopOrder, capture_credit: int, refund_credit: int, outstanding: bool, capture_blocked: bool
) -> list[Blocked]:
    def money(amount: int) -> str:
        return format_minor(amount, order.currency)

    blocked = []
    # Money captured ahead of shipping is fine while goods remain to ship and nothing is stuck on it.
    if capture_credit and (not outstanding or capture_blocked):
        blocked.append(
            Blocked(
                "DRIFT_CAPTURED",
                f"Klarna shows {money(capture_credit)} captured outside this app that matches no shipment in Saleor; "
                "check the captures in Klarna's merchant portal (refund what did not ship, or capture the "
                "difference so the captures match the shipments)",
            )
        )
    if refund_credit:
        blocked.append(
            Blocked(
                "DRIFT_REFUNDED",
                f"Klarna shows {money(refund_credit)} refunded outside this app that no return or cancelled "
                "shipment in Saleor explains; record the return in Saleor, or check the refund in Klarna's "
                "merchant portal",
            )
        )
    return blocked


# --------------------------------------------------------------------------- edits before capture


def _update_authorization(
    order: ShopOrder,
    klarna: KlarnaOrder,
    options: Options,
    history: AppHistory,
    shop_cancelled: bool,
    now: datetime,
    blocked: list[Blocked],
) -> PlannedOperation | None:
    if not options.update_authorization or shop_cancelled or order.status == "DRAFT":
        return None
    lines = authorization_lines(order)
    amount = sum(line.total_amount for line in lines)
    if amount == klarna.order_amount or amount != order.total_gross or amount <= 0:
        return None

    def money(value: int) -> str:
        return format_minor(value, order.currency)

    if amount in history.refused_update_amounts:
        # Said for as long as the shop's total differs from what Klarna would authorize.
        blocked.append(
            Blocked(
                "AUTHORIZATION_UPDATE_REFUSED",
                f"Klarna refused to change the authorization from {money(klarna.order_amount)} to {money(amount)}; "
                f"at most {money(klarna.order_amount)} can be captured: remove items so the order is worth at most "
                "that, or take the difference with another payment",
                reference=str(amount),
            )
        )
        return None
    if klarna.status != "AUTHORIZED" or klarna.captured or klarna.fraud_status in _FRAUD_STOP:
        return None  # edits reach Klarna only before anything is captured
    if klarna.expires_at is not None and klarna.expires_at <= now:
        return None
    change = f"from {money(klarna.order_amount)} to {money(amount)}"
    return PlannedOperation(
        UPDATE,
        f"authorization:{history.updates + 1}",
        amount,
        lines,
        description=f"Order {order.number} edited in the shop: {change}",
    )


# --------------------------------------------------------------------------- cancelled shipments


def _units(fulfillments: Iterable[Fulfillment], order: ShopOrder) -> dict[str, int]:
    held: dict[str, int] = {}
    for fulfillment in fulfillments:
        for fline in fulfillment.lines:
            line = order.line(fline.order_line_id)
            if line is not None:
                held[line.reference] = held.get(line.reference, 0) + fline.quantity
    return held


def _available(view: KlarnaOrder, operations: list[PlannedOperation]) -> int:
    """Captured and not refunded, once the operations already planned are done."""
    planned = {
        kind: sum(op.amount for op in operations if op.kind == kind)
        for kind in (OperationKind.CAPTURE, OperationKind.REFUND)
    }
    return view.captured + planned[OperationKind.CAPTURE] - view.refunded - planned[OperationKind.REFUND]


def _cancelled_shipment_refunds(
    order: ShopOrder, view: KlarnaOrder, options: Options, available: int, blocked: list[Blocked]
) -> list[PlannedOperation]:
    captured_for = {c.reference: c for c in view.captures if c.reference}
    refunded_refs = {r.reference for r in view.refunds}
    cancelled = [
        f
        for f in sorted(order.fulfillments, key=lambda f: f.number)
        if f.status == CANCELLED_FULFILLMENT and f.id in captured_for and f.id not in refunded_refs
    ]
    if not cancelled:
        return []
    captured_units: dict[str, int] = {}
    for record in (line for c in view.captures for line in c.lines):
        captured_units[record.reference] = captured_units.get(record.reference, 0) + record.quantity
    refunded_units: dict[str, int] = {}
    for record in (line for r in view.refunds for line in r.lines):
        refunded_units[record.reference] = refunded_units.get(record.reference, 0) + record.quantity
    kept = _units((f for f in order.fulfillments if f.status in SHIPPED and f.id in captured_for), order)
    to_refund = _units((f for f in order.fulfillments if f.status in RETURNED and f.id not in refunded_refs), order)
    free = {
        ref: units - refunded_units.get(ref, 0) - kept.get(ref, 0) - to_refund.get(ref, 0)
        for ref, units in captured_units.items()
    }
    operations = []
    for fulfillment in cancelled:
        capture = captured_for[fulfillment.id]
        lines = []
        for record in capture.lines:
            if record.type == "shipping_fee" or record.quantity <= 0:
                continue  # shipping stays with the order; only goods come back
            units = min(record.quantity, max(free.get(record.reference, 0), 0))
            if units <= 0:
                continue
            free[record.reference] -= units
            total = share(record.amount, record.quantity, record.quantity - units, units)
            lines.append(_refund_line(order, record, units, total))
        amount = sum(line.total_amount for line in lines)
        if amount <= 0:
            continue
        if amount > available:
            blocked.append(
                Blocked(
                    "EXCEEDS_CAPTURED",
                    f"the refund of {format_minor(amount, order.currency)} for cancelled shipment {fulfillment.number} "
                    f"is more than the {format_minor(max(available, 0), order.currency)} captured and not yet "
                    "refunded in Klarna",
                    reference=fulfillment.id,
                )
            )
            continue
        if options.cancelled_shipment == "flag":
            blocked.append(
                Blocked(
                    "SHIPMENT_CANCELLED",
                    f"shipment {fulfillment.number} was captured ({format_minor(amount, order.currency)}) and then "
                    "cancelled in Saleor; refund it in Klarna if the goods did not leave",
                    reference=fulfillment.id,
                )
            )
            continue
        available -= amount
        operations.append(
            PlannedOperation(
                OperationKind.REFUND,
                fulfillment.id,
                amount,
                tuple(lines),
                description=f"Shipment {fulfillment.number} of order {order.number} cancelled",
            )
        )
    return operations


def _shipping_refund(order: ShopOrder, view: KlarnaOrder, available: int) -> list[PlannedOperation]:
    """A cancelled order keeps no goods: the shipping captured with them is refunded too."""
    if SHIPPING_REFERENCE in {r.reference for r in view.refunds}:
        return []
    captured = sum(ln.amount for c in view.captures for ln in c.lines if ln.reference == SHIPPING_REFERENCE)
    refunded = sum(ln.amount for r in view.refunds for ln in r.lines if ln.reference == SHIPPING_REFERENCE)
    gross = captured - refunded
    if gross <= 0 or gross > available:
        return []
    line = shipping_line(order, gross)
    return [
        PlannedOperation(
            OperationKind.REFUND,
            SHIPPING_REFERENCE,
            gross,
            (line,),
            description=f"Shipping of cancelled order {order.number}",
        )
    ]


def _refund_line(order: ShopOrder, record: RecordedLine, units: int, total: int) -> KlarnaLine:
    line = next((ln for ln in order.lines if ln.reference == record.reference), None)
    if line is None:  # a line since removed from the order: refund it under Klarna's reference
        line = OrderLine(record.reference, record.reference, record.reference, units, total, 0, 0)
    return replace(klarna_line(line, units, total), type=record.type or "physical")


# --------------------------------------------------------------------------- leftovers


def _shop_cancelled(order: ShopOrder, mapping: Mapping[str, Action]) -> bool:
    return order.status in _SHOP_CANCELLED or Action(mapping.get(order.status, Action.NONE)) is Action.CANCEL


def _nothing_left_to_ship(order: ShopOrder) -> bool:
    held = _units((f for f in order.fulfillments if f.status in SHIPPED | RETURNED), order)
    return all(held.get(line.reference, 0) >= line.quantity for line in order.lines)


def _leftover(
    order: ShopOrder,
    view: KlarnaOrder,
    mapping: Mapping[str, Action],
    options: Options,
    captures: list[PlannedOperation],
    capture_blocked: bool,
    shop_cancelled: bool,
    now: datetime,
) -> PlannedOperation | None:
    if not options.release_leftovers or shop_cancelled or capture_blocked or not order.fulfillments:
        return None
    if Action.CAPTURE not in {Action(a) for a in mapping.values()}:
        return None  # the merchant captures by hand: leave the authorization alone
    if view.status not in OPEN_STATUSES or view.fraud_status != "ACCEPTED" or not _nothing_left_to_ship(order):
        return None
    if view.expires_at is not None and view.expires_at <= now:
        return None
    remaining = view.remaining - sum(op.amount for op in captures)
    if remaining <= 0:
        return None
    description = f"Nothing left to ship on order {order.number}"
    if view.captured == 0 and not any(op.amount for op in captures):
        return PlannedOperation(OperationKind.CANCEL, view.id, remaining, description=description)
    return PlannedOperation(OperationKind.RELEASE, view.id, remaining, description=description)


# --------------------------------------------------------------------------- expiry


def _limit(klarna: KlarnaOrder) -> datetime | None:
    return klarna.created_at + MAX_AUTHORIZATION_AGE if klarna.created_at is not None else None


def _expiry(
    order: ShopOrder,
    klarna: KlarnaOrder,
    options: Options,
    captures: list[PlannedOperation],
    now: datetime,
    blocked: list[Blocked],
) -> PlannedOperation | None:
    if klarna.expires_at is None or klarna.fraud_status in _FRAUD_STOP:
        return None

    def money(amount: int) -> str:
        return format_minor(amount, order.currency)

    remaining = klarna.remaining - sum(op.amount for op in captures)
    if klarna.status == "EXPIRED" or (klarna.status in OPEN_STATUSES and klarna.expires_at <= now):
        blocked.append(
            Blocked("AUTHORIZATION_EXPIRED", "the Klarna authorization has expired; what is left cannot be captured")
        )
        return None
    if klarna.status not in OPEN_STATUSES or remaining <= 0:
        return None
    limit = _limit(klarna)
    if limit is not None and now >= limit - timedelta(days=options.final_expiry_warning_days):
        blocked.append(
            Blocked(
                "AUTHORIZATION_FINAL_EXPIRY",
                f"the Klarna authorization ends on {limit:%Y-%m-%d %H:%M} UTC and cannot be extended further "
                f"(Klarna allows at most 180 days after the purchase); capture the remaining {money(remaining)} "
                "before then, or take the payment again",
            )
        )
    due = klarna.expires_at - timedelta(days=options.extension_margin_days)
    if now < due or (limit is not None and klarna.expires_at >= limit):
        return None
    if not options.extend_authorization:
        blocked.append(
            Blocked(
                "AUTHORIZATION_EXPIRING",
                f"the Klarna authorization expires on {klarna.expires_at:%Y-%m-%d %H:%M} UTC and automatic "
                "extension is off for this channel; capture or extend it in Klarna before then",
            )
        )
        return None
    return PlannedOperation(
        EXTEND,
        f"expires:{klarna.expires_at.isoformat()}",
        remaining,
        description=f"Authorization of order {order.number} extended before it expires",
    )


def _unique(blocked: list[Blocked]) -> tuple[Blocked, ...]:
    seen: set[tuple[str, str]] = set()
    out = []
    for item in blocked:
        if (item.code, item.reference) not in seen:
            seen.add((item.code, item.reference))
            out.append(item)
    return tuple(out)


__all__ = [
    "EDITABLE_STATUSES",
    "EXTEND",
    "MAX_AUTHORIZATION_AGE",
    "UPDATE",
    "AppHistory",
    "LifePlan",
    "SeenInKlarna",
    "next_check_at",
    "plan_life",
]
