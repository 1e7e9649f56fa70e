"""What the fuzzers found, reduced to deterministic tests.

Each test states the correct behaviour of a bug the fuzzers found (all fixed): ids the database
cannot hold are refused with a 4xx at the edge, credentials outside printable ASCII are refused.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from plugin.db.models import ProcessException
from tests.fuzz.conftest import World

API = "/api/dashboard"
ADMIN = ("MANAGE_ORDERS", "MANAGE_APPS")


def _admin(world: World) -> dict[str, str]:
    saleor = world.shop.saleor
    return {"authorization-bearer": saleor.mint_token(user_permissions=ADMIN), "saleor-api-url": saleor.api_url}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_checking_credentials_outside_latin1_is_answered_not_a_500(world: World) -> None:
    # found by test_dashboard_api_never_fails_an_admin_with_a_5xx: {"username": "Ā"} was a 500
    # (requests encodes Basic credentials as Latin-1); fixed in be9d6a3
    response = world.client.post(f"{API}/test-connection", headers=_admin(world),
                                 json={"region": "EU", "environment": "playground", "username": "Ā", "password": "secret"})  # fmt: skip
    assert response.status_code < 500, response.get_data()
    assert world.klarna_calls() == 0 or response.get_json()["result"] != "ok"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_credentials_outside_latin1_never_break_the_widget_or_the_sync(world: World) -> None:
    # given an admin who saves a username with a character outside Latin-1 (refusing it is fine too)
    client, shop = world.client, world.shop
    saved = client.put(f"{API}/settings/*", headers=_admin(world),
                       json={"region": "EU", "environment": "playground", "username": "PK_tëst_Ā", "password": "secret"})  # fmt: skip
    assert saved.status_code in (200, 400), saved.get_data()
    # when an order ships and the admin opens its widget
    order_id, _ = shop.order()
    tee, shoe = shop.line_ids(order_id)
    shop.saleor.auto_deliver = True
    shop.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    shop.sync()
    widget = client.get(f"{API}/orders/{order_id}", headers=_admin(world))
    # then the widget answers, and the sync did not crash on the credentials
    with shop.services.db.transaction() as session:
        crashed: list[Any] = [e.message for e in session.query(ProcessException) if "UnicodeEncodeError" in e.message]
    assert widget.status_code < 500, widget.get_data()
    assert not crashed, crashed


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize(
    ("order_id", "principal_id"),
    [
        pytest.param("T3JkZXI6MQ==\u0000", "VXNlcjox", id="nul-in-order-id"),
        pytest.param("T" * 256, "VXNlcjox", id="order-id-over-255"),
        pytest.param("T3JkZXI6MQ==", "V" * 256, id="principal-id-over-255"),
    ],
)
def test_a_signed_webhook_with_an_unstorable_id_is_refused_not_retried(
    world: World, order_id: str, principal_id: str
) -> None:
    # found by test_bodies_signed_by_saleor_but_not_ours_never_fail_the_server[postgres]
    saleor = world.shop.saleor
    body = json.dumps({"__typename": "OrderUpdated", "issuingPrincipal": {"id": principal_id},
                       "recipient": {"id": saleor.app_id}, "order": {"id": order_id}}).encode()  # fmt: skip
    headers = {"Saleor-Api-Url": saleor.api_url, "Saleor-Event": "order_updated", "Saleor-Signature": saleor.sign(body)}
    response = world.client.post("/api/webhooks/order-events", data=body, headers=headers)
    # 4xx: Saleor must not redeliver what can never be stored (a 200 that stores it safely is fine too)
    assert response.status_code < 500, response.get_data()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("POST", "/exceptions/9223372036854775808/retry", None, id="exception-id-beyond-bigint"),
        pytest.param("POST", "/exceptions/9223372036854775808/dismiss", None, id="dismiss-id-beyond-bigint"),
        pytest.param("GET", "/orders/T3JkZXI6MQ%00", None, id="nul-in-order-id"),
        pytest.param("PUT", "/settings/default%00", {"region": "EU"}, id="nul-in-channel"),
        pytest.param("DELETE", "/settings/default%00", None, id="nul-in-channel-delete"),
        # fixed in be9d6a3 (credentials must be printable ASCII)
        pytest.param("PUT", "/settings/*", {"username": "PK\u0000test", "password": "secret"}, id="nul-in-username"),
    ],
)
def test_the_dashboard_answers_unstorable_input_with_a_4xx(world: World, method: str, path: str, body: Any) -> None:
    # found by test_dashboard_api_never_fails_an_admin_with_a_5xx[postgres]
    response = world.client.open(f"{API}{path}", method=method, headers=_admin(world), json=body)
    assert response.status_code < 500, response.get_data()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("action", ["retry", "dismiss"])
def test_an_exception_id_beyond_64_bits_is_not_found_on_sqlite(world: World, action: str) -> None:
    # found by test_dashboard_api_never_fails_an_admin_with_a_5xx[sqlite]: OverflowError, a 500
    response = world.client.post(f"{API}/exceptions/9223372036854775808/{action}", headers=_admin(world))
    assert response.status_code < 500, response.get_data()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_double_slash_path_is_refused_not_redirected(world: World) -> None:
    # found by test_dashboard_api_refuses_every_token_it_must_not_trust: channel "/0" made the path
    # /api/dashboard/settings//0, which Werkzeug answered with a 308 redirect before any token check
    response = world.client.post(f"{API}/settings//0", headers=_admin(world), json={})
    assert 400 <= response.status_code < 500, response.status_code
