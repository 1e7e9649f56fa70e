"""End to end: Saleor's books follow Klarna (issue 9) and only the shop steers the payment (issue 11 item 1).

Signed webhooks from the fake Saleor -> app -> worker -> fake Klarna -> transaction events in Saleor,
on SQLite and PostgreSQL. The app is installed with HANDLE_PAYMENTS unless a test says otherwise.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from plugin.domain.model import Action, Options
from plugin.services import queue
from plugin.testing.saleor import OTHER_APP
from tests.functional.shop import SHOE, TEE, Shop

ALLOWED = "com.example.klarna-payments"


def install(shop: Shop, *, handle_payments: bool = True, **merchant: object) -> None:
    permissions = ("MANAGE_ORDERS", "HANDLE_PAYMENTS") if handle_payments else ("MANAGE_ORDERS",)
    assert shop.saleor.install(f"{shop.settings.public_base}/api/manifest", permissions=permissions).ok
    shop.configure(**merchant)


def _touch(shop: Shop, order_id: str) -> None:
    """What any order webhook does: enqueue the order's sync."""
    with shop.services.db.engine.begin() as conn:
        queue.enqueue(conn, shop.saleor.api_url, order_id)


def tx(shop: Shop, order_id: str, index: int = 0) -> dict:  # type: ignore[type-arg]
    return shop.saleor.order(order_id)["transactions"][index]  # type: ignore[no-any-return]


def amounts(shop: Shop, order_id: str, index: int = 0) -> tuple[float, float, float]:
    t = tx(shop, order_id, index)
    return t["authorizedAmount"]["amount"], t["chargedAmount"]["amount"], t["refundedAmount"]["amount"]


def psp_of(result: dict) -> str:  # type: ignore[type-arg]
    assert result["status"] == 200, result
    return str(json.loads(result["body"])["pspReference"])


def test_own_transaction_is_booked_through_capture_refund_and_cancel(shop: Shop) -> None:
    install(shop)
    order_id, kid = shop.order(shipping="10.00")
    tee, shoe = shop.line_ids(order_id)
    fulfillment = shop.saleor.fulfill(order_id, {tee: 2, shoe: 1}, tracking_number="T1")
    shop.sync()
    # A full capture: Saleor shows the order fully paid, nothing left authorized.
    order = shop.saleor.order(order_id)
    assert (order["chargeStatus"], order["isPaid"]) == ("FULL", True)
    assert amounts(shop, order_id) == (0.0, 140.0, 0.0)
    [capture] = shop.kstate(kid)["captures"]
    charge = next(e for e in tx(shop, order_id)["events"] if e["type"] == "CHARGE_SUCCESS")
    assert charge["pspReference"] == capture["capture_id"]
    # The summary is written from Klarna's state after the operations (not AUTHORIZED).
    assert shop.saleor.private_metadata(order_id)["klarna_om.status"] == "CAPTURED"
    # Everything comes back: goods and shipping refunded, and Saleor says so.
    shop.saleor.return_products(order_id, fulfillment, {tee: 2, shoe: 1})
    shop.sync()
    assert amounts(shop, order_id) == (0.0, 0.0, 140.0)
    assert shop.saleor.order(order_id)["chargeStatus"] == "NONE"
    # A rerun books nothing twice.
    reports = len(tx(shop, order_id)["events"])
    _touch(shop, order_id)
    shop.sync()
    assert len(tx(shop, order_id)["events"]) == reports

    # Cancel before any capture: nothing authorized any more.
    other_id, other_kid = shop.order()
    shop.saleor.cancel_order(other_id)
    shop.sync()
    assert shop.kstate(other_kid)["status"] == "CANCELLED"
    assert amounts(shop, other_id)[0] == 0.0
    assert any(e["type"] == "CANCEL_SUCCESS" for e in tx(shop, other_id)["events"])


