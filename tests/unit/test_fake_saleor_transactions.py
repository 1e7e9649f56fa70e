"""The fake Saleor's transactions replay samples 27-76 and gql-36...99 (INDEX.md, protocol §5.4)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from plugin.testing.saleor import STAFF_USER, FakeSaleor
from tests.unit.test_fake_saleor import ORDER_A_LINES, SAMPLES, differences, gql, needs_samples, parse_http

SYNC_QUERY = (
    json.loads((SAMPLES / "gql-37-webhookCreate-transaction-actions.request.json").read_text())["variables"]["input"][
        "query"
    ]
    if SAMPLES.is_dir()
    else ""
)
TX_CREATE = json.loads((SAMPLES / "gql-42-transactionCreate-C.request.json").read_text()) if SAMPLES.is_dir() else {}
REPORT = """mutation($id: ID!, $type: TransactionEventTypeEnum!, $psp: String!, $amount: PositiveDecimal!, $msg: String) {
  transactionEventReport(id: $id, type: $type, amount: $amount, pspReference: $psp, message: $msg) {
    alreadyProcessed transactionEvent { type pspReference } errors { field code message } } }"""
pytestmark = needs_samples


class TxApp:
    """An app like the receiver of the second capture: a manifest with the sample's sync webhook,
    answering each transaction webhook with the next rule of ``answers``."""

    base = "http://tx.test"

    def __init__(self) -> None:
        self.answers: list[tuple[int, bytes]] = []
        self.received: list[tuple[dict, bytes]] = []

    def manifest(self) -> bytes:
        return json.dumps(
            {
                "id": "com.example.klarna-om-tx",
                "name": "Klarna OM (transactions)",
                "version": "1.0.0",
                "permissions": ["MANAGE_ORDERS", "HANDLE_PAYMENTS"],
                "tokenTargetUrl": f"{self.base}/api/register",
                "webhooks": [
                    {
                        "name": "Klarna transaction actions",
                        "targetUrl": f"{self.base}/api/webhooks/transaction-actions",
                        "syncEvents": [
                            "TRANSACTION_CHARGE_REQUESTED",
                            "TRANSACTION_REFUND_REQUESTED",
                            "TRANSACTION_CANCELATION_REQUESTED",
                        ],
                        "query": SYNC_QUERY,
                        "isActive": True,
                    }
                ],
            }
        ).encode()

    def __call__(self, method: str, url: str, headers: dict, body: bytes | None) -> tuple[int, dict, bytes]:
        path = url[len(self.base) :]
        if path == "/api/manifest":
            return 200, {}, self.manifest()
        if path == "/api/register":
            return 200, {}, b'{"success": true}'
        self.received.append((headers, body or b""))
        status, answer = self.answers.pop(0) if self.answers else (200, b"{}")
        return status, {"Content-Type": "application/json"}, answer


@pytest.fixture
def tx_saleor() -> tuple[FakeSaleor, TxApp]:
    app = TxApp()
    fake = FakeSaleor(app_transport=app)
    assert fake.install(f"{app.base}/api/manifest", permissions=("MANAGE_ORDERS", "HANDLE_PAYMENTS")).ok
    return fake, app


def order_with_transaction(fake: FakeSaleor, number: int, lines: list[dict], psp: str) -> tuple[str, str]:
    order_id = fake.create_order(lines=lines, klarna_via="none", number=number, user_email="jose.mcdaniel@example.com")
    total = fake.order(order_id)["total"]["gross"]["amount"]
    variables = {**TX_CREATE["variables"], "id": order_id, "psp": psp, "amount": total}
    status, body = gql(fake, TX_CREATE["query"], variables, token=fake.app_token)
    assert status == 200 and body["data"]["transactionCreate"]["errors"] == []
    return order_id, body["data"]["transactionCreate"]["transaction"]["id"]


def sample_body(number: int) -> dict:
    (path,) = SAMPLES.glob(f"{number:02d}-*.http")
    return normalized(json.loads(parse_http(path)[2]))


def normalized(payload: dict) -> dict:
    """Saleor keeps a transaction's actions as a set: their order is not part of the protocol."""
    if isinstance(payload.get("transaction"), dict):
        payload["transaction"]["actions"] = sorted(payload["transaction"]["actions"])
    return payload


