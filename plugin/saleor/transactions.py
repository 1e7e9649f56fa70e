"""Saleor's TransactionItem on the wire: our GraphQL documents and their parsing into domain values.

The selection is the same in the manifest's TRANSACTION_*_REQUESTED subscription and in the
queries below, so one parser serves both (webhooks/payloads.py and client.py). Amounts go out as
JSON numbers like the samples (``130.0``): a Decimal of at most 3 decimals round-trips exactly.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from plugin.domain.books import EventReport, TransactionDraft
from plugin.domain.money import MoneyError, exponent, to_minor
from plugin.domain.transactions import (
    AppRef,
    EventType,
    LegacyPayment,
    OrderBooks,
    ReportOutcome,
    SaleorTransaction,
    TransactionEvent,
)


class ShapeError(ValueError):
    """A transaction that is not what our selection produces."""


TRANSACTION_FIELDS = """
fragment KlarnaOmMoney on Money { amount currency }
fragment KlarnaOmTransaction on TransactionItem {
  id name pspReference
  createdBy { __typename ... on App { id identifier name } }
  authorizedAmount { ...KlarnaOmMoney } chargedAmount { ...KlarnaOmMoney }
  refundedAmount { ...KlarnaOmMoney } canceledAmount { ...KlarnaOmMoney }
  authorizePendingAmount { ...KlarnaOmMoney } chargePendingAmount { ...KlarnaOmMoney }
  refundPendingAmount { ...KlarnaOmMoney } cancelPendingAmount { ...KlarnaOmMoney }
  events { id type pspReference amount { ...KlarnaOmMoney } message createdBy { __typename ... on App { id } } }
}
"""

BOOKS_QUERY = (
    """
query KlarnaOmBooks($id: ID!, $key: String!) {
  order(id: $id) {
    id number checkoutId
    channel { slug }
    total { gross { amount currency } }
    klarnaOrderId: privateMetafield(key: $key)
    transactions { ...KlarnaOmTransaction }
    payments { gateway pspReference }
  }
}
"""
    + TRANSACTION_FIELDS
)

TRANSACTION_CREATE = (
    """
mutation KlarnaOmTransactionCreate($id: ID!, $psp: String!, $amount: PositiveDecimal!, $currency: String!,
                                   $actions: [TransactionActionEnum!], $url: String, $message: String) {
  transactionCreate(id: $id,
    transaction: { name: "Klarna", pspReference: $psp, amountAuthorized: { amount: $amount, currency: $currency },
                   availableActions: $actions, externalUrl: $url },
    transactionEvent: { pspReference: $psp, message: $message }) {
    transaction { ...KlarnaOmTransaction }
    errors { field message code }
  }
}
"""
    + TRANSACTION_FIELDS
)

EVENT_REPORT = """
mutation KlarnaOmReport($id: ID!, $type: TransactionEventTypeEnum!, $psp: String!, $amount: PositiveDecimal,
                        $message: String, $url: String, $actions: [TransactionActionEnum!]) {
  transactionEventReport(id: $id, type: $type, pspReference: $psp, amount: $amount, message: $message,
                         externalUrl: $url, availableActions: $actions) {
    alreadyProcessed
    transactionEvent { id }
    errors { field message code }
  }
}
"""


def major(amount: int, currency: str) -> float:
    """Minor units -> the JSON number Saleor's PositiveDecimal takes (exact for <= 3 decimals)."""
    return float(Decimal(amount).scaleb(-exponent(currency)))


def _minor(node: object, currency: str, field: str) -> int:
    amount = node.get("amount") if isinstance(node, dict) else node
    if isinstance(amount, bool) or not isinstance(amount, int | float | str):
        raise ShapeError(f"{field} is not an amount")
    try:
        return to_minor(amount, currency)
    except MoneyError as exc:
        raise ShapeError(f"{field}: {exc}") from None


def _text_id(value: object) -> str | None:
    if isinstance(value, str) and value and len(value) <= 255 and "\x00" not in value:
        return value
    return None


