"""The dashboard's Capture, Refund and Cancel buttons reach the app (issue 9 item 3, protocol §5.4).

The fake Saleor builds each TRANSACTION_*_REQUESTED from the app's own subscription, signs it, and
applies the app's answer exactly as Saleor 3.23 does (pending, failure, empty-bodied retries).
"""

from __future__ import annotations

import json
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select

from plugin.db import Database
from plugin.db.models import Base, Delivery, Job, PaymentRequest
from plugin.domain.transactions import ActionKind
from plugin.services import payment_requests
from plugin.services.payment_requests import RequestState
from plugin.testing.saleor import OTHER_APP
from plugin.testing.saleor import Delivery as SaleorDelivery
from tests.functional.shop import Shop


def _rows(shop: Shop) -> dict[str, int]:
    with shop.services.db.transaction() as session:
        return {t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


def _requests(shop: Shop) -> list[PaymentRequest]:
    with shop.services.db.transaction() as session:
        return list(session.scalars(select(PaymentRequest).order_by(PaymentRequest.id)))


def _tx(shop: Shop, order_id: str) -> dict:  # type: ignore[type-arg]  # the fake's JSON view of a transaction
    return shop.saleor.order(order_id)["transactions"][0]  # type: ignore[no-any-return]  # the fake's JSON view of a transaction


def _repost(shop: Shop, delivery: SaleorDelivery, body: bytes | None = None, **headers: str):  # type: ignore[no-untyped-def]  # a Flask test response
    merged = {**delivery.headers, **headers}
    return shop.app.test_client().post(
        urlsplit(delivery.target_url).path,
        data=delivery.body if body is None else body,
        headers={k: v for k, v in merged.items() if v},
    )


def _last_action_delivery(shop: Shop) -> SaleorDelivery:
    return next(d for d, _ in reversed(shop.saleor.delivered) if d.event.startswith("TRANSACTION_"))


def test_a_charge_is_recorded_answered_with_its_psp_reference_and_left_pending(shop: Shop) -> None:
    shop.install()
    order_id, klarna_id = shop.order()
    tx = _tx(shop, order_id)
    result = shop.saleor.request_action(tx["id"], "CHARGE", "50.00")
    assert result["status"] == 200
    psp = json.loads(result["body"])["pspReference"]
    assert json.loads(result["body"]) == {"pspReference": psp}  # async: no result
    [row] = _requests(shop)
    assert (row.action, row.amount, row.currency, row.klarna_order_id, row.psp_reference, row.state) == (
        "CHARGE", 5000, "USD", klarna_id, psp, "recorded",
    )  # fmt: skip
    assert row.request_key.startswith("event:") and row.order_id == order_id and row.transaction_id == tx["id"]
    with shop.services.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.order_id == order_id)) == 1
    # Saleor counts it as pending under the app's pspReference until the outcome is reported.
    after = _tx(shop, order_id)
    assert (after["authorizedAmount"]["amount"], after["chargePendingAmount"]["amount"]) == (80.0, 50.0)
    assert after["events"][0]["type"] == "CHARGE_REQUEST" and after["events"][0]["pspReference"] == psp
    assert shop.klarna.requests == []  # Klarna is the worker's business, never the webhook's


def test_the_same_delivery_twice_is_one_request_with_one_psp_reference(shop: Shop) -> None:
    shop.install()
    order_id, _ = shop.order()
    first = shop.saleor.request_action(_tx(shop, order_id)["id"], "CHARGE", "20.00")
    again = _repost(shop, _last_action_delivery(shop))
    assert again.status_code == 200 and again.get_json() == json.loads(first["body"])
    assert len(_requests(shop)) == 1


def test_an_empty_bodied_retry_records_nothing_and_is_no_success(shop: Shop) -> None:
    shop.install()
    order_id, _ = shop.order()
    shop.saleor.request_action(_tx(shop, order_id)["id"], "CHARGE", "20.00")
    before = _rows(shop)
    signature = shop.saleor.sign(b"")
    response = _repost(shop, _last_action_delivery(shop), b"", **{"Saleor-Signature": signature})
    assert response.status_code == 400
    assert response.get_json()["result"] == "CHARGE_FAILURE" and "pspReference" not in response.get_json()
    assert _rows(shop) == before


def test_impossible_requests_get_the_failure_result_and_record_nothing(shop: Shop) -> None:
    shop.install()
    order_id, _ = shop.order()  # 130.00 authorized
    tx_id = _tx(shop, order_id)["id"]
    before = _rows(shop)["payment_requests"]
    result = shop.saleor.request_action(tx_id, "CHARGE", "200.00")
    assert result["status"] == 200 and result["event"]["type"] == "CHARGE_FAILURE"
    assert "exceeds what remains authorized" in result["event"]["message"]
    result = shop.saleor.request_action(tx_id, "REFUND", "10.00")  # nothing captured yet
    assert result["event"]["type"] == "REFUND_FAILURE" and "exceeds what was captured" in result["event"]["message"]
    result = shop.saleor.request_action(tx_id, "CHARGE", "10.00", by=OTHER_APP)  # another app pressed it (gql-85)
    assert result["event"]["type"] == "CHARGE_FAILURE" and "another app" in result["event"]["message"]
    assert _rows(shop)["payment_requests"] == before
    assert _tx(shop, order_id)["authorizedAmount"]["amount"] == 130.0


