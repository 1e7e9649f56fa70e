"""The sync's part in Saleor's books (issue 9, issue 11 item 1): whose payment it is, the dashboard's
requests as planned operations, and the order's facts for the match check.

Pure helpers over the ports' values; :mod:`plugin.services.sync` calls them at its few wiring points:

* :func:`source_of` decides from Saleor's books which Klarna order the app acts on (never from the
  public metadata), falling back to today's reading when Saleor refuses the books (no HANDLE_PAYMENTS);
* :func:`button_steps` turns the requests the webhook recorded (RECORDED) into planned operations,
  in one table per action, and shows them to the status-driven plan so it counts them (a charge
  for exactly the first uncaptured shipment's value is that shipment's capture,
  :func:`shipment_capture`);
* :func:`order_facts` is what :func:`plugin.domain.transactions.check_match` compares Klarna with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from plugin.domain.books import released_amount
from plugin.domain.lifecycle import EDITABLE_STATUSES
from plugin.domain.model import (
    OPEN_STATUSES,
    Action,
    KlarnaCapture,
    KlarnaLine,
    KlarnaOrder,
    KlarnaRefund,
    Options,
    PlannedOperation,
    ShopOrder,
)
from plugin.domain.money import format_minor, share
from plugin.domain.plan import klarna_line, plan, shipping_line
from plugin.domain.requests import OpenRequest, RequestState
from plugin.domain.states import OperationKind
from plugin.domain.transactions import (
    ActionKind,
    AppRef,
    OrderBooks,
    OrderFacts,
    PaymentSource,
    SourceKind,
    resolve_source,
)

APP_IDENTIFIER = "app.klarna-om.saleor"  # manifest.json "id": Saleor's app_identifier, kept across reinstalls


def source_of(order: ShopOrder, books: OrderBooks | None, app_id: str, options: Options) -> PaymentSource:
    """Whose payment the order's Klarna order is, from Saleor's books (None: Saleor refuses them)."""
    if books is None:
        # An older installation: act as before, with notes and metadata only.
        if order.klarna_order_id is None:
            return PaymentSource(SourceKind.NONE, reason="not a Klarna order")
        return PaymentSource(
            SourceKind.NOTES_ONLY, order.klarna_order_id, books_kept_by="",
            reason="Saleor's books are not open to the app (HANDLE_PAYMENTS not granted)",
        )  # fmt: skip
    return resolve_source(
        transactions=books.transactions,
        me=AppRef(app_id, APP_IDENTIFIER),
        private_klarna_id=books.private_klarna_id,
        allowed_apps=frozenset(options.allowed_payment_apps),
        payments=books.payments,
    )


def order_facts(order: ShopOrder, books: OrderBooks | None, source: PaymentSource, options: Options) -> OrderFacts:
    """The shop's side of the match check: other transactions' money is not Klarna's to explain."""
    mine = source.transaction.id if source.transaction else None
    other = sum(t.money for t in books.transactions if t.id != mine) if books else 0
    return OrderFacts(
        order_id=order.id,
        number=order.number,
        currency=order.currency,
        total_gross=order.total_gross,
        checkout_id=books.checkout_id if books else None,
        other_money=other,
        edits_explain_more=order.status in EDITABLE_STATUSES or not options.update_authorization,
    )


# -- the dashboard's requests ---------------------------------------------------------------------


@dataclass(frozen=True)
class ButtonStep:
    """One recorded request: the operation to perform (None: nothing to send), or why it cannot be."""

    request: OpenRequest
    operation: PlannedOperation | None = None
    refusal: str | None = None


def _money(amount: int, currency: str) -> str:
    return format_minor(amount, currency)


@dataclass(frozen=True)
class Judging:
    """What a request is judged with besides Klarna's order: the merchant's options, the time, and
    the references of earlier captures and refunds made by amount alone (the plan's ``prepaid``)."""

    options: Options
    now: datetime
    prepaid: frozenset[str] = frozenset()


def shipment_capture(
    request: OpenRequest, order: ShopOrder, state: KlarnaOrder, judging: Judging
) -> PlannedOperation | None:
    """The capture of the first shipment not yet captured, when the request asks for exactly its value.

    It is the capture the status-driven plan would send for that shipment (same reference, lines and
    amount), so Klarna's records carry the shipment's lines and the plan counts the shipment as
    captured. Only the first one: later shipments' lines are valued after the earlier ones.
    """
    planned = plan(
        order, state, {order.status: Action.CAPTURE}, judging.options, now=judging.now, prepaid=judging.prepaid
    )
    first = next((op for op in planned.operations if op.kind is OperationKind.CAPTURE), None)
    if first is None or first.amount <= 0 or first.amount != request.amount:
        return None
    return replace(first, description=f"Captured from the dashboard: {first.description}")


def _charge(request: OpenRequest, order: ShopOrder, state: KlarnaOrder, judging: Judging) -> ButtonStep:
    if any(c.reference == request.reference for c in state.captures):
        return ButtonStep(request)  # done in an earlier run
    if state.status not in OPEN_STATUSES or request.amount > state.remaining:
        left = _money(state.remaining if state.status in OPEN_STATUSES else 0, state.currency)
        return ButtonStep(request, refusal=f"only {left} remains authorized in Klarna")
    shipment = shipment_capture(request, order, state, judging)
    if request.klarna_reference is not None:
        # Chosen by an earlier run and written with its ledger row: that row is sent (its stored body).
        if shipment is None or shipment.reference != request.klarna_reference:
            shipment = PlannedOperation(OperationKind.CAPTURE, request.klarna_reference, request.amount)
        return ButtonStep(request, shipment)
    if shipment is not None:
        return ButtonStep(request, shipment)
    description = f"Captured from the dashboard (order {order.number})"
    return ButtonStep(
        request, PlannedOperation(OperationKind.CAPTURE, request.psp_reference, request.amount, description=description)
    )