def test_a_klarna_id_in_private_metadata_gets_its_transaction_with_klarnas_captures_booked(shop: Shop) -> None:
    install(shop)
    kid = shop.klarna.create_order(order_amount=13000, currency="USD")
    shop.klarna.portal_capture(kid, 9000)  # captured before the app ever saw the order
    order_id = shop.saleor.create_order(lines=[dict(TEE), dict(SHOE)], klarna_order_id=kid, klarna_via="metadata")
    assert shop.saleor.order(order_id)["transactions"] == []
    tee, _shoe = shop.line_ids(order_id)
    shop.saleor.fulfill(order_id, {tee: 1})  # any order event wakes the sync
    shop.sync()
    [created] = shop.saleor.order(order_id)["transactions"]
    assert (created["name"], created["pspReference"]) == ("Klarna", kid)
    assert created["createdBy"]["id"] == shop.saleor.app_id
    assert "portal" in created["externalUrl"] and kid in created["externalUrl"]
    # Klarna's existing capture is booked; it covers the shipment's value, so nothing is captured twice.
    assert created["chargedAmount"]["amount"] == shop.kstate(kid)["captured_amount"] / 100
    assert shop.kstate(kid)["captured_amount"] == 9000
    # A second run creates nothing more.
    shop.saleor.fulfill(order_id, {tee: 1})
    shop.sync()
    assert len(shop.saleor.order(order_id)["transactions"]) == 1


def test_another_apps_klarna_transaction_is_left_alone_unless_allowed(shop: Shop) -> None:
    install(shop)
    kid = shop.klarna.create_order(order_amount=13000, currency="USD")
    order_id = shop.saleor.create_order(lines=[dict(TEE), dict(SHOE)], klarna_via="none")
    shop.saleor.add_transaction(order_id, owner=OTHER_APP, psp_reference=kid, authorized="130.00")
    before = tx(shop, order_id)
    tee, shoe = shop.line_ids(order_id)
    shop.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    shop.sync()
    # Untouched: no Klarna call, no note, no metadata, no event.
    assert shop.klarna.requests == []
    assert shop.kstate(kid)["captured_amount"] == 0
    assert shop.saleor.notes(order_id) == [] and shop.saleor.private_metadata(order_id) == {}
    assert tx(shop, order_id)["events"] == before["events"]
    # Allowed in the settings: act with notes and metadata, never book on that app's transaction.
    shop.configure(options=Options(allowed_payment_apps=(ALLOWED,)))
    _touch(shop, order_id)
    shop.sync()
    assert shop.kstate(kid)["captured_amount"] == 13000
    assert len(shop.saleor.notes(order_id)) == 1
    assert tx(shop, order_id)["events"] == before["events"]
    assert len(shop.saleor.order(order_id)["transactions"]) == 1


def test_the_dashboard_buttons_end_to_end(shop: Shop) -> None:
    install(shop)
    order_id, kid = shop.order(shipping="10.00")
    tee, shoe = shop.line_ids(order_id)
    tx_id = tx(shop, order_id)["id"]
    # Charge 50.00 from the dashboard: captured in Klarna under the answered pspReference.
    psp = psp_of(shop.saleor.request_action(tx_id, "CHARGE", "50.00"))
    shop.sync()
    [capture] = shop.kstate(kid)["captures"]
    assert (capture["captured_amount"], capture["reference"]) == (5000, psp)
    t = tx(shop, order_id)
    assert (t["chargedAmount"]["amount"], t["chargePendingAmount"]["amount"], t["authorizedAmount"]["amount"]) == (
        50.0, 0.0, 90.0,
    )  # fmt: skip
    # Fulfilling everything afterwards captures the rest, never more than the order.
    fulfillment = shop.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    shop.sync()
    state = shop.kstate(kid)
    assert (state["captured_amount"], state["remaining_authorized_amount"]) == (14000, 0)
    assert [c["captured_amount"] for c in state["captures"]] == [5000, 9000]
    assert amounts(shop, order_id) == (0.0, 140.0, 0.0)
    assert shop.exceptions() == []
    # A refund granted with lines: Klarna gets that refund's lines.
    refund = shop.saleor.request_action(tx_id, "REFUND", granted_refund={"amount": "40.00", "lines": {tee: 2}})
    refund_psp = psp_of(refund)
    shop.sync()
    [klarna_refund] = shop.kstate(kid)["refunds"]
    assert (klarna_refund["refunded_amount"], klarna_refund["reference"]) == (4000, refund_psp)
    assert [(ln["reference"], ln["quantity"]) for ln in klarna_refund["order_lines"]] == [(TEE["sku"], 2)]
    assert amounts(shop, order_id) == (0.0, 100.0, 40.0)
    # A plain refund by amount; then returning the rest refunds only what remains (never beyond capture).
    psp_of(shop.saleor.request_action(tx_id, "REFUND", "30.00"))
    shop.sync()
    shop.saleor.return_products(order_id, fulfillment, {tee: 2, shoe: 1})
    shop.sync()
    state = shop.kstate(kid)
    assert state["refunded_amount"] <= state["captured_amount"]
    assert amounts(shop, order_id)[2] == state["refunded_amount"] / 100
    # An empty-bodied retry (Saleor's after a 5xx) is never a second operation.
    delivery = next(d for d, _ in reversed(shop.saleor.delivered) if d.event.startswith("TRANSACTION_"))
    counts = shop.klarna.counts()
    answer = shop.app.test_client().post(
        urlsplit(delivery.target_url).path, data=b"", headers={k: v for k, v in delivery.headers.items() if v}
    )
    assert answer.status_code == 400 and answer.get_json()["result"].endswith("_FAILURE")
    shop.sync()
    assert shop.klarna.counts() == counts


