"""Saleor's books: its transactions, whose payment an order's Klarna order is, and whether it matches.

Standard library only. Amounts are integers in minor units. Saleor's rules are in
saleor-app-protocol.md §5.3-§5.4: only the app that owns a transaction may report on it and
receives its TRANSACTION_*_REQUESTED; Saleor adds up every transaction of an order, so a second
transaction for money another one already holds over-charges the order.

Who keeps the books (DESIGN §5, issue 9 item 1, issue 11 item 1)::

    the order has                                          SourceKind
    a Klarna transaction this app owns                     OWN            act, book on it
    another app's Klarna transaction, app allowed          FOREIGN_ALLOWED act, notes/metadata only
    another app's Klarna transaction, app not allowed      FOREIGN        nothing at all
    a Klarna id in private metadata, no other money        CREATE         transactionCreate, book, act
    a Klarna id in private metadata, other money present   NOTES_ONLY     act, notes/metadata only
    a legacy Klarna payment (plugin gateway)               NOTES_ONLY     act, notes/metadata only
    nothing of the above                                   NONE           not a Klarna order

Public metadata is never read: a shopper writes it through checkout metadata.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from plugin.domain.model import KlarnaOrder, KlarnaOrderId

KLARNA_TRANSACTION_NAME = "Klarna"


class EventType(StrEnum):
    """Saleor's TransactionEventTypeEnum (3.23)."""

    AUTHORIZATION_SUCCESS = "AUTHORIZATION_SUCCESS"
    AUTHORIZATION_FAILURE = "AUTHORIZATION_FAILURE"
    AUTHORIZATION_ADJUSTMENT = "AUTHORIZATION_ADJUSTMENT"
    AUTHORIZATION_REQUEST = "AUTHORIZATION_REQUEST"
    AUTHORIZATION_ACTION_REQUIRED = "AUTHORIZATION_ACTION_REQUIRED"
    CHARGE_ACTION_REQUIRED = "CHARGE_ACTION_REQUIRED"
    CHARGE_SUCCESS = "CHARGE_SUCCESS"
    CHARGE_FAILURE = "CHARGE_FAILURE"
    CHARGE_BACK = "CHARGE_BACK"
    CHARGE_REQUEST = "CHARGE_REQUEST"
    REFUND_SUCCESS = "REFUND_SUCCESS"
    REFUND_FAILURE = "REFUND_FAILURE"
    REFUND_REVERSE = "REFUND_REVERSE"
    REFUND_REQUEST = "REFUND_REQUEST"
    CANCEL_SUCCESS = "CANCEL_SUCCESS"
    CANCEL_FAILURE = "CANCEL_FAILURE"
    CANCEL_REQUEST = "CANCEL_REQUEST"
    INFO = "INFO"


class ActionKind(StrEnum):
    """TransactionActionEnum: what a dashboard button asks for."""

    CHARGE = "CHARGE"
    REFUND = "REFUND"
    CANCEL = "CANCEL"


# Per action: the request event Saleor stores, and the results an answer or report may carry.
REQUEST_EVENT = {
    ActionKind.CHARGE: EventType.CHARGE_REQUEST,
    ActionKind.REFUND: EventType.REFUND_REQUEST,
    ActionKind.CANCEL: EventType.CANCEL_REQUEST,
}
SUCCESS_EVENT = {
    ActionKind.CHARGE: EventType.CHARGE_SUCCESS,
    ActionKind.REFUND: EventType.REFUND_SUCCESS,
    ActionKind.CANCEL: EventType.CANCEL_SUCCESS,
}
FAILURE_EVENT = {
    ActionKind.CHARGE: EventType.CHARGE_FAILURE,
    ActionKind.REFUND: EventType.REFUND_FAILURE,
    ActionKind.CANCEL: EventType.CANCEL_FAILURE,
}
# Saleor-Event header (lower case) -> action.
ACTION_EVENTS = {
    "transaction_charge_requested": ActionKind.CHARGE,
    "transaction_refund_requested": ActionKind.REFUND,
    "transaction_cancelation_requested": ActionKind.CANCEL,
}


@dataclass(frozen=True)
class AppRef:
    """An app as Saleor names it: global id and the manifest ``id`` (``identifier``)."""

    id: str
    identifier: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class TransactionEvent:
    id: str
    type: EventType
    psp_reference: str
    amount: int
    message: str = ""
    created_by_app: str | None = None  # app id; None for a user or Saleor itself