def granted_lines(request: OpenRequest, order: ShopOrder) -> tuple[KlarnaLine, ...]:
    """A granted refund's lines and shipping as Klarna lines, when they add up to the request's amount."""
    granted = request.details.get("granted_refund")
    if not isinstance(granted, dict):
        return ()
    lines: list[KlarnaLine] = []
    for item in granted.get("lines") or []:
        line = order.line(str(item.get("order_line_id")))
        quantity = int(item.get("quantity") or 0)
        if line is None or not 0 < quantity <= line.quantity:
            return ()
        lines.append(klarna_line(line, quantity, share(line.total_gross, line.quantity, 0, quantity)))
    if granted.get("shipping_included") and order.shipping_gross > 0:
        lines.append(shipping_line(order, order.shipping_gross))
    return tuple(lines) if lines and sum(ln.total_amount for ln in lines) == request.amount else ()


def _refund(request: OpenRequest, order: ShopOrder, state: KlarnaOrder, _judging: Judging) -> ButtonStep:
    if any(r.reference == request.psp_reference for r in state.refunds):
        return ButtonStep(request)
    kept = state.captured - state.refunded
    if request.amount > kept:
        return ButtonStep(request, refusal=f"only {_money(max(kept, 0), state.currency)} is captured and not refunded")
    op = PlannedOperation(
        OperationKind.REFUND,
        request.psp_reference,
        request.amount,
        granted_lines(request, order),
        description=f"Refunded from the dashboard (order {order.number})",
    )
    return ButtonStep(request, op)


def _cancel(request: OpenRequest, order: ShopOrder, state: KlarnaOrder, _judging: Judging) -> ButtonStep:
    """Cancel before any capture, release the rest after one; a cancel Klarna already shows is done."""
    description = "Cancelled from the dashboard"
    if state.status == "AUTHORIZED" and state.captured == 0 and state.remaining > 0:
        return ButtonStep(
            request, PlannedOperation(OperationKind.CANCEL, state.id, state.remaining, description=description)
        )
    if state.status == "PART_CAPTURED" and state.remaining > 0:
        return ButtonStep(
            request, PlannedOperation(OperationKind.RELEASE, state.id, state.remaining, description=description)
        )
    if released_amount(state)[0] > 0:
        return ButtonStep(request)
    return ButtonStep(request, refusal="nothing remains authorized in Klarna")


_STEPS: Mapping[ActionKind, Callable[[OpenRequest, ShopOrder, KlarnaOrder, Judging], ButtonStep]] = {
    ActionKind.CHARGE: _charge,
    ActionKind.REFUND: _refund,
    ActionKind.CANCEL: _cancel,
}


def shown(state: KlarnaOrder, op: PlannedOperation) -> KlarnaOrder:
    """Klarna's order as it will be once ``op`` is done, so the status-driven plan counts it."""
    lines = tuple(line.recorded() for line in op.lines)
    if op.kind is OperationKind.CAPTURE:
        remaining = state.remaining - op.amount
        return replace(
            state, captured=state.captured + op.amount, remaining=remaining,
            status="CAPTURED" if remaining == 0 else "PART_CAPTURED",
            captures=(*state.captures, KlarnaCapture("", op.reference, op.amount, lines)),
        )  # fmt: skip
    if op.kind is OperationKind.REFUND:
        refund = KlarnaRefund("", op.reference, op.amount, lines)
        return replace(state, refunded=state.refunded + op.amount, refunds=(*state.refunds, refund))
    if op.kind is OperationKind.CANCEL:
        return replace(state, status="CANCELLED", remaining=0)
    return replace(state, status="CAPTURED", remaining=0)  # RELEASE


def button_steps(
    requests: Iterable[OpenRequest], order: ShopOrder, state: KlarnaOrder, judging: Judging
) -> tuple[list[ButtonStep], KlarnaOrder]:
    """The recorded requests in the order they came, each judged against Klarna as the ones before leave it.

    A cancel request after one this run is about to send waits (no step: it stays RECORDED) until
    Klarna shows how that one ended; once Klarna shows the authorization gone, a cancel request is
    done, whoever cancelled (the order's status, an earlier request, the portal).
    """
    steps: list[ButtonStep] = []
    cancelling = False
    for request in requests:
        if request.state is not RequestState.RECORDED:
            continue
        if request.action is ActionKind.CANCEL and cancelling:
            continue
        if request.klarna_order_id != state.id:
            steps.append(ButtonStep(request, refusal=f"the transaction names Klarna order {request.klarna_order_id}"))
            continue
        step = _STEPS[request.action](request, order, state, judging)
        if step.operation is not None:
            state = shown(state, step.operation)
            cancelling = cancelling or step.operation.kind in (OperationKind.CANCEL, OperationKind.RELEASE)
        steps.append(step)
    return steps, state


def prepaid_references(requests: Sequence[OpenRequest]) -> frozenset[str]:
    """The Klarna references of captures and refunds made for the buttons (the plan counts them)."""
    return frozenset(r.psp_reference for r in requests if r.action in (ActionKind.CHARGE, ActionKind.REFUND))