def amounts(fake: FakeSaleor, order_id: str) -> dict[str, float]:
    tx = fake.order(order_id)["transactions"][0]
    keys = ("authorizedAmount", "chargedAmount", "refundedAmount", "canceledAmount", "chargePendingAmount",
            "refundPendingAmount", "cancelPendingAmount")  # fmt: skip
    return {k.removesuffix("Amount"): tx[k]["amount"] for k in keys}


def test_transaction_create_answers_like_gql_42(tx_saleor):
    fake, _ = tx_saleor
    order_id = fake.create_order(lines=ORDER_A_LINES, klarna_via="none", number=32)
    variables = {**TX_CREATE["variables"], "id": order_id}
    ours = gql(fake, TX_CREATE["query"], variables, token=fake.app_token)[1]
    sample = json.loads((SAMPLES / "gql-42-transactionCreate-C.response.json").read_text())
    assert differences(ours, sample) == []


def test_order_c_sync_charge_async_granted_refund_sync_refund_async_cancel(tx_saleor):
    fake, app = tx_saleor
    order_id, tx_id = order_with_transaction(fake, 32, ORDER_A_LINES, "445995f4-f83c-4098-80a8-31efee9d0bbc")
    app.answers.append((200, json.dumps({
        "pspReference": "8213c477-877f-4354-823d-4690e3ca83c4", "result": "CHARGE_SUCCESS", "amount": 50.0,
        "message": "Klarna capture 8213c477-877f-4354-823d-4690e3ca83c4", "actions": ["CHARGE", "CANCEL", "REFUND"],
    }).encode()))  # fmt: skip
    result = fake.request_action(tx_id, "CHARGE", "50.00")
    headers, body = app.received[-1]
    assert headers["Saleor-Event"] == "transaction_charge_requested"
    assert differences(normalized(json.loads(body)), sample_body(30)) == []
    assert result["event"]["type"] == "CHARGE_SUCCESS"
    assert amounts(fake, order_id)["authorized"] == 80.0 and amounts(fake, order_id)["charged"] == 50.0

    tee = fake.order(order_id)["lines"][0]["id"]
    refund = {
        "amount": "20.00",
        "lines": {tee: 1},
        "shipping": True,
        "reason": "Returned: Monospace Tee XL x1 (damaged)",
        "line_reason": "Damaged",
    }
    app.answers.append((200, b'{"pspReference": "96100775-d587-4fb7-930c-bef22afae320"}'))
    fake.request_action(tx_id, "REFUND", granted_refund=refund)
    got = json.loads(app.received[-1][1])
    assert differences(normalized(got), sample_body(44)) == []
    assert amounts(fake, order_id) | {} == {**amounts(fake, order_id), "charged": 30.0, "refundPending": 20.0}
    args = {
        "id": tx_id, "type": "REFUND_SUCCESS", "psp": "96100775-d587-4fb7-930c-bef22afae320", "amount": 20.0,
        "msg": "Klarna refund completed",
    }  # fmt: skip
    gql(fake, REPORT, args, token=fake.app_token)
    assert (amounts(fake, order_id)["refunded"], amounts(fake, order_id)["refundPending"]) == (20.0, 0.0)

    refund_id = "1a5e64f5-af7c-416e-b756-3e27d259a0ff"
    answer = {
        "pspReference": refund_id,
        "result": "REFUND_SUCCESS",
        "amount": 10.0,
        "message": f"Klarna refund {refund_id}",
    }
    app.answers.append((200, json.dumps(answer).encode()))
    fake.request_action(tx_id, "REFUND", "10.00", reason="Goodwill: late delivery")
    plain = json.loads(app.received[-1][1])
    assert differences(normalized(plain), sample_body(49)) == []  # grantedRefund null plus "errors" (3.23.28)
    assert [e["message"] for e in plain["errors"]] == [e["message"] for e in sample_body(49)["errors"]]
    assert (amounts(fake, order_id)["charged"], amounts(fake, order_id)["refunded"]) == (20.0, 30.0)
    order = fake.order(order_id)  # gql-69: 80 authorized + 20 charged < 130 - 20 granted
    assert (order["chargeStatus"], order["authorizeStatus"], order["grantedRefunds"][0]["status"]) == (
        "PARTIAL", "PARTIAL", "SUCCESS",
    )  # fmt: skip

    app.answers.append((200, b'{"pspReference": "44033011-f3c2-4800-b08f-ab7f80985459"}'))
    fake.auto_deliver = False
    fake.request_action(tx_id, "CANCEL")  # no amount: the whole authorization (80.00)
    assert differences(normalized(json.loads(app.received[-1][1])), sample_body(52)) == []
    assert (amounts(fake, order_id)["authorized"], amounts(fake, order_id)["cancelPending"]) == (0.0, 80.0)
    fake.outbox.clear()
    args = {"id": tx_id, "type": "CANCEL_SUCCESS", "psp": "44033011-f3c2-4800-b08f-ab7f80985459", "amount": 80.0}
    gql(fake, REPORT, args, token=fake.app_token)
    assert amounts(fake, order_id)["canceled"] == 80.0 and fake.outbox == []  # gql-72: nothing fires
    order = fake.order(order_id)  # gql-73
    assert (order["status"], order["chargeStatus"], order["authorizeStatus"]) == ("UNFULFILLED", "PARTIAL", "PARTIAL")