def test_refunds_keep_the_granted_refund_lines_and_a_cancel_takes_what_remains(shop: Shop) -> None:
    result = shop.saleor.install(
        f"{shop.settings.public_base}/api/manifest", permissions=("MANAGE_ORDERS", "HANDLE_PAYMENTS")
    )
    assert result.ok
    shop.configure()
    order_id, _ = shop.order()
    tx_id = _tx(shop, order_id)["id"]
    shop.saleor.request_action(tx_id, "CHARGE", "130.00")
    charge = _requests(shop)[0]
    # The worker would capture and report; book it directly as the app would.
    report = """mutation($id: ID!, $psp: String!) { transactionEventReport(id: $id, type: CHARGE_SUCCESS,
      amount: 130.0, pspReference: $psp) { errors { code } } }"""
    shop.saleor.handle_graphql(
        json.dumps({"query": report, "variables": {"id": tx_id, "psp": charge.psp_reference}}).encode(),
        {"Authorization": f"Bearer {shop.saleor.app_token}"},
    )
    tee = shop.line_ids(order_id)[0]
    granted = {"amount": "20.00", "lines": {tee: 1}, "shipping": True}
    assert shop.saleor.request_action(tx_id, "REFUND", granted_refund=granted)["status"] == 200
    assert shop.saleor.request_action(tx_id, "REFUND", "5.00")["status"] == 200
    _, granted_row, plain_row = _requests(shop)
    details = json.loads(granted_row.details)["granted_refund"]
    assert details["lines"] == [{"order_line_id": tee, "quantity": 1}] and details["shipping_included"] is True
    assert (granted_row.amount, plain_row.amount, json.loads(plain_row.details)) == (2000, 500, {})

    other_id, _ = shop.order()
    assert shop.saleor.request_action(_tx(shop, other_id)["id"], "CANCEL")["status"] == 200
    cancel = _requests(shop)[-1]
    assert (cancel.action, cancel.amount) == ("CANCEL", 13000)
    with shop.services.db.transaction() as session:
        open_ = payment_requests.open_requests(session, shop.saleor.api_url, order_id)
        assert [r.action for r in open_] == [ActionKind.CHARGE, ActionKind.REFUND, ActionKind.REFUND]
        payment_requests.mark(session, open_[0].id, RequestState.REPORTED)
    with shop.services.db.transaction() as session:
        assert len(payment_requests.open_requests(session, shop.saleor.api_url, order_id)) == 2


def test_bad_deliveries_are_4xx_without_a_success_body_and_leave_nothing(shop: Shop) -> None:
    shop.install()
    order_id, _ = shop.order()
    shop.saleor.request_action(_tx(shop, order_id)["id"], "CHARGE", "1.00")
    delivery = _last_action_delivery(shop)
    before = _rows(shop)
    forged = _repost(
        shop, delivery, **{"Saleor-Signature": "eyJhbGciOiJSUzI1NiIsImI2NCI6ZmFsc2UsImNyaXQiOlsiYjY0Il19..AAAA"}
    )
    other = json.loads(delivery.body)
    other["recipient"]["id"] = "QXBwOjk5"
    body = json.dumps(other).encode()
    wrong = _repost(shop, delivery, body, **{"Saleor-Signature": shop.saleor.sign(body)})
    junk = _repost(shop, delivery, b"[1]", **{"Saleor-Signature": shop.saleor.sign(b"[1]")})
    for response, status in ((forged, 401), (wrong, 403), (junk, 400)):
        assert response.status_code == status
        assert "pspReference" not in response.get_json() and not str(response.get_json().get("result", "")).endswith(
            "_SUCCESS"
        )
    assert _rows(shop) == before


def test_a_database_outage_is_a_failure_result_never_a_5xx(shop: Shop) -> None:
    shop.install()
    order_id, _ = shop.order()
    shop.saleor.request_action(_tx(shop, order_id)["id"], "CHARGE", "1.00")
    delivery = _last_action_delivery(shop)
    shop.services.db = Database("postgresql://postgres@127.0.0.1:1/none")
    response = _repost(shop, delivery)
    assert response.status_code == 200 and response.get_json()["result"] == "CHARGE_FAILURE"


def test_one_klarna_order_binds_one_saleor_order(shop: Shop) -> None:
    shop.install()
    url = shop.saleor.api_url
    with shop.services.db.transaction() as session:
        assert payment_requests.bind(session, url, "k-1", "order-1") is None
        assert payment_requests.bind(session, url, "k-1", "order-1") is None  # level-triggered
        stolen = payment_requests.bind(session, url, "k-1", "order-2")
        swapped = payment_requests.bind(session, url, "k-2", "order-1")
    assert stolen is not None and "order-1" in stolen.message
    assert swapped is not None and "k-1" in swapped.message
    with shop.services.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0


def test_two_quick_presses_of_the_same_button_are_two_requests(shop: Shop) -> None:
    shop.install()
    order_id, _ = shop.order()
    tx_id = _tx(shop, order_id)["id"]
    with shop.saleor._lock:  # another press of Capture 10.00 is still unanswered when this payload is built
        _order, tx = shop.saleor._find_transaction(tx_id)  # type: ignore[misc]  # the transaction exists: the test created it
        tx["events"].append(shop.saleor._tx_event("CHARGE_REQUEST", "", Decimal("10.00"), "", None))
    first = shop.saleor.request_action(tx_id, "CHARGE", "10.00")
    assert first["status"] == 200
    second = shop.saleor.request_action(tx_id, "CHARGE", "10.00")
    assert second["status"] == 200
    rows = _requests(shop)
    assert len(rows) == 2 and rows[0].psp_reference != rows[1].psp_reference
    assert all(r.request_key.startswith("body:") for r in rows)


def test_an_unexpected_error_is_a_failure_result_not_a_500(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    shop.install()
    order_id, _ = shop.order()

    def broken(*_args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(payment_requests, "record", broken)
    result = shop.saleor.request_action(_tx(shop, order_id)["id"], "CHARGE", "1.00")
    assert result["status"] == 200 and result["event"]["type"] == "CHARGE_FAILURE"
    assert _requests(shop) == []