def test_a_charge_for_what_shipped_is_captured_with_the_shipments_lines(shop: Shop) -> None:
    # A merchant who captures with the dashboard's Capture button, not on fulfilment.
    install(shop, mapping={"CANCELED": Action.CANCEL})
    order_id, kid = shop.order(shipping="10.00")
    tee, shoe = shop.line_ids(order_id)
    tx_id = tx(shop, order_id)["id"]
    first = shop.saleor.fulfill(order_id, {tee: 2})
    shop.sync()
    assert shop.kstate(kid)["captures"] == []
    # Capture 50.00, exactly the first shipment (the tees and the shipping): Klarna gets its lines.
    psp = psp_of(shop.saleor.request_action(tx_id, "CHARGE", "50.00"))
    shop.sync()
    [capture] = shop.kstate(kid)["captures"]
    assert (capture["captured_amount"], capture["reference"]) == (5000, first)
    assert [(ln["reference"], ln["quantity"]) for ln in capture["order_lines"]] == [(TEE["sku"], 2), ("shipping", 1)]
    t = tx(shop, order_id)
    charges = [(e["pspReference"], e["amount"]["amount"]) for e in t["events"] if e["type"] == "CHARGE_SUCCESS"]
    assert charges == [(psp, 50.0)] and t["chargePendingAmount"]["amount"] == 0.0
    # The shoe ships; Capture with Saleor's default amount (what remains authorized) takes its lines.
    second = shop.saleor.fulfill(order_id, {shoe: 1})
    shop.sync()
    psp_of(shop.saleor.request_action(tx_id, "CHARGE"))
    shop.sync()
    state = shop.kstate(kid)
    assert [(c["reference"], c["captured_amount"]) for c in state["captures"]] == [(first, 5000), (second, 9000)]
    assert [ln["reference"] for ln in state["captures"][1]["order_lines"]] == [SHOE["sku"]]
    assert amounts(shop, order_id) == (0.0, 140.0, 0.0) and shop.exceptions() == []


def test_the_cancel_button_voids_the_authorization(shop: Shop) -> None:
    install(shop)
    order_id, kid = shop.order()
    psp = psp_of(shop.saleor.request_action(tx(shop, order_id)["id"], "CANCEL"))
    shop.sync()
    assert shop.kstate(kid)["status"] == "CANCELLED" and shop.performed("cancels") == 1
    cancel = next(e for e in tx(shop, order_id)["events"] if e["type"] == "CANCEL_SUCCESS")
    assert cancel["pspReference"] == psp and amounts(shop, order_id)[0] == 0.0


