"""The Saleor adapter's books: read transactions with their owner, create the Klarna transaction,
report events (alreadyProcessed, INCORRECT_DETAILS, not the owner), against the fake Saleor."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from plugin.domain.books import EventReport, missing_reports, portal_order_url, transaction_draft
from plugin.domain.model import KlarnaCapture, KlarnaOrder, KlarnaOrderId, KlarnaRefund
from plugin.domain.transactions import AppRef, EventType, SourceKind, resolve_source
from plugin.saleor.client import SaleorClient, parse_order
from tests.functional.shop import Shop


@pytest.fixture
def client(shop: Shop) -> Iterator[SaleorClient]:
    result = shop.saleor.install(
        f"{shop.settings.public_base}/api/manifest", permissions=("MANAGE_ORDERS", "HANDLE_PAYMENTS")
    )
    assert result.ok
    shop.configure()
    saleor = SaleorClient(shop.saleor.api_url, shop.saleor.app_token or "")
    yield saleor
    saleor.close()


def me(shop: Shop) -> AppRef:
    return AppRef(shop.saleor.app_id or "", "app.klarna-om.saleor")


def test_books_read_the_owner_and_only_private_metadata(shop: Shop, client: SaleorClient) -> None:
    own_id, klarna_id = shop.order()
    books = client.get_books(own_id)
    # The worker's one read (the order with its books) reads what the two queries read.
    assert client.get_order_and_books(own_id) == (client.get_order(own_id), books)
    assert books is not None and books.currency == "USD" and books.total_gross == 13000
    [tx] = books.transactions
    assert tx.owner == AppRef(shop.saleor.app_id or "", "app.klarna-om.saleor", "Klarna Order Management")
    assert (tx.psp_reference, tx.authorized) == (klarna_id, 13000)
    assert resolve_source(transactions=books.transactions, me=me(shop), private_klarna_id=None).kind is SourceKind.OWN

    # A shopper's checkout metadata lands in the order's public metadata: never a Klarna id.
    public_id, _ = shop.order(klarna=False)
    shop.saleor._orders[public_id]["metadata"]["klarna_order_id"] = klarna_id
    books = client.get_books(public_id)
    assert books is not None and books.private_klarna_id is None
    source = resolve_source(transactions=books.transactions, me=me(shop), private_klarna_id=books.private_klarna_id)
    assert source.kind is SourceKind.NONE
    raw = shop.saleor.order(public_id)
    assert parse_order(raw).klarna_order_id is None


def test_create_then_book_what_klarna_shows_and_saleor_equals_klarna(shop: Shop, client: SaleorClient) -> None:
    order_id = shop.saleor.create_order(
        lines=[{"name": "Tee", "quantity": 2, "unit_gross": "20.00"}, {"name": "Shoe", "quantity": 1, "unit_gross": "90.00"}],
        klarna_via="metadata", klarna_order_id="k-meta",
    )  # fmt: skip
    books = client.get_books(order_id)
    assert books is not None and books.private_klarna_id == "k-meta" and books.transactions == ()
    source = resolve_source(transactions=books.transactions, me=me(shop), private_klarna_id=books.private_klarna_id)
    assert source.kind is SourceKind.CREATE
    klarna = KlarnaOrder(
        id=KlarnaOrderId("k-meta"), status="CAPTURED", fraud_status="ACCEPTED", currency="USD", order_amount=13000,
        captured=13000, refunded=2000, remaining=0, expires_at=None,
        captures=(KlarnaCapture("cap-1", None, 11000), KlarnaCapture("cap-2", None, 2000)),
        refunds=(KlarnaRefund("ref-1", None, 2000),),
    )  # fmt: skip
    portal = portal_order_url("playground", "PK_test", "k-meta")
    tx = client.create_transaction(order_id, transaction_draft(klarna, portal))
    assert tx.owned_by(me(shop)) and tx.authorized == 13000 and tx.psp_reference == "k-meta"
    plan = missing_reports(klarna, tx, portal_url=portal)
    outcomes = [client.report_event(tx.id, report, "USD") for report in plan.reports]
    assert all(o.ok and not o.already_processed for o in outcomes) and len(outcomes) == 3
    order = shop.saleor.order(order_id)
    assert (order["totalCharged"]["amount"], order["totalRefunded"]["amount"]) == (110.0, 20.0)
    assert order["transactions"][0]["actions"] == ["REFUND"]
    books = client.get_books(order_id)
    assert books is not None
    assert missing_reports(klarna, books.transactions[0]).reports == ()  # level-triggered: nothing more
    replay = client.report_event(tx.id, plan.reports[0], "USD")
    assert replay.ok and replay.already_processed


def test_conflicts_and_foreign_transactions_are_outcomes_not_exceptions(shop: Shop, client: SaleorClient) -> None:
    order_id, _ = shop.order()
    tx_id = shop.saleor.order(order_id)["transactions"][0]["id"]
    first = EventReport(EventType.CHARGE_SUCCESS, "cap-1", 4000, "Klarna capture cap-1")
    assert client.report_event(tx_id, first, "USD").ok
    conflict = client.report_event(tx_id, EventReport(EventType.CHARGE_SUCCESS, "cap-1", 3000, "x"), "USD")
    assert (conflict.ok, conflict.error_code) == (False, "INCORRECT_DETAILS")
    foreign = shop.saleor.add_transaction(order_id, name="Klarna", psp_reference="k-foreign", authorized="10.00")
    denied = client.report_event(foreign["id"], first, "USD")
    assert (denied.ok, denied.error_code) == (False, "PERMISSION_DENIED")
    books = client.get_books(order_id)
    assert books is not None
    owners = {t.psp_reference: t.owner.identifier if t.owner else None for t in books.transactions}
    assert owners["k-foreign"] == "com.example.klarna-payments"