def test_order_d_async_charge_and_every_failure_answer(tx_saleor):
    fake, app = tx_saleor
    lines = [{"name": "Tee", "sku": "1", "quantity": 1, "unit_gross": "40.00"}]
    order_id, tx_id = order_with_transaction(fake, 33, lines, "fb499940-828b-44c3-8fd7-d06105733166")
    app.answers.append((200, b'{"pspReference": "pending-fb499940-828b-44c3-8fd7-d06105733166"}'))
    fake.request_action(tx_id, "CHARGE", "25.00")
    assert (amounts(fake, order_id)["authorized"], amounts(fake, order_id)["chargePending"]) == (15.0, 25.0)
    assert fake.order(order_id)["authorizeStatus"] == "PARTIAL"  # gql-52: pending counts for neither
    args = {
        "id": tx_id,
        "type": "CHARGE_SUCCESS",
        "psp": "pending-fb499940-828b-44c3-8fd7-d06105733166",
        "amount": 25.0,
    }
    gql(fake, REPORT, args, token=fake.app_token)
    assert (amounts(fake, order_id)["charged"], amounts(fake, order_id)["chargePending"]) == (25.0, 0.0)
    before = amounts(fake, order_id)

    cases = [
        ((200, b'{"pspReference": "31af", "result": "CHARGE_FAILURE", "message": "Klarna: capture not allowed"}'),
         "Klarna: capture not allowed"),
        ((200, b'{"result": "CHARGE_SUCCESS", "amount": 5.0}'),
         "Missing value for field: pspReference. Input: {'result': 'CHARGE_SUCCESS', 'amount': 5.0}."),
        ((400, b'{"pspReference": "7fa7", "result": "CHARGE_FAILURE", "message": "Klarna: 400 capture rejected"}'),
         "Klarna: 400 capture rejected"),
        ((200, b"OK"), "Failed to delivery request."),
        ((0, b""), "Failed to delivery request."),  # a timeout
    ]  # fmt: skip
    for answer, message in cases:
        app.answers.append(answer)
        result = fake.request_action(tx_id, "CHARGE", "5.00")
        assert (result["event"]["type"], result["event"]["message"]) == ("CHARGE_FAILURE", message)
        assert amounts(fake, order_id) == before

    app.answers.extend([(500, b'{"error": "Klarna unavailable"}')] * 6)
    sent = len(app.received)
    result = fake.request_action(tx_id, "CHARGE", "5.00")
    assert result["attempts"] == 6 and result["event"]["message"] == "Failed to delivery request."
    retries = app.received[sent + 1 :]
    assert len(retries) == 5 and all(body == b"" for _, body in retries)  # 43-*, 48-*, 54-*: empty bodies
    assert all(fake.sign(b"").split(".")[0] == h["Saleor-Signature"].split(".")[0] for h, _ in retries)

    # gql-93...96: a report under another pspReference leaves the request pending until its own arrives.
    app.answers.append((200, b'{"pspReference": "P1"}'))
    fake.request_action(tx_id, "CHARGE", "5.00")
    gql(fake, REPORT, {"id": tx_id, "type": "CHARGE_SUCCESS", "psp": "P2", "amount": 5.0}, token=fake.app_token)
    assert (amounts(fake, order_id)["charged"], amounts(fake, order_id)["chargePending"]) == (30.0, 5.0)
    assert amounts(fake, order_id)["authorized"] == 5.0
    gql(fake, REPORT, {"id": tx_id, "type": "CHARGE_FAILURE", "psp": "P1", "amount": 5.0}, token=fake.app_token)
    assert (amounts(fake, order_id)["authorized"], amounts(fake, order_id)["chargePending"]) == (10.0, 0.0)