def app_ref(node: object) -> AppRef | None:
    """A ``createdBy`` that is an app; None for a user or nothing."""
    if not isinstance(node, dict) or node.get("__typename", "App") != "App":
        return None
    app_id = _text_id(node.get("id"))
    if app_id is None:
        return None
    identifier, name = node.get("identifier"), node.get("name")
    return AppRef(app_id, identifier if isinstance(identifier, str) else None, name if isinstance(name, str) else None)


def parse_transaction(node: object, currency: str) -> SaleorTransaction:
    """A TransactionItem as KlarnaOmTransaction selects it."""
    if not isinstance(node, dict):
        raise ShapeError("transaction missing")
    tx_id = _text_id(node.get("id"))
    if tx_id is None:
        raise ShapeError("transaction.id missing or not an id")
    events = []
    for raw in node.get("events") or []:
        if not isinstance(raw, dict):
            continue
        try:
            kind = EventType(str(raw.get("type")))
        except ValueError:
            continue  # a type this app does not know (a newer Saleor): it cannot be ours
        creator = app_ref(raw.get("createdBy"))
        events.append(
            TransactionEvent(
                id=str(raw.get("id") or ""),
                type=kind,
                psp_reference=str(raw.get("pspReference") or ""),
                amount=_minor(raw.get("amount") or 0, currency, "event amount"),
                message=str(raw.get("message") or ""),
                created_by_app=creator.id if creator else None,
            )
        )

    def amount(key: str) -> int:
        return _minor(node[key], currency, key) if node.get(key) is not None else 0

    return SaleorTransaction(
        id=tx_id,
        name=str(node.get("name") or ""),
        psp_reference=str(node.get("pspReference") or "")[:255],
        owner=app_ref(node.get("createdBy")),
        currency=currency,
        authorized=amount("authorizedAmount"),
        charged=amount("chargedAmount"),
        refunded=amount("refundedAmount"),
        canceled=amount("canceledAmount"),
        authorize_pending=amount("authorizePendingAmount"),
        charge_pending=amount("chargePendingAmount"),
        refund_pending=amount("refundPendingAmount"),
        cancel_pending=amount("cancelPendingAmount"),
        events=tuple(events),
    )


def parse_books(raw: dict[str, Any]) -> OrderBooks:
    currency = raw["total"]["gross"]["currency"]
    private_id = raw.get("klarnaOrderId")
    return OrderBooks(
        order_id=raw["id"],
        number=str(raw.get("number") or ""),
        checkout_id=raw.get("checkoutId") or None,
        channel_slug=(raw.get("channel") or {}).get("slug") or "",
        currency=currency,
        total_gross=_minor(raw["total"]["gross"], currency, "total"),
        private_klarna_id=private_id if isinstance(private_id, str) and private_id.strip() else None,
        transactions=tuple(parse_transaction(t, currency) for t in raw.get("transactions") or []),
        payments=tuple(
            LegacyPayment(str(p.get("gateway") or ""), str(p.get("pspReference") or ""))
            for p in raw.get("payments") or []
            if isinstance(p, dict)
        ),
    )


def create_variables(order_id: str, draft: TransactionDraft) -> dict[str, Any]:
    return {
        "id": order_id, "psp": draft.psp_reference, "amount": major(draft.authorized, draft.currency),
        "currency": draft.currency, "actions": [a.value for a in draft.available_actions],
        "url": draft.external_url or None, "message": draft.message[:512],
    }  # fmt: skip


def report_variables(transaction_id: str, report: EventReport, currency: str) -> dict[str, Any]:
    return {
        "id": transaction_id, "type": report.type.value, "psp": report.psp_reference,
        "amount": major(report.amount, currency), "message": report.message[:512],
        "url": report.external_url or None, "actions": None if report.available_actions is None else [a.value for a in report.available_actions],
    }  # fmt: skip


def parse_report(data: dict[str, Any] | None) -> ReportOutcome:
    if not isinstance(data, dict):
        return ReportOutcome(False, error_code="PERMISSION_DENIED", message="Saleor refused the report")
    errors = data.get("errors") or []
    if errors:
        first = errors[0] if isinstance(errors[0], dict) else {}
        return ReportOutcome(
            False, error_code=str(first.get("code") or "ERROR"), message=str(first.get("message") or "")
        )
    return ReportOutcome(True, already_processed=data.get("alreadyProcessed") is True)