@dataclass(frozen=True)
class SaleorTransaction:
    """A TransactionItem. ``authorized`` is what remains authorized (Saleor subtracts charges)."""

    id: str
    name: str
    psp_reference: str
    owner: AppRef | None  # createdBy when it is an app; None for a staff user
    currency: str
    authorized: int = 0
    charged: int = 0
    refunded: int = 0
    canceled: int = 0
    authorize_pending: int = 0
    charge_pending: int = 0
    refund_pending: int = 0
    cancel_pending: int = 0
    events: tuple[TransactionEvent, ...] = ()  # newest first, as Saleor lists them

    @property
    def is_klarna(self) -> bool:
        return "klarna" in self.name.lower()

    @property
    def money(self) -> int:
        """What this transaction represents in the order's totals."""
        return self.authorized + self.charged + self.authorize_pending + self.charge_pending

    def owned_by(self, app: AppRef) -> bool:
        """Saleor's ``check_if_requestor_has_access``: same app, or same identifier (a reinstall)."""
        if self.owner is None:
            return False
        if self.owner.id == app.id:
            return True
        return bool(app.identifier) and self.owner.identifier == app.identifier


@dataclass(frozen=True)
class LegacyPayment:
    """A Payment of Saleor's legacy plugin gateways (no app owns it)."""

    gateway: str
    psp_reference: str


class SourceKind(StrEnum):
    OWN = "own"
    CREATE = "create"
    FOREIGN_ALLOWED = "foreign_allowed"
    FOREIGN = "foreign"
    NOTES_ONLY = "notes_only"
    NONE = "none"


# What each kind lets the app do: (call Klarna, report on a Saleor transaction).
_POWERS = {
    SourceKind.OWN: (True, True),
    SourceKind.CREATE: (True, True),
    SourceKind.FOREIGN_ALLOWED: (True, False),
    SourceKind.NOTES_ONLY: (True, False),
    SourceKind.FOREIGN: (False, False),
    SourceKind.NONE: (False, False),
}


@dataclass(frozen=True)
class PaymentSource:
    """Where the order's Klarna order id came from and what the app may do with it."""

    kind: SourceKind
    klarna_order_id: KlarnaOrderId | None = None
    transaction: SaleorTransaction | None = None
    books_kept_by: str = ""  # who keeps the payment's books in Saleor, for the widget
    reason: str = ""

    @property
    def acts(self) -> bool:
        """May the app call Klarna (and write notes) for this order?"""
        return _POWERS[self.kind][0]

    @property
    def books(self) -> bool:
        """Does the app report events on a Saleor transaction it owns (or will create)?"""
        return _POWERS[self.kind][1]


def _app_label(app: AppRef | None) -> str:
    if app is None:
        return "a staff user"
    return app.name or app.identifier or app.id