def test_order_e_duplicates_conflicts_and_a_second_app(tx_saleor):
    fake, _ = tx_saleor
    lines = [{"name": "Tee", "sku": "1", "quantity": 1, "unit_gross": "40.00"}]
    order_id, tx_id = order_with_transaction(fake, 34, lines, "b36267a2-b275-4c87-99fe-3e038cf36883")
    args = {"id": tx_id, "type": "CHARGE_SUCCESS", "psp": "af93104d", "amount": 40.0}
    first = gql(fake, REPORT, args, token=fake.app_token)[1]["data"]["transactionEventReport"]
    again = gql(fake, REPORT, args, token=fake.app_token)[1]["data"]["transactionEventReport"]
    assert (first["alreadyProcessed"], again["alreadyProcessed"]) == (False, True)
    conflict = gql(fake, REPORT, {**args, "amount": 30.0}, token=fake.app_token)[1]["data"]["transactionEventReport"]
    assert conflict["errors"] == [{
        "field": "pspReference", "code": "INCORRECT_DETAILS",
        "message": "The transaction with provided `pspReference` and `type` already exists with different amount.",
    }]  # fmt: skip
    assert fake.order(order_id)["transactions"][0]["events"][0]["type"] == "CHARGE_FAILURE"  # gql-99
    assert amounts(fake, order_id)["charged"] == 40.0

    staff = fake.mint_token(permissions=("HANDLE_PAYMENTS", "MANAGE_ORDERS"))
    denied = gql(fake, REPORT, {**args, "psp": "x"}, token=staff)[1]
    assert denied["data"]["transactionEventReport"] is None
    assert "OWNER, HANDLE_PAYMENTS" in denied["errors"][0]["message"]  # gql-84

    other = fake.add_transaction(order_id, name="Other", psp_reference="62474f2f", authorized="10.00")
    assert other["created_by"]["identifier"] == "com.example.klarna-payments"
    with pytest.raises(ValueError, match="MISSING_TRANSACTION_ACTION_REQUEST_WEBHOOK"):
        fake.request_action(other["id"], "CHARGE", "10.00")  # its owner has no webhook here (gql-32)
    assert fake.order(order_id)["authorizeStatus"] == "FULL"
    fake.add_transaction(order_id, name="Other", psp_reference="62474f3a", charged="10.00")
    order = fake.order(order_id)  # gql-89: two apps' money adds up
    assert (order["chargeStatus"], order["totalCharged"]["amount"]) == ("OVERCHARGED", 50.0)


def test_a_success_body_on_400_and_on_an_empty_retry_are_applied(tx_saleor):
    fake, app = tx_saleor
    lines = [{"name": "Tee", "sku": "1", "quantity": 1, "unit_gross": "40.00"}]
    order_id, tx_id = order_with_transaction(fake, 36, lines, "a1d10a21-c31b-44ab-bd76-fa3410f31db2")
    app.answers.append((400, b'{"pspReference": "s1", "result": "CHARGE_SUCCESS", "amount": 5.0}'))
    assert fake.request_action(tx_id, "CHARGE", "5.00")["event"]["type"] == "CHARGE_SUCCESS"  # 74-*
    app.answers.extend([(500, b"{}"), (200, b'{"pspReference": "s2", "result": "CHARGE_SUCCESS", "amount": 5.0}')])
    result = fake.request_action(tx_id, "CHARGE", "5.00")  # 75-*, 76-*
    assert (result["attempts"], result["event"]["type"]) == (2, "CHARGE_SUCCESS")
    assert amounts(fake, order_id)["charged"] == 10.0


def test_the_request_event_is_by_staff_and_the_payload_has_no_issuing_principal(tx_saleor):
    fake, app = tx_saleor
    _, tx_id = order_with_transaction(fake, 37, ORDER_A_LINES, "k")
    app.answers.append((200, b'{"pspReference": "p"}'))
    fake.request_action(tx_id, "CHARGE", Decimal("1.00"))
    body = json.loads(app.received[-1][1])
    assert body["issuingPrincipal"] is None
    assert body["transaction"]["events"][0]["createdBy"]["id"] == STAFF_USER["id"]
    assert body["transaction"]["events"][0]["pspReference"] == ""
