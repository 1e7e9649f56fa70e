"""What Saleor's books still lack: the transactionEventReport calls that make them equal Klarna's.

Level-triggered and pure: given Klarna's order as it is now and the transaction's events, return
the reports still missing. Running it again after they are made returns nothing. Identity is
Saleor's duplicate key (transaction, pspReference, type): each Klarna capture is reported as
CHARGE_SUCCESS under its capture id, each refund as REFUND_SUCCESS under its refund id, a cancel
or release of what remains as one CANCEL_SUCCESS. When the operation answered a dashboard request,
``request_psp`` maps the Klarna resource (capture id, refund id, or the Klarna order id for a
cancel/release) to the pspReference the app answered with, so the report closes that request.

A report whose (type, pspReference) already exists with another amount would be refused
(INCORRECT_DETAILS) and stored by Saleor as a failure: it is returned as a conflict, never sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from plugin.domain.model import KlarnaOrder
from plugin.domain.money import format_minor
from plugin.domain.transactions import FAILURE_EVENT, ActionKind, EventType, SaleorTransaction

PORTAL_HOSTS = {"live": "portal.klarna.com", "playground": "portal.playground.klarna.com"}


def portal_order_url(environment: str, merchant_id: str, klarna_order_id: str) -> str:
    """The order's page in Klarna's merchant portal (the merchant id is the API username's prefix)."""
    host = PORTAL_HOSTS.get(environment, PORTAL_HOSTS["playground"])
    return f"https://{host}/orders/all/merchants/{quote(merchant_id, safe='')}/orders/{quote(klarna_order_id, safe='')}"


def merchant_id_of(username: str) -> str:
    """Klarna API usernames look like ``PK12345_abc…``; the merchant id is the part before ``_``."""
    return username.split("_", 1)[0]


@dataclass(frozen=True)
class EventReport:
    """One transactionEventReport call."""

    type: EventType
    psp_reference: str
    amount: int
    message: str
    external_url: str = ""
    available_actions: tuple[ActionKind, ...] | None = None  # None: leave the buttons as they are


@dataclass(frozen=True)
class Conflict:
    """A report Saleor would refuse: the same pspReference and type with another amount."""

    type: EventType
    psp_reference: str
    booked: int
    klarna: int


@dataclass(frozen=True)
class BooksPlan:
    reports: tuple[EventReport, ...] = ()
    conflicts: tuple[Conflict, ...] = ()


@dataclass(frozen=True)
class TransactionDraft:
    """The transactionCreate for an order whose Klarna id came from private metadata."""

    name: str
    psp_reference: str
    authorized: int
    currency: str
    available_actions: tuple[ActionKind, ...]
    external_url: str
    message: str


def available_actions(klarna: KlarnaOrder) -> tuple[ActionKind, ...]:
    """The dashboard buttons Klarna's state allows: capture or cancel what remains, refund what was kept."""
    actions: list[ActionKind] = []
    open_authorization = klarna.remaining > 0 and klarna.status not in ("CANCELLED", "EXPIRED", "CLOSED")
    if open_authorization:
        actions += [ActionKind.CHARGE, ActionKind.CANCEL]
    if klarna.captured - klarna.refunded > 0:
        actions.append(ActionKind.REFUND)
    return tuple(actions)


def transaction_draft(klarna: KlarnaOrder, portal_url: str) -> TransactionDraft:
    """Create the transaction with what Klarna authorized; the captures etc. are then reported."""
    return TransactionDraft(
        name="Klarna",
        psp_reference=klarna.id,
        authorized=klarna.order_amount,
        currency=klarna.currency,
        available_actions=(ActionKind.CHARGE, ActionKind.CANCEL, ActionKind.REFUND),
        external_url=portal_url,
        message=f"Klarna order {klarna.id} authorized {format_minor(klarna.order_amount, klarna.currency)}",
    )


def released_amount(klarna: KlarnaOrder) -> tuple[int, str]:
    """What Klarna no longer holds for capture (cancelled, expired or released), and why."""
    gone = klarna.order_amount - klarna.captured
    if gone <= 0:
        return 0, ""
    if klarna.status == "CANCELLED":
        return gone, "Klarna authorization cancelled"
    if klarna.status == "EXPIRED":
        return gone, "Klarna authorization expired"
    if klarna.remaining == 0:
        return gone, "Klarna released the remaining authorization"
    return 0, ""


def missing_reports(
    klarna: KlarnaOrder,
    transaction: SaleorTransaction,
    *,
    portal_url: str = "",
    request_psp: Mapping[str, str] | None = None,
    cancel_requests: Sequence[str] = (),
) -> BooksPlan:
    """The reports that make ``transaction`` show what ``klarna`` shows. Pure, level-triggered.

    ``cancel_requests``: the pspReferences of the dashboard's cancel requests Klarna's state answers.
    """
    psp_for = request_psp or {}
    booked: dict[tuple[EventType, str], int] = {}
    for event in transaction.events:
        if event.type in (EventType.CHARGE_SUCCESS, EventType.REFUND_SUCCESS, EventType.CANCEL_SUCCESS):
            booked.setdefault((event.type, event.psp_reference), event.amount)
    cur = klarna.currency
    actions = available_actions(klarna)
    wanted: list[EventReport] = []
    for capture in klarna.captures:
        wanted.append(
            EventReport(
                EventType.CHARGE_SUCCESS,
                psp_for.get(capture.capture_id, capture.capture_id),
                capture.amount,
                f"Klarna capture {capture.capture_id}: {format_minor(capture.amount, cur)}",
                portal_url,
                actions,
            )
        )
    for refund in klarna.refunds:
        wanted.append(
            EventReport(
                EventType.REFUND_SUCCESS,
                psp_for.get(refund.refund_id, refund.refund_id),
                refund.amount,
                f"Klarna refund {refund.refund_id}: {format_minor(refund.amount, cur)}",
                portal_url,
                actions,
            )
        )
    gone, why = released_amount(klarna)
    cancel_psp = psp_for.get(klarna.id, klarna.id)
    already_cancelled = sum(a for (t, _), a in booked.items() if t == EventType.CANCEL_SUCCESS)

    def holds(psp: str) -> bool:  # a positive cancel is booked under psp (a request answered as done holds 0)
        return booked.get((EventType.CANCEL_SUCCESS, psp), 0) > 0

    full = gone > 0 and (already_cancelled == 0 or holds(cancel_psp))
    if full:
        wanted.append(
            EventReport(
                EventType.CANCEL_SUCCESS, cancel_psp, gone, f"{why}: {format_minor(gone, cur)}", portal_url, actions
            )
        )
    if gone > 0:
        # Klarna's one cancel is booked once; every other cancel request is answered as done, with
        # nothing more cancelled (0 clears its pending amount in Saleor without counting twice).
        wanted.extend(
            EventReport(EventType.CANCEL_SUCCESS, psp, 0, f"{why} already; nothing more to cancel", portal_url, actions)
            for psp in cancel_requests
            if not holds(psp) and not (full and psp == cancel_psp)
        )
    reports: list[EventReport] = []
    conflicts: list[Conflict] = []
    for report in wanted:
        if report.amount <= 0 and report.type is not EventType.CANCEL_SUCCESS:
            continue
        existing = booked.get((report.type, report.psp_reference))
        if existing is None:
            reports.append(report)
        elif existing != report.amount:
            conflicts.append(Conflict(report.type, report.psp_reference, existing, report.amount))
    return BooksPlan(tuple(reports), tuple(conflicts))


def failure_report(
    action: ActionKind, psp_reference: str, amount: int, currency: str, reason: str, portal_url: str = ""
) -> EventReport:
    """The *_FAILURE that closes a dashboard request Klarna refused (same pspReference as the answer)."""
    return EventReport(
        FAILURE_EVENT[action],
        psp_reference,
        amount,
        f"Klarna refused the {action.value.lower()} of {format_minor(amount, currency)}: {reason}"[:512],
        portal_url,
    )


def request_psp_map(klarna: KlarnaOrder, requests: Iterable[tuple[ActionKind, str, str]]) -> dict[str, str]:
    """Which Klarna resource answered which dashboard request: Klarna resource id -> request pspReference.

    ``requests`` are (action, pspReference, Klarna reference) triples. Convention: a capture or refund
    made for a request carries the request's Klarna reference (its pspReference, or the shipment it
    was captured for); a cancel or release is the Klarna order's, so the (first) open cancel request
    takes it once Klarna shows the authorization gone.
    """
    by_reference: dict[str, tuple[ActionKind, str]] = {}
    cancels: list[str] = []
    for action, psp, reference in requests:
        by_reference.setdefault(reference, (action, psp))
        if action is ActionKind.CANCEL:
            cancels.append(psp)

    def answered(reference: str | None, action: ActionKind) -> str | None:
        found = by_reference.get(reference or "")
        return found[1] if found is not None and found[0] is action else None

    mapping = {c.capture_id: to for c in klarna.captures if (to := answered(c.reference, ActionKind.CHARGE))}
    mapping |= {r.refund_id: to for r in klarna.refunds if (to := answered(r.reference, ActionKind.REFUND))}
    if cancels and released_amount(klarna)[0] > 0:
        mapping[klarna.id] = cancels[0]
    return mapping