def resolve_source(
    *,
    transactions: Iterable[SaleorTransaction],
    me: AppRef,
    private_klarna_id: str | None,
    allowed_apps: frozenset[str] = frozenset(),
    payments: Iterable[LegacyPayment] = (),
    klarna_amount: int | None = None,
    order_total: int | None = None,
) -> PaymentSource:
    """Decide whose payment the order's Klarna order is (see the module's table).

    ``private_klarna_id`` comes from the order's *private* metadata only. ``allowed_apps`` holds
    app identifiers the merchant allowed in the channel settings. ``klarna_amount`` and
    ``order_total``, when known, let a Klarna transaction be created beside other money that
    leaves room for it (a split payment); without them any other money blocks creation.
    """
    txs = tuple(transactions)
    own = [t for t in txs if t.owned_by(me) and (t.is_klarna or t.psp_reference == private_klarna_id)]
    own = [t for t in own if t.psp_reference]
    if own:
        chosen = next((t for t in own if t.psp_reference == private_klarna_id), own[0])
        return PaymentSource(
            SourceKind.OWN, KlarnaOrderId(chosen.psp_reference), chosen, books_kept_by=_app_label(me),
            reason="the order's Klarna transaction belongs to this app",
        )  # fmt: skip
    foreign = [t for t in txs if t.is_klarna and t.psp_reference and not t.owned_by(me)]
    if foreign:
        tx = foreign[0]
        label = _app_label(tx.owner)
        if tx.owner is not None and tx.owner.identifier and tx.owner.identifier in allowed_apps:
            return PaymentSource(
                SourceKind.FOREIGN_ALLOWED, KlarnaOrderId(tx.psp_reference), tx, books_kept_by=label,
                reason=f"the Klarna transaction belongs to {label}, allowed in the settings",
            )  # fmt: skip
        return PaymentSource(
            SourceKind.FOREIGN, None, tx, books_kept_by=label,
            reason=f"the Klarna transaction belongs to {label}; allow it in the settings to act on it",
        )  # fmt: skip
    legacy = next((p for p in payments if "klarna" in p.gateway.lower() and p.psp_reference), None)
    if legacy is not None:
        return PaymentSource(
            SourceKind.NOTES_ONLY, KlarnaOrderId(legacy.psp_reference), None, books_kept_by=f"the {legacy.gateway} payment",
            reason="a legacy Klarna payment keeps the books",
        )  # fmt: skip
    if not private_klarna_id:
        return PaymentSource(SourceKind.NONE, reason="no Klarna order id from a source a shopper cannot write")
    other = [t for t in txs if t.money > 0]
    other_money = sum(t.money for t in other)
    room = klarna_amount is not None and order_total is not None and other_money + klarna_amount <= order_total
    if other and not room:
        label = _app_label(other[0].owner)
        return PaymentSource(
            SourceKind.NOTES_ONLY, KlarnaOrderId(private_klarna_id), None, books_kept_by=label,
            reason=f"another transaction ({label}) already represents this money; not booked twice",
        )  # fmt: skip
    return PaymentSource(
        SourceKind.CREATE, KlarnaOrderId(private_klarna_id), None, books_kept_by=_app_label(me),
        reason="Klarna order id in private metadata; this app creates the Klarna transaction",
    )  # fmt: skip


# -- does the Klarna order belong to this shop order? (issue 11 item 1) ------------------------


class MismatchCode(StrEnum):
    CURRENCY = "CURRENCY_MISMATCH"
    AMOUNT = "AMOUNT_UNEXPLAINED"
    REFERENCE = "MERCHANT_REFERENCE_MISMATCH"
    BOUND_ELSEWHERE = "KLARNA_ORDER_BOUND_ELSEWHERE"


@dataclass(frozen=True)
class Mismatch:
    code: MismatchCode
    message: str


@dataclass(frozen=True)
class OrderFacts:
    """What the shop's order says about its payment (minor units of ``currency``)."""

    order_id: str
    number: str
    currency: str
    total_gross: int
    checkout_id: str | None = None
    other_money: int = 0  # held by other transactions of the order
    # An authorization above the order, before any capture, is explained by an edit: Saleor edits
    # lines in DRAFT and UNCONFIRMED (the plan then updates the authorization down to the order), and
    # a merchant who does not update authorizations keeps Klarna above an edited order (the leftover
    # is released once nothing is left to ship).
    edits_explain_more: bool = False

    def identifiers(self) -> frozenset[str]:
        """Every spelling of this order a merchant reference may carry."""
        ids = {self.order_id, self.number, f"#{self.number}"}
        for global_id in (self.order_id, self.checkout_id):
            if global_id:
                ids.add(global_id)
                ids.add(_raw_id(global_id))
        return frozenset(i for i in ids if i and i != "#")


