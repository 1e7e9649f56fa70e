"""The domain's values: a shop order as Saleor has it now, a Klarna order as Klarna has it now.

Every amount is an integer in minor units of ``currency``. Adapters build these; nothing here knows JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NewType

from .states import OperationKind

KlarnaOrderId = NewType("KlarnaOrderId", str)
SaleorOrderId = NewType("SaleorOrderId", str)


class Action(StrEnum):
    NONE = "none"
    CAPTURE = "capture"
    CANCEL = "cancel"
    REFUND = "refund"


# Saleor's OrderStatus values, in the order the settings page lists them.
ORDER_STATUSES = (
    "DRAFT", "UNCONFIRMED", "UNFULFILLED", "PARTIALLY_FULFILLED", "FULFILLED",
    "PARTIALLY_RETURNED", "RETURNED", "CANCELED", "EXPIRED",
)  # fmt: skip

DEFAULT_MAPPING: dict[str, Action] = {
    "DRAFT": Action.NONE,
    "UNCONFIRMED": Action.NONE,
    "UNFULFILLED": Action.NONE,
    "PARTIALLY_FULFILLED": Action.CAPTURE,
    "FULFILLED": Action.CAPTURE,
    "PARTIALLY_RETURNED": Action.REFUND,
    "RETURNED": Action.REFUND,
    "CANCELED": Action.CANCEL,
    "EXPIRED": Action.CANCEL,
}

SHIPPED = frozenset({"FULFILLED"})
RETURNED = frozenset({"RETURNED", "REFUNDED", "REFUNDED_AND_RETURNED"})
# Klarna order statuses with an authorization left to capture, cancel or release.
OPEN_STATUSES = frozenset({"AUTHORIZED", "PART_CAPTURED"})


@dataclass(frozen=True)
class OrderLine:
    id: str
    name: str
    sku: str | None
    quantity: int
    total_gross: int  # Saleor's stored line total, discounts applied
    unit_gross: int
    tax_rate_bp: int  # 2500 = 25 %

    @property
    def reference(self) -> str:
        return self.sku or self.id


@dataclass(frozen=True)
class FulfillmentLine:
    order_line_id: str
    quantity: int


@dataclass(frozen=True)
class Fulfillment:
    id: str
    number: int
    status: str
    tracking_number: str
    lines: tuple[FulfillmentLine, ...]


@dataclass(frozen=True)
class ShopOrder:
    id: SaleorOrderId
    number: str
    status: str
    channel_slug: str
    currency: str
    lines: tuple[OrderLine, ...]
    fulfillments: tuple[Fulfillment, ...]
    shipping_gross: int
    shipping_tax: int
    total_gross: int
    klarna_order_id: KlarnaOrderId | None
    notes: frozenset[str] = frozenset()  # messages of the notes already on the order

    def line(self, line_id: str) -> OrderLine | None:
        return next((line for line in self.lines if line.id == line_id), None)


@dataclass(frozen=True)
class RecordedLine:
    """One order line of a capture or refund as Klarna (or the ledger) recorded it."""

    type: str
    reference: str
    quantity: int
    amount: int


def recorded_lines(lines: Iterable[Mapping[str, Any]] | None) -> tuple[RecordedLine, ...]:
    """The ``order_lines`` of a capture or refund, as Klarna answers them or as a request body sends them."""
    return tuple(
        RecordedLine(
            str(line.get("type") or "physical"),
            str(line.get("reference") or ""),
            int(line.get("quantity") or 0),
            int(line.get("total_amount") or 0),
        )
        for line in lines or ()
    )


@dataclass(frozen=True)
class KlarnaCapture:
    capture_id: str
    reference: str | None
    amount: int
    lines: tuple[RecordedLine, ...] = ()

    @property
    def line_types(self) -> tuple[str, ...]:
        return tuple(line.type for line in self.lines)


@dataclass(frozen=True)
class KlarnaRefund:
    refund_id: str
    reference: str | None
    amount: int
    lines: tuple[RecordedLine, ...] = ()

    @property
    def line_types(self) -> tuple[str, ...]:
        return tuple(line.type for line in self.lines)


@dataclass(frozen=True)
class KlarnaOrder:
    id: KlarnaOrderId
    status: str  # AUTHORIZED PART_CAPTURED CAPTURED CANCELLED EXPIRED CLOSED
    fraud_status: str  # ACCEPTED PENDING REJECTED
    currency: str
    order_amount: int
    captured: int
    refunded: int
    remaining: int
    expires_at: datetime | None
    captures: tuple[KlarnaCapture, ...] = ()
    refunds: tuple[KlarnaRefund, ...] = ()
    created_at: datetime | None = None  # the purchase: Klarna's 180-day limit counts from here
    merchant_reference1: str | None = None  # the shop's order reference, where the checkout set one


@dataclass(frozen=True)
class Options:
    """Per-channel options from the settings."""

    shipping_with: str = "first"  # "first" or "last" capture
    send_tracking: bool = True
    write_notes: bool = True
    refund_shipping_on_full_return: bool = True
    klarna_id_metadata_key: str = "klarna_order_id"
    # The authorization's life (plugin/domain/lifecycle.py).
    extend_authorization: bool = True  # extend before expires_at while something remains to capture
    extension_margin_days: int = 3  # how long before expires_at
    final_expiry_warning_days: int = 14  # warn this long before Klarna's 180-day limit ends the authorization
    update_authorization: bool = True  # send edits made before any capture to Klarna
    cancelled_shipment: str = "refund"  # a captured shipment cancelled in Saleor: "refund" or "flag"
    release_leftovers: bool = True  # nothing left to ship: release what remains authorized
    recheck_hours: int = 24  # re-read each open Klarna order at least this often (drift)
    fraud_recheck_minutes: int = 15  # re-read an order whose fraud decision is PENDING this often
    # Identifiers of other payment apps whose Klarna transactions this app may act on (notes and
    # metadata only; that app keeps the books). Empty: another app's Klarna payment is left alone.
    allowed_payment_apps: tuple[str, ...] = ()


@dataclass(frozen=True)
class KlarnaLine:
    type: str
    reference: str
    name: str
    quantity: int
    unit_price: int
    total_amount: int
    total_discount_amount: int
    tax_rate: int
    total_tax_amount: int

    def recorded(self) -> RecordedLine:
        return RecordedLine(self.type, self.reference, self.quantity, self.total_amount)

    def as_json(self) -> dict[str, object]:
        return {
            "type": self.type,
            "reference": self.reference[:255],
            "name": self.name[:255],
            "quantity": self.quantity,
            "unit_price": self.unit_price,
            "tax_rate": self.tax_rate,
            "total_amount": self.total_amount,
            "total_discount_amount": self.total_discount_amount,
            "total_tax_amount": self.total_tax_amount,
        }


@dataclass(frozen=True)
class PlannedOperation:
    kind: OperationKind
    reference: str  # fulfillment id, "shipping", or the Klarna order id for cancel/release
    amount: int
    lines: tuple[KlarnaLine, ...] = ()
    tracking_number: str = ""
    description: str = ""


@dataclass(frozen=True)
class Blocked:
    """An action the mapping asks for that must not happen now; the admin is told once."""

    code: str  # FRAUD_PENDING FRAUD_REJECTED AUTHORIZATION_EXPIRED KLARNA_CANCELLED EXCEEDS_REMAINING EXCEEDS_CAPTURED
    message: str
    reference: str = ""
    retry_later: bool = False


@dataclass(frozen=True)
class Plan:
    operations: tuple[PlannedOperation, ...] = ()
    blocked: tuple[Blocked, ...] = field(default_factory=tuple)

    @property
    def empty(self) -> bool:
        return not self.operations and not self.blocked


@dataclass(frozen=True)
class MerchantSettings:
    """One channel's Klarna credentials, region, status mapping and options (``*`` = every other channel)."""

    channel: str
    region: str = "EU"
    environment: str = "playground"
    username: str = ""
    password: str | None = None  # plaintext only in memory; never exported
    mapping: dict[str, Action] = field(default_factory=lambda: dict(DEFAULT_MAPPING))
    options: Options = field(default_factory=Options)

    @property
    def has_credentials(self) -> bool:
        return bool(self.username and self.password)

    def public(self) -> dict[str, Any]:
        """Everything but the secret, as JSON (export, settings page)."""
        return {
            "channel": self.channel,
            "region": self.region,
            "environment": self.environment,
            "username": self.username,
            "password_set": self.password is not None,
            "mapping": {status: Action(action).value for status, action in self.mapping.items()},
            "options": asdict(self.options),
        }

    def action_for(self, status: str) -> Action:
        return Action(self.mapping.get(status, Action.NONE))