def test_the_cancel_button_after_the_order_was_cancelled_is_answered_as_done(shop: Shop) -> None:
    install(shop)
    order_id, kid = shop.order()
    shop.saleor.cancel_order(order_id)
    shop.sync()  # the order's status cancels the authorization, booked under the Klarna order id
    assert shop.kstate(kid)["status"] == "CANCELLED" and amounts(shop, order_id)[0] == 0.0
    # Pressed afterwards (Saleor asks for what remains authorized: 0): recorded, then answered as done.
    psp = psp_of(shop.saleor.request_action(tx(shop, order_id)["id"], "CANCEL"))
    shop.sync()
    t = tx(shop, order_id)
    done = [e for e in t["events"] if e["pspReference"] == psp and e["type"] != "CANCEL_REQUEST"]
    assert [(e["type"], e["amount"]["amount"]) for e in done] == [("CANCEL_SUCCESS", 0.0)]
    assert (t["canceledAmount"]["amount"], t["cancelPendingAmount"]["amount"]) == (130.0, 0.0)
    assert shop.performed("cancels") == 1 and shop.exceptions() == []
    _touch(shop, order_id)  # any later sync of the order books nothing more
    shop.sync()
    assert tx(shop, order_id)["events"] == t["events"] and shop.exceptions() == []


def test_a_charge_beyond_what_klarna_holds_is_a_failure_not_an_operation(shop: Shop) -> None:
    install(shop)
    order_id, kid = shop.order()
    shop.klarna.portal_capture(kid, 10000)  # Klarna holds only 30.00 more; Saleor does not know yet
    psp = psp_of(shop.saleor.request_action(tx(shop, order_id)["id"], "CHARGE", "50.00"))
    shop.sync()
    assert shop.kstate(kid)["captured_amount"] == 10000
    failure = next(e for e in tx(shop, order_id)["events"] if e["type"] == "CHARGE_FAILURE")
    assert failure["pspReference"] == psp and "30.00" in failure["message"]


def test_a_second_order_naming_the_same_klarna_order_is_refused(shop: Shop) -> None:
    install(shop)
    kid = shop.klarna.create_order(order_amount=4000, currency="USD")
    first = shop.saleor.create_order(lines=[dict(TEE)], klarna_order_id=kid, klarna_via="metadata")
    shop.sync()  # the first order to be synced is bound to the Klarna order
    assert tx(shop, first)["pspReference"] == kid
    second = shop.saleor.create_order(lines=[dict(TEE)], klarna_order_id=kid, klarna_via="metadata")
    shop.sync()
    shop.saleor.cancel_order(second)
    shop.sync()
    assert shop.kstate(kid)["status"] == "AUTHORIZED" and shop.performed("cancels") == 0
    assert [e.error_code for e in shop.exceptions()] == ["KLARNA_ORDER_BOUND_ELSEWHERE"]
    assert shop.saleor.order(second)["transactions"] == []
    assert "not acted on" in shop.saleor.notes(second)[0]


def test_a_klarna_order_that_does_not_match_the_shop_order_is_refused(shop: Shop) -> None:
    install(shop)
    euros = shop.klarna.create_order(order_amount=13000, currency="EUR")
    order_id = shop.saleor.create_order(lines=[dict(TEE), dict(SHOE)], klarna_order_id=euros, klarna_via="metadata")
    tee, shoe = shop.line_ids(order_id)
    shop.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    shop.sync()
    big = shop.klarna.create_order(order_amount=99000, currency="USD")
    other = shop.saleor.create_order(lines=[dict(TEE), dict(SHOE)], klarna_order_id=big, klarna_via="metadata")
    tee, shoe = shop.line_ids(other)
    shop.saleor.fulfill(other, {tee: 2, shoe: 1})
    shop.sync()
    assert shop.performed("captures") == 0
    assert sorted(e.error_code for e in shop.exceptions()) == ["AMOUNT_UNEXPLAINED", "CURRENCY_MISMATCH"]
    assert shop.saleor.order(order_id)["transactions"] == [] and shop.saleor.order(other)["transactions"] == []