def _raw_id(global_id: str) -> str:
    """``T3JkZXI6<uuid>`` -> ``<uuid>``; anything else unchanged."""
    try:
        decoded = base64.b64decode(global_id + "=" * (-len(global_id) % 4), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return global_id
    _, sep, pk = decoded.partition(":")
    return pk if sep and pk else global_id


def check_match(order: OrderFacts, klarna: KlarnaOrder, merchant_reference1: str | None = None) -> Mismatch | None:
    """None when the Klarna order can be this order's payment, else why not. Pure.

    Currency must be the order's; Klarna's authorized amount and captures must fit in what the
    order (less other transactions' money) can explain, an authorization above it only before any
    capture and where an edit explains it (``edits_explain_more``); ``merchant_reference1``, where
    Klarna carries one, must name this order (its id, number or checkout).
    """
    if klarna.currency.upper() != order.currency.upper():
        return Mismatch(
            MismatchCode.CURRENCY, f"Klarna order is in {klarna.currency}, the Saleor order in {order.currency}"
        )
    room = order.total_gross - order.other_money
    edited_down = order.edits_explain_more and klarna.captured == 0
    if klarna.order_amount <= 0 or (klarna.order_amount > room and not edited_down) or klarna.captured > room:
        return Mismatch(
            MismatchCode.AMOUNT,
            f"Klarna authorized {klarna.order_amount} and captured {klarna.captured} (minor units); "
            f"the order can explain at most {room}",
        )
    reference = (merchant_reference1 or "").strip()
    if reference and reference not in order.identifiers():
        return Mismatch(MismatchCode.REFERENCE, f"Klarna's merchant reference {reference!r} does not name this order")
    return None


# -- a dashboard button: TRANSACTION_*_REQUESTED (protocol §5.4) ---------------------------------


@dataclass(frozen=True)
class GrantedRefundLine:
    order_line_id: str
    quantity: int


@dataclass(frozen=True)
class GrantedRefund:
    id: str
    amount: int
    lines: tuple[GrantedRefundLine, ...] = ()
    shipping_included: bool = False


@dataclass(frozen=True)
class ActionRequest:
    """One TRANSACTION_*_REQUESTED delivery, parsed. ``request_event`` is Saleor's *_REQUEST event
    (pspReference still empty), which identifies the request across identical deliveries."""

    action: ActionKind
    amount: int
    currency: str
    order_id: str
    transaction: SaleorTransaction
    recipient_id: str
    request_event: TransactionEvent | None = None
    granted_refund: GrantedRefund | None = None


def find_request_event(events: Iterable[TransactionEvent], action: ActionKind, amount: int) -> TransactionEvent | None:
    """The newest unanswered request event of this kind and amount (events come newest first)."""
    wanted = REQUEST_EVENT[action]
    return next((e for e in events if e.type == wanted and not e.psp_reference and e.amount == amount), None)


def refuse_reason(request: ActionRequest, me: AppRef) -> str | None:
    """Why a request is impossible as it stands (answered at once with the failure), else None. Pure.

    Amounts are checked against the transaction as the payload shows it: Saleor has not yet
    counted the request itself (sample 30: authorized 130.00 with a CHARGE of 50.00).
    """
    tx = request.transaction
    if not tx.owned_by(me):
        return "this transaction is not kept by this app"
    if not tx.psp_reference:
        return "the transaction carries no Klarna order id"
    if request.currency.upper() != tx.currency.upper():
        return f"requested in {request.currency}, the transaction is in {tx.currency}"
    requester = request.request_event.created_by_app if request.request_event else None
    if requester is not None and requester != me.id:
        return "requested by another app; only the shop's staff may steer this Klarna payment"
    if request.amount <= 0 and request.action is not ActionKind.CANCEL:
        return "the requested amount is not positive"
    limits = {
        ActionKind.CHARGE: (tx.authorized, "what remains authorized"),
        ActionKind.REFUND: (tx.charged, "what was captured and not refunded"),
        ActionKind.CANCEL: (tx.authorized, "what remains authorized"),
    }
    limit, what = limits[request.action]
    if request.action is ActionKind.CANCEL and limit <= 0:
        if tx.canceled > 0 or tx.cancel_pending > 0:
            return None  # cancelled already (or on its way): recorded, and answered as done once Klarna shows it
        return "nothing remains authorized to cancel"
    if request.amount > limit:
        return f"{request.amount} exceeds {what} ({limit}, minor units)"
    return None


# -- what Saleor answers (the adapter parses it: plugin/saleor/transactions.py) ------------------


@dataclass(frozen=True)
class OrderBooks:
    """What Saleor's books say about an order's payment: the input of ``resolve_source``."""

    order_id: str
    number: str
    checkout_id: str | None
    channel_slug: str
    currency: str
    total_gross: int
    private_klarna_id: str | None  # private metadata only: a shopper writes the public one
    transactions: tuple[SaleorTransaction, ...]
    payments: tuple[LegacyPayment, ...]


@dataclass(frozen=True)
class ReportOutcome:
    """transactionEventReport's answer. ``already_processed``: Saleor had it (a replay is success)."""

    ok: bool
    already_processed: bool = False
    error_code: str | None = None  # INCORRECT_DETAILS, NOT_FOUND, PERMISSION_DENIED, ...
    message: str = ""
