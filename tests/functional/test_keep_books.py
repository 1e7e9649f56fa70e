"""keep_books against the fake Saleor: create and book, close dashboard requests, leave foreign books alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest

from plugin.domain.model import KlarnaCapture, KlarnaOrder, KlarnaOrderId
from plugin.domain.transactions import AppRef, SourceKind, resolve_source
from plugin.saleor.client import SaleorClient
from plugin.services import payment_requests
from plugin.services.books import BooksResult, SaleorBooks, keep_books
from plugin.services.merchant import SettingsInvalid, validate
from plugin.services.payment_requests import RequestState
from tests.functional.shop import Shop


@pytest.fixture
def saleor(shop: Shop) -> Iterator[SaleorClient]:
    assert shop.saleor.install(
        f"{shop.settings.public_base}/api/manifest", permissions=("MANAGE_ORDERS", "HANDLE_PAYMENTS")
    ).ok
    shop.configure()
    client = SaleorClient(shop.saleor.api_url, shop.saleor.app_token or "")
    yield client
    client.close()


def klarna_order(klarna_id: str, amount: int, captures: tuple[KlarnaCapture, ...] = ()) -> KlarnaOrder:
    captured = sum(c.amount for c in captures)
    status = "AUTHORIZED" if not captured else ("CAPTURED" if captured == amount else "PART_CAPTURED")
    return KlarnaOrder(
        id=KlarnaOrderId(klarna_id), status=status, fraud_status="ACCEPTED", currency="USD", order_amount=amount,
        captured=captured, refunded=0, remaining=amount - captured, expires_at=None, captures=captures,
    )  # fmt: skip


def source_of(shop: Shop, saleor: SaleorClient, order_id: str, **extra: object):  # type: ignore[no-untyped-def]  # returns resolve_source's result
    books = saleor.get_books(order_id)
    assert books is not None
    me = AppRef(shop.saleor.app_id or "", "app.klarna-om.saleor")
    return resolve_source(transactions=books.transactions, me=me, private_klarna_id=books.private_klarna_id, **extra)  # type: ignore[arg-type]  # extra keyword arguments pass through untyped


def test_a_metadata_order_gets_its_transaction_and_is_fully_paid_after_a_full_capture(
    shop: Shop, saleor: SaleorClient
) -> None:
    port: SaleorBooks = saleor  # the adapter implements the port
    order_id = shop.saleor.create_order(
        lines=[{"name": "Tee", "quantity": 1, "unit_gross": "40.00"}], klarna_via="metadata", klarna_order_id="k-40"
    )
    source = source_of(shop, saleor, order_id)
    assert source.kind is SourceKind.CREATE
    klarna = klarna_order("k-40", 4000, (KlarnaCapture("cap-1", "Fulfillment:1", 4000),))
    result = keep_books(port, order_id=order_id, source=source, klarna=klarna, portal_url="https://portal/k-40")
    assert result.created and len(result.reported) == 1
    order = shop.saleor.order(order_id)
    assert (order["chargeStatus"], order["isPaid"], order["totalAuthorized"]["amount"]) == ("FULL", True, 0.0)
    # The next run finds its own transaction and has nothing to say.
    again = keep_books(port, order_id=order_id, source=source_of(shop, saleor, order_id), klarna=klarna)
    assert (again.created, again.reported) == (False, ())


def test_a_dashboard_charge_is_closed_under_its_psp_reference_and_a_refused_one_as_a_failure(
    shop: Shop, saleor: SaleorClient
) -> None:
    order_id, klarna_id = shop.order()
    tx_id = shop.saleor.order(order_id)["transactions"][0]["id"]
    psp = json.loads(shop.saleor.request_action(tx_id, "CHARGE", "50.00")["body"])["pspReference"]
    shop.saleor.request_action(tx_id, "CHARGE", "10.00")
    with shop.services.db.transaction() as session:
        charge, refused = payment_requests.open_requests(session, shop.saleor.api_url, order_id)
        payment_requests.mark(session, refused.id, RequestState.FAILED, "CAPTURE_NOT_ALLOWED")
    refused = replace(refused, state=RequestState.FAILED, reason="CAPTURE_NOT_ALLOWED")
    # The worker captured 50.00 for the request, with the request's pspReference as Klarna's reference.
    klarna = klarna_order(klarna_id or "", 13000, (KlarnaCapture("cap-9", psp, 5000),))
    result = keep_books(
        saleor, order_id=order_id, source=source_of(shop, saleor, order_id), klarna=klarna, requests=[charge, refused]
    )
    assert sorted(result.settled) == sorted([charge.id, refused.id])
    assert [r.psp_reference for r in result.reported] == [psp, refused.psp_reference]
    tx = shop.saleor.order(order_id)["transactions"][0]
    assert (tx["chargedAmount"]["amount"], tx["chargePendingAmount"]["amount"]) == (50.0, 0.0)
    assert tx["authorizedAmount"]["amount"] == 80.0  # the refused 10.00 is authorized again


def test_another_apps_klarna_transaction_is_never_touched(shop: Shop, saleor: SaleorClient) -> None:
    order_id = shop.saleor.create_order(
        lines=[{"name": "Tee", "quantity": 1, "unit_gross": "40.00"}], klarna_via="none"
    )
    foreign = shop.saleor.add_transaction(order_id, name="Klarna", psp_reference="k-f", authorized="40.00")
    before = shop.saleor.order(order_id)
    source = source_of(shop, saleor, order_id)
    assert source.kind is SourceKind.FOREIGN and not source.acts
    allowed = source_of(shop, saleor, order_id, allowed_apps=frozenset({"com.example.klarna-payments"}))
    assert allowed.kind is SourceKind.FOREIGN_ALLOWED and allowed.klarna_order_id == "k-f"
    klarna = klarna_order("k-f", 4000, (KlarnaCapture("cap-1", None, 4000),))
    for src in (source, allowed):  # FOREIGN_ALLOWED acts with notes and metadata only
        assert keep_books(saleor, order_id=order_id, source=src, klarna=klarna) == BooksResult()
    assert shop.saleor.order(order_id)["transactions"] == before["transactions"]
    assert foreign["events"][-1]["type"] == "AUTHORIZATION_SUCCESS"


def test_the_allowed_payment_apps_setting_round_trips_and_refuses_junk(shop: Shop) -> None:
    shop.install()
    doc = {"channel": "*", "username": "PK_test", "password": "secret"}
    settings = validate({**doc, "options": {"allowed_payment_apps": ["com.example.klarna-payments"]}})
    with shop.services.db.transaction() as session:
        shop.services.store.save(session, shop.saleor.api_url, settings)
    with shop.services.db.transaction() as session:
        stored = shop.services.store.get(session, shop.saleor.api_url, "default-channel")
    assert stored is not None and stored.options.allowed_payment_apps == ("com.example.klarna-payments",)
    for junk in ("com.example", [""], ["has space"], [1], ["x"] * 21):
        with pytest.raises(SettingsInvalid) as refused:
            validate({**doc, "options": {"allowed_payment_apps": junk}})
        assert "options.allowed_payment_apps" in refused.value.errors