def test_a_button_on_a_klarna_order_that_does_not_match_gets_a_failure_not_a_pending_request(shop: Shop) -> None:
    install(shop)
    big = shop.klarna.create_order(order_amount=99000, currency="USD")  # Klarna holds more than the order
    order_id = shop.saleor.create_order(lines=[dict(TEE), dict(SHOE)], klarna_order_id=big)
    psp = psp_of(shop.saleor.request_action(tx(shop, order_id)["id"], "CHARGE", "50.00"))
    shop.sync()
    assert shop.performed("captures") == 0
    [failure] = [e for e in tx(shop, order_id)["events"] if e["pspReference"] == psp and e["type"] == "CHARGE_FAILURE"]
    assert f"Klarna order {big} is not acted on" in failure["message"]
    t = tx(shop, order_id)
    assert (t["chargePendingAmount"]["amount"], t["chargedAmount"]["amount"]) == (0.0, 0.0)
    assert [e.error_code for e in shop.exceptions()] == ["AMOUNT_UNEXPLAINED"]


def test_an_install_without_handle_payments_works_as_before(shop: Shop) -> None:
    install(shop, handle_payments=False)
    order_id, kid = shop.order()
    before = tx(shop, order_id)["events"]
    tee, shoe = shop.line_ids(order_id)
    shop.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    shop.sync()
    assert shop.kstate(kid)["captured_amount"] == 13000
    assert len(shop.saleor.notes(order_id)) == 1 and shop.exceptions() == []
    assert shop.saleor.private_metadata(order_id)["klarna_om.status"] == "CAPTURED"
    assert tx(shop, order_id)["events"] == before  # Saleor refuses the reports: nothing booked, nothing broken
    # A Klarna id in private metadata only: no transaction can be created; the capture still happens.
    kid2 = shop.klarna.create_order(order_amount=4000, currency="USD")
    meta = shop.saleor.create_order(lines=[dict(TEE)], klarna_order_id=kid2, klarna_via="metadata")
    (line,) = shop.line_ids(meta)
    shop.saleor.fulfill(meta, {line: 2})
    shop.sync()
    assert shop.kstate(kid2)["captured_amount"] == 4000 and shop.saleor.order(meta)["transactions"] == []


def test_portal_capture_and_refund_are_booked_on_the_apps_own_transaction_once(shop: Shop) -> None:
    install(shop)
    order_id, kid = shop.order()
    assert tx(shop, order_id)["createdBy"]["id"] == shop.saleor.app_id  # the app owns the Klarna transaction
    shop.sync()
    # The merchant captures the shoe's 90.00 in Klarna's portal, outside the app; any order event wakes the sync.
    capture_id = shop.klarna.portal_capture(kid, 9000)
    _touch(shop, order_id)
    shop.sync()
    assert amounts(shop, order_id) == (40.0, 90.0, 0.0)
    [charge] = [e for e in tx(shop, order_id)["events"] if e["type"] == "CHARGE_SUCCESS"]
    assert (charge["pspReference"], charge["amount"]["amount"]) == (capture_id, 90.0)
    captured = "seen in Klarna: captured 90.00 USD outside this app"
    assert len([n for n in shop.saleor.notes(order_id) if captured in n]) == 1
    # A second sync adds no event, no note and no Klarna operation.
    events, notes, counts = tx(shop, order_id)["events"], shop.saleor.notes(order_id), shop.klarna.counts()
    _touch(shop, order_id)
    shop.sync()
    assert tx(shop, order_id)["events"] == events
    assert shop.saleor.notes(order_id) == notes and shop.klarna.counts() == counts
    # A portal refund of 20.00 likewise: booked as REFUND_SUCCESS under the refund's id, noted once.
    refund_id = shop.klarna.portal_refund(kid, 2000)
    counts = shop.klarna.counts()  # the fake counts the portal's operations too
    for _ in range(2):
        _touch(shop, order_id)
        shop.sync()
    assert amounts(shop, order_id) == (40.0, 70.0, 20.0)
    [refund] = [e for e in tx(shop, order_id)["events"] if e["type"] == "REFUND_SUCCESS"]
    assert (refund["pspReference"], refund["amount"]["amount"]) == (refund_id, 20.0)
    refunded = "seen in Klarna: refunded 20.00 USD outside this app"
    assert len([n for n in shop.saleor.notes(order_id) if refunded in n]) == 1
    assert len([n for n in shop.saleor.notes(order_id) if captured in n]) == 1
    assert len([e for e in tx(shop, order_id)["events"] if e["type"] == "CHARGE_SUCCESS"]) == 1
    assert shop.klarna.counts() == counts  # no operation by the app
