"""The dashboard's JSON API: who may call it (and that refusals change nothing), and what it reads and writes.

A FakeSaleor installs the app through its real handshake, routed into the Flask test client; its
tokens are the dashboard's. The app reaches the fake's GraphQL and JWKS over loopback HTTP.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
import responses
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from plugin.app import Services
from plugin.db.models import Base, Installation, Job, Operation, ProcessException
from plugin.klarna.client import KlarnaOrdersClient
from plugin.testing.klarna import FakeKlarna, FakeKlarnaServer
from plugin.testing.saleor import OTHER_APP, FakeSaleor

API = "/api/dashboard"
ADMIN = ("MANAGE_ORDERS", "MANAGE_APPS")
CHANNELS = [
    {"slug": "default-channel", "name": "Default Channel", "currencyCode": "USD"},
    {"slug": "channel-pln", "name": "Channel-PLN", "currencyCode": "PLN"},
]
CREDENTIALS = {"region": "EU", "environment": "playground", "username": "PK_test", "password": "secret"}


# -- fixtures and helpers ------------------------------------------------------------------------


def flask_transport(client: Any) -> Callable[[str, str, dict, bytes | None], tuple[int, dict, bytes]]:
    """FakeSaleor's HTTP to the app, delivered to the Flask test client instead of a socket."""

    def transport(method: str, url: str, headers: dict, body: bytes | None) -> tuple[int, dict, bytes]:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        response = client.open(path, method=method, headers=headers, data=body)
        return response.status_code, dict(response.headers), response.get_data()

    return transport


@pytest.fixture
def shop_channels(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    monkeypatch.setattr(FakeSaleor, "channels", tuple(CHANNELS))
    return CHANNELS


@pytest.fixture
def saleor(client: Any, services: Services, shop_channels: list[dict[str, str]]) -> Iterator[FakeSaleor]:
    fake = FakeSaleor(app_transport=flask_transport(client)).start()
    result = fake.install(f"{services.settings.public_base}/api/manifest")
    assert result.ok, result
    yield fake
    fake.stop()


def auth(saleor: FakeSaleor, token: str | None = None, **claims: Any) -> dict[str, str]:
    """Dashboard headers; by default the app page's token of an admin (MANAGE_ORDERS and MANAGE_APPS)."""
    claims.setdefault("user_permissions", ADMIN)
    return {"authorization-bearer": token or saleor.mint_token(**claims), "saleor-api-url": saleor.api_url}


def snapshot(services: Services) -> dict[str, list[str]]:
    """Every row of every table, to prove that a refused call changed nothing."""
    with services.db.transaction() as session:
        return {
            table.name: sorted(repr(tuple(row)) for row in session.execute(select(table)).all())
            for table in Base.metadata.sorted_tables
        }


def add_failure(
    services: Services, saleor_api_url: str, *, order_id: str = "T3JkZXI6MQ==", log: list | None = None
) -> tuple[int, int]:
    """A failed capture and its open process exception, as the worker leaves them: (operation id, exception id)."""
    log = log if log is not None else [{
        "method": "POST", "url": "https://api.playground.klarna.com/ordermanagement/v1/orders/k-1/captures",
        "request_headers": {"Authorization": "Basic UEtfdGVzdDpzZWNyZXQ=", "Klarna-Idempotency-Key": "k"},
        "status": 403, "response_body": {"error_code": "CAPTURE_NOT_ALLOWED", "correlation_id": "corr-1"},
    }]  # fmt: skip
    with services.db.transaction() as session:
        op = Operation(
            saleor_api_url=saleor_api_url, order_id=order_id, klarna_order_id="k-1", kind="capture",
            reference="RnVsZmlsbG1lbnQ6MQ==", amount=1000, currency="EUR", idempotency_key=str(uuid.uuid4()),
            state="failed", request_body=json.dumps({"captured_amount": 1000}), error_code="CAPTURE_NOT_ALLOWED",
            error_message="Klarna 403 CAPTURE_NOT_ALLOWED", correlation_id="corr-1", attempts=1, log=json.dumps(log),
        )  # fmt: skip
        session.add(op)
        session.flush()
        exc = ProcessException(
            saleor_api_url=saleor_api_url, order_id=order_id, operation_id=op.id, error_code="CAPTURE_NOT_ALLOWED",
            message="Klarna: capture of 10.00 EUR failed", correlation_id="corr-1", log=json.dumps(log),
        )  # fmt: skip
        session.add(exc)
        session.flush()
        return op.id, exc.id


def forged_token(saleor: FakeSaleor) -> str:
    """The fake's claims and kid, signed with a key that is not the fake's."""
    claims = jwt.decode(saleor.mint_token(user_permissions=ADMIN), options={"verify_signature": False})
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, other, algorithm="RS256", headers={"kid": saleor.kid})


# -- authentication and permissions ---------------------------------------------------------------


def test_valid_token_reads_settings_and_channels_from_saleor(client: Any, saleor: FakeSaleor) -> None:
    response = client.get(f"{API}/settings", headers=auth(saleor))

    assert response.status_code == 200
    body = response.get_json()
    assert [c["slug"] for c in body["channels"]] == ["*", "default-channel", "channel-pln"]
    assert body["channels"][1]["currency"] == "USD"
    assert body["can_configure"] is True
    assert body["statuses"][0] == "DRAFT"
    assert body["sensible"]["UNFULFILLED"] == ["cancel", "none"]
    assert response.headers["Cache-Control"] == "no-store"
    # Saleor's channels are read with the app token, not the user's.
    channel_queries = [r for r in saleor.graphql_requests if "KlarnaOmChannels" in (r["query"] or "")]
    assert channel_queries
    assert channel_queries[-1]["caller"] == "app"


def test_read_only_user_sees_settings_but_may_not_configure(client: Any, saleor: FakeSaleor) -> None:
    response = client.get(f"{API}/settings", headers=auth(saleor, user_permissions=("MANAGE_ORDERS",)))

    assert response.status_code == 200
    assert response.get_json()["can_configure"] is False


def _refusal_cases() -> list[Any]:
    def headers_without(name: str) -> Callable[[FakeSaleor], dict[str, str]]:
        return lambda s: {k: v for k, v in auth(s).items() if k != name}

    cases = [
        ("no-token-header", headers_without("authorization-bearer"), 400, "MISSING_HEADERS"),
        ("no-saleor-api-url-header", headers_without("saleor-api-url"), 400, "MISSING_HEADERS"),
        (
            "unknown-saleor",
            lambda s: {**auth(s), "saleor-api-url": "http://127.0.0.1:9/graphql/"},
            401,
            "NOT_REGISTERED",
        ),
        ("not-a-jwt", lambda s: auth(s, token="not-a-jwt"), 401, "INVALID_TOKEN"),
        ("expired", lambda s: auth(s, now=time.time() - 600), 401, "TOKEN_EXPIRED"),
        ("forged-other-key-same-kid", lambda s: auth(s, token=forged_token(s)), 401, "INVALID_TOKEN"),
        (
            "other-saleors-token",
            lambda s: auth(s, token=FakeSaleor().mint_token(app_id=s.app_id, user_permissions=ADMIN)),
            401,
            "INVALID_TOKEN",
        ),
        ("other-app", lambda s: auth(s, app_id="QXBwOjk5OQ=="), 401, "WRONG_APP"),
        (
            "no-manage-orders",
            lambda s: auth(s, user_permissions=("MANAGE_APPS", "MANAGE_PRODUCTS")),
            403,
            "PERMISSION_DENIED",
        ),
    ]
    return [pytest.param(make, status, code, id=name) for name, make, status, code in cases]


def _calls(exception_id: int) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("GET", f"{API}/settings", None),
        ("PUT", f"{API}/settings/*", {**CREDENTIALS, "mapping": {"FULFILLED": "none"}}),
        ("DELETE", f"{API}/settings/default-channel", None),
        ("POST", f"{API}/test-connection", CREDENTIALS),
        ("GET", f"{API}/operations", None),
        ("GET", f"{API}/exceptions", None),
        ("POST", f"{API}/exceptions/{exception_id}/retry", None),
        ("POST", f"{API}/exceptions/{exception_id}/dismiss", None),
        ("GET", f"{API}/orders/T3JkZXI6MQ==", None),
    ]


@pytest.mark.parametrize(("make_headers", "status", "code"), _refusal_cases())
def test_refused_calls_answer_json_and_change_nothing(
    client: Any,
    services: Services,
    saleor: FakeSaleor,
    make_headers: Callable[[FakeSaleor], dict[str, str]],
    status: int,
    code: str,
) -> None:
    _, exception_id = add_failure(services, saleor.api_url)
    client.put(f"{API}/settings/default-channel", headers=auth(saleor), json=CREDENTIALS)
    before = snapshot(services)

    for method, path, body in _calls(exception_id):
        response = client.open(path, method=method, headers=make_headers(saleor), json=body)

        assert (response.status_code, response.get_json()["error"]["type"]) == (status, code), f"{method} {path}"
        assert snapshot(services) == before, f"{method} {path} changed the database"


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        pytest.param({"user_permissions": ("MANAGE_ORDERS",)}, "PERMISSION_DENIED", id="without-manage-apps"),
        pytest.param({"app_extension": "QXBwRXh0ZW5zaW9uOjE="}, "APP_PAGE_ONLY", id="widget-token"),
    ],
)
def test_configuring_needs_manage_apps_on_the_app_page(
    client: Any, services: Services, saleor: FakeSaleor, claims: dict[str, Any], code: str
) -> None:
    client.put(f"{API}/settings/default-channel", headers=auth(saleor), json=CREDENTIALS)
    before = snapshot(services)

    for method, path, body in [
        ("PUT", f"{API}/settings/*", {**CREDENTIALS, "mapping": {"FULFILLED": "none"}}),
        ("DELETE", f"{API}/settings/default-channel", None),
        ("POST", f"{API}/test-connection", CREDENTIALS),
    ]:
        response = client.open(path, method=method, headers=auth(saleor, **claims), json=body)

        assert response.status_code == 403
        assert response.get_json()["error"]["type"] == code
    assert snapshot(services) == before


def test_widget_token_reads_and_retries(client: Any, services: Services, saleor: FakeSaleor) -> None:
    _, exception_id = add_failure(services, saleor.api_url)
    widget = auth(saleor, permissions=("MANAGE_ORDERS",), app_extension="QXBwRXh0ZW5zaW9uOjE=")

    assert client.get(f"{API}/orders/T3JkZXI6MQ==", headers=widget).status_code == 200
    assert client.post(f"{API}/exceptions/{exception_id}/retry", headers=widget).status_code == 200


def test_rotated_signing_key_is_fetched_once_and_kept(client: Any, services: Services, saleor: FakeSaleor) -> None:
    saleor.rotate_key()

    response = client.get(f"{API}/exceptions", headers=auth(saleor))

    assert response.status_code == 200
    with services.db.transaction() as session:
        assert json.loads(session.get(Installation, saleor.api_url).jwks) == saleor.jwks


# -- settings -----------------------------------------------------------------------------------


def _channel(client: Any, saleor: FakeSaleor, slug: str) -> dict[str, Any]:
    body = client.get(f"{API}/settings", headers=auth(saleor)).get_json()
    return next(c for c in body["channels"] if c["slug"] == slug)


def test_settings_say_what_a_reinstall_with_handle_payments_brings(client: Any, saleor: FakeSaleor) -> None:
    assert client.get(f"{API}/settings", headers=auth(saleor)).get_json()["handles_payments"] is False
    saleor.app_permissions = ["HANDLE_PAYMENTS", "MANAGE_ORDERS"]  # the merchant accepted the new permission
    assert client.get(f"{API}/settings", headers=auth(saleor)).get_json()["handles_payments"] is True


def test_settings_round_trip_never_returns_the_password(client: Any, services: Services, saleor: FakeSaleor) -> None:
    document = {
        **CREDENTIALS, "region": "NA", "password": "s3cret-value",
        "mapping": {"FULFILLED": "none", "PARTIALLY_FULFILLED": "none", "RETURNED": "refund"},
        "options": {"shipping_with": "last", "send_tracking": False, "klarna_id_metadata_key": "klarna_id"},
    }  # fmt: skip

    saved = client.put(f"{API}/settings/*", headers=auth(saleor), json=document)
    read = client.get(f"{API}/settings", headers=auth(saleor))

    assert saved.status_code == 200
    assert "s3cret-value" not in saved.get_data(as_text=True) + read.get_data(as_text=True)
    channel = _channel(client, saleor, "*")
    assert channel["own_settings"] is True
    stored = channel["settings"]
    assert (stored["region"], stored["environment"], stored["username"], stored["password_set"]) == (
        "NA",
        "playground",
        "PK_test",
        True,
    )
    assert stored["mapping"] == {
        "DRAFT": "none", "UNCONFIRMED": "none", "UNFULFILLED": "none", "PARTIALLY_FULFILLED": "none",
        "FULFILLED": "none", "PARTIALLY_RETURNED": "refund", "RETURNED": "refund", "CANCELED": "cancel", "EXPIRED": "cancel",
    }  # fmt: skip
    assert stored["options"] == {
        "shipping_with": "last", "send_tracking": False, "write_notes": True,
        "refund_shipping_on_full_return": True, "klarna_id_metadata_key": "klarna_id",
        # the authorization's life: defaults
        "extend_authorization": True, "extension_margin_days": 3, "final_expiry_warning_days": 14,
        "update_authorization": True, "cancelled_shipment": "refund", "release_leftovers": True,
        "recheck_hours": 24, "fraud_recheck_minutes": 15,
        "allowed_payment_apps": [],
    }  # fmt: skip
    # Other channels inherit what "*" holds.
    assert _channel(client, saleor, "default-channel")["settings"]["region"] == "NA"
    assert _channel(client, saleor, "default-channel")["own_settings"] is False


@pytest.mark.parametrize("password", [pytest.param({}, id="absent"), pytest.param({"password": ""}, id="empty")])
def test_an_empty_password_keeps_the_stored_one(
    client: Any, services: Services, saleor: FakeSaleor, password: dict[str, str]
) -> None:
    client.put(f"{API}/settings/*", headers=auth(saleor), json=CREDENTIALS)

    response = client.put(f"{API}/settings/*", headers=auth(saleor), json={"username": "PK_other", **password})

    assert response.status_code == 200
    with services.db.transaction() as session:
        stored = services.store.get_exact(session, saleor.api_url, "*")
    assert (stored.username, stored.password) == ("PK_other", "secret")


def test_a_channel_saved_on_its_own_starts_from_what_it_inherited(
    client: Any, services: Services, saleor: FakeSaleor
) -> None:
    client.put(f"{API}/settings/*", headers=auth(saleor), json=CREDENTIALS)

    response = client.put(f"{API}/settings/channel-pln", headers=auth(saleor), json={"region": "OC"})
    removed = client.delete(f"{API}/settings/channel-pln", headers=auth(saleor))

    assert response.get_json()["settings"] | {"mapping": None, "options": None} == {
        "channel": "channel-pln", "region": "OC", "environment": "playground", "username": "PK_test",
        "password_set": True, "mapping": None, "options": None,
    }  # fmt: skip
    assert removed.status_code == 200
    assert _channel(client, saleor, "channel-pln")["own_settings"] is False
    assert client.delete(f"{API}/settings/*", headers=auth(saleor)).status_code == 400


def test_field_errors_are_reported_per_field_and_nothing_is_stored(
    client: Any, services: Services, saleor: FakeSaleor
) -> None:
    before = snapshot(services)

    response = client.put(f"{API}/settings/*", headers=auth(saleor), json={
        "region": "XX", "environment": "prod", "username": "a:b", "mapping": {"FULFILLED": "ship"},
        "options": {"shipping_with": "middle", "send_tracking": "yes", "colour": "red"},
    })  # fmt: skip

    assert response.status_code == 400
    assert set(response.get_json()["errors"]) == {
        "region", "environment", "username", "mapping.FULFILLED", "options.shipping_with",
        "options.send_tracking", "options.colour",
    }  # fmt: skip
    assert snapshot(services) == before
    assert (
        client.put(f"{API}/settings/*", headers=auth(saleor), data="[]", content_type="application/json").status_code
        == 400
    )


@pytest.mark.parametrize(
    ("status", "action"),
    [
        ("UNFULFILLED", "capture"),
        ("FULFILLED", "refund"),
        ("RETURNED", "capture"),
        ("DRAFT", "cancel"),
        ("CANCELED", "refund"),
    ],
)
def test_a_nonsensical_mapping_is_refused_with_a_reason(
    client: Any, services: Services, saleor: FakeSaleor, status: str, action: str
) -> None:
    before = snapshot(services)

    response = client.put(f"{API}/settings/*", headers=auth(saleor), json={**CREDENTIALS, "mapping": {status: action}})

    assert response.status_code == 400
    assert response.get_json() == {"errors": {f"mapping.{status}": f"{action} makes no sense for {status} orders"}}
    assert snapshot(services) == before


# -- test connection --------------------------------------------------------------------------


@pytest.fixture
def klarna(services: Services) -> Iterator[FakeKlarnaServer]:
    server = FakeKlarnaServer(FakeKlarna(username="PK_test", password="secret")).start()
    services.settings = replace(services.settings, klarna_base_url=server.base_url)
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("document", "result"),
    [
        pytest.param(CREDENTIALS, "ok", id="right"),
        pytest.param({**CREDENTIALS, "password": "wrong"}, "wrong_credentials", id="wrong-password"),
    ],
)
def test_connection_against_the_base_url_override(
    client: Any, saleor: FakeSaleor, klarna: FakeKlarnaServer, document: dict[str, str], result: str
) -> None:
    response = client.post(f"{API}/test-connection", headers=auth(saleor), json=document)

    assert response.status_code == 200
    assert response.get_json()["result"] == result
    assert klarna.fake.requests
    assert {r.method for r in klarna.fake.requests} == {"GET"}


def test_connection_uses_the_stored_password_when_none_is_typed(
    client: Any, saleor: FakeSaleor, klarna: FakeKlarnaServer
) -> None:
    client.put(f"{API}/settings/*", headers=auth(saleor), json=CREDENTIALS)

    response = client.post(f"{API}/test-connection", headers=auth(saleor), json={**CREDENTIALS, "password": ""})

    assert response.get_json()["result"] == "ok"


def test_connection_needs_a_password_somewhere(client: Any, saleor: FakeSaleor, klarna: FakeKlarnaServer) -> None:
    response = client.post(f"{API}/test-connection", headers=auth(saleor), json={"username": "PK_test"})

    assert response.status_code == 400
    assert set(response.get_json()["errors"]) == {"password"}


def test_connection_reports_klarna_unreachable(client: Any, services: Services, saleor: FakeSaleor) -> None:
    services.settings = replace(services.settings, klarna_base_url="http://127.0.0.1:9")

    response = client.post(f"{API}/test-connection", headers=auth(saleor), json=CREDENTIALS)

    assert response.get_json()["result"] == "unreachable"
    assert "unreachable" in response.get_json()["message"]


@responses.activate(assert_all_requests_are_fired=False)
def test_connection_tells_the_wrong_region_from_wrong_credentials(client: Any, saleor: FakeSaleor) -> None:
    responses.add_passthru(re.compile(r"http://127\.0\.0\.1:\d+/"))  # the fake Saleor
    unauthorized = {"error_code": "UNAUTHORIZED", "error_messages": ["Bad credentials"], "correlation_id": "c"}
    no_such_order = {"error_code": "NO_SUCH_ORDER", "error_messages": ["no order"], "correlation_id": "c"}
    for host in (
        "api.playground.klarna.com",
        "api-oc.playground.klarna.com",
        "api.klarna.com",
        "api-na.klarna.com",
        "api-oc.klarna.com",
    ):
        responses.get(re.compile(f"https://{re.escape(host)}/.*"), json=unauthorized, status=401)
    responses.get(re.compile(r"https://api-na\.playground\.klarna\.com/.*"), json=no_such_order, status=404)

    in_eu = client.post(f"{API}/test-connection", headers=auth(saleor), json=CREDENTIALS).get_json()
    in_na = client.post(f"{API}/test-connection", headers=auth(saleor), json={**CREDENTIALS, "region": "NA"}).get_json()

    assert (in_eu["result"], in_eu["region"], in_eu["environment"]) == ("wrong_region", "NA", "playground")
    assert "belong to region NA" in in_eu["message"]
    assert in_na["result"] == "ok"
    responses.replace(
        responses.GET, re.compile(r"https://api-na\.playground\.klarna\.com/.*"), json=unauthorized, status=401
    )
    wrong = client.post(f"{API}/test-connection", headers=auth(saleor), json=CREDENTIALS)
    assert wrong.get_json()["result"] == "wrong_credentials"
    # Every probe asked for an order id nobody has; none of them changed anything at Klarna.
    assert {call.request.method for call in responses.calls if "klarna.com" in call.request.url} == {"GET"}


# -- operations log and exceptions ------------------------------------------------------------


def test_operations_log_filters_by_state_and_redacts_credentials(
    client: Any, services: Services, saleor: FakeSaleor
) -> None:
    op_id, _ = add_failure(services, saleor.api_url)
    with services.db.transaction() as session:
        session.add(Operation(
            saleor_api_url=saleor.api_url, order_id="T3JkZXI6Mg==", klarna_order_id="k-2", kind="refund",
            reference="r", amount=250, currency="JPY", idempotency_key=str(uuid.uuid4()), state="succeeded",
        ))  # fmt: skip

    everything = client.get(f"{API}/operations", headers=auth(saleor)).get_json()["operations"]
    failed = client.get(f"{API}/operations?state=failed", headers=auth(saleor)).get_json()["operations"]

    assert [op["kind"] for op in everything] == ["refund", "capture"]
    assert everything[0]["amount_display"] == "250 JPY"
    assert [op["id"] for op in failed] == [op_id]
    assert failed[0]["log"][0]["request_headers"]["Authorization"] == "[REDACTED]"
    assert failed[0]["request_body"] == {"captured_amount": 1000}
    assert "UEtfdGVzdDpzZWNyZXQ" not in json.dumps(everything)
    assert client.get(f"{API}/operations?state=lost", headers=auth(saleor)).status_code == 400


def test_retry_reopens_the_operation_and_queues_the_order(client: Any, services: Services, saleor: FakeSaleor) -> None:
    op_id, exception_id = add_failure(services, saleor.api_url)
    _, other_id = add_failure(services, saleor.api_url, order_id="T3JkZXI6Mg==")
    with services.db.transaction() as session:
        old_key = session.get(Operation, op_id).idempotency_key

    listed = client.get(f"{API}/exceptions", headers=auth(saleor)).get_json()
    retried = client.post(f"{API}/exceptions/{exception_id}/retry", headers=auth(saleor))
    again = client.post(f"{API}/exceptions/{exception_id}/retry", headers=auth(saleor))

    assert listed["open_count"] == 2
    assert [e["id"] for e in listed["exceptions"]] == [other_id, exception_id]
    assert retried.status_code == 200
    assert retried.get_json()["open_count"] == 1
    assert again.status_code == 409
    with services.db.transaction() as session:
        op = session.get(Operation, op_id)
        assert (op.state, op.generation) == ("pending", 1)
        assert op.idempotency_key != old_key
        assert session.get(ProcessException, exception_id).state == "retried"
        assert session.scalar(select(Job.order_id).where(Job.saleor_api_url == saleor.api_url)) == "T3JkZXI6MQ=="


def test_dismiss_closes_the_exception_without_acting(client: Any, services: Services, saleor: FakeSaleor) -> None:
    op_id, exception_id = add_failure(services, saleor.api_url)

    response = client.post(f"{API}/exceptions/{exception_id}/dismiss", headers=auth(saleor))

    assert response.status_code == 200
    assert response.get_json()["open_count"] == 0
    assert client.post(f"{API}/exceptions/{exception_id}/dismiss", headers=auth(saleor)).status_code == 409
    assert client.post(f"{API}/exceptions/999999/dismiss", headers=auth(saleor)).status_code == 404
    with services.db.transaction() as session:
        assert session.get(ProcessException, exception_id).state == "dismissed"
        assert session.get(Operation, op_id).state == "failed"
        assert session.scalar(select(Job.id)) is None


def test_another_installations_exception_is_not_found(
    client: Any, services: Services, saleor: FakeSaleor, shop_channels: list[dict[str, str]]
) -> None:
    other = FakeSaleor(app_transport=flask_transport(client)).start()
    try:
        assert other.install(f"{services.settings.public_base}/api/manifest").ok
        _, foreign_id = add_failure(services, other.api_url)
        before = snapshot(services)

        retry = client.post(f"{API}/exceptions/{foreign_id}/retry", headers=auth(saleor))
        dismiss = client.post(f"{API}/exceptions/{foreign_id}/dismiss", headers=auth(saleor))
        listed = client.get(f"{API}/exceptions", headers=auth(saleor)).get_json()
    finally:
        other.stop()

    assert (retry.status_code, dismiss.status_code) == (404, 404)
    assert listed["open_count"] == 0
    assert snapshot(services) == before


# -- the order widget -------------------------------------------------------------------------


def test_order_view_shows_klarna_live_state_ledger_and_exceptions(
    client: Any, services: Services, saleor: FakeSaleor, klarna: FakeKlarnaServer
) -> None:
    klarna_id = klarna.fake.create_order(order_amount=5000, currency="USD")
    with KlarnaOrdersClient(klarna.base_url, "PK_test", "secret") as k:
        capture = k.capture(klarna_id, {"captured_amount": 2000, "reference": "F1"}, str(uuid.uuid4()))
    order_id = saleor.create_order(
        lines=[{"name": "Item", "quantity": 1, "unit_gross": "50.00"}], klarna_order_id=klarna_id
    )
    client.put(f"{API}/settings/*", headers=auth(saleor), json=CREDENTIALS)
    add_failure(services, saleor.api_url, order_id=order_id)

    body = client.get(f"{API}/orders/{order_id}", headers=auth(saleor, app_extension="QXBwRXh0ZW5zaW9uOjE=")).get_json()

    assert body["klarna_order_id"] == klarna_id
    assert body["configured"] is True
    assert body["order"] == {"number": "1", "status": "UNFULFILLED", "channel": "default-channel"}
    k = body["klarna"]
    assert (k["status"], k["authorized"]["display"], k["captured"]["amount"], k["remaining"]["amount"]) == (
        "PART_CAPTURED",
        "50.00 USD",
        2000,
        3000,
    )
    assert k["captures"] == [{"id": capture.resource_id, "reference": "F1", "amount": 2000, "display": "20.00 USD"}]
    assert k["expires_at"] is not None
    assert [op["kind"] for op in body["operations"]] == ["capture"]
    assert body["open_count"] == 1
    assert body["exceptions"][0]["error_code"] == "CAPTURE_NOT_ALLOWED"
    # the badge: an open exception; the expiry shown while something remains authorized
    assert [w["code"] for w in body["badge"]["warnings"]] == ["EXCEPTION_OPEN"]
    assert body["badge"]["show_expiry"] is True


def test_order_view_of_an_order_that_is_not_klarnas(client: Any, saleor: FakeSaleor) -> None:
    order_id = saleor.create_order(lines=[{"name": "Item", "quantity": 1, "unit_gross": "5.00"}], klarna_via="none")

    body = client.get(f"{API}/orders/{order_id}", headers=auth(saleor)).get_json()

    assert (body["klarna_order_id"], body["klarna"], body["operations"]) == (None, None, [])


def test_order_view_says_whose_books_the_payment_is_in(client: Any, saleor: FakeSaleor) -> None:
    own = saleor.create_order(lines=[{"name": "Item", "quantity": 1, "unit_gross": "5.00"}], klarna_order_id="k-own")
    foreign = saleor.create_order(lines=[{"name": "Item", "quantity": 1, "unit_gross": "5.00"}], klarna_via="none")
    saleor.add_transaction(foreign, owner=OTHER_APP, psp_reference="k-foreign", authorized="5.00")

    own_view = client.get(f"{API}/orders/{own}", headers=auth(saleor)).get_json()
    foreign_view = client.get(f"{API}/orders/{foreign}", headers=auth(saleor)).get_json()

    assert (own_view["books"]["kind"], own_view["books"]["booked_here"], own_view["klarna_order_id"]) == (
        "own", True, "k-own",
    )  # fmt: skip
    assert foreign_view["books"]["kind"] == "foreign" and foreign_view["books"]["kept_by"] == "Klarna payments"
    assert foreign_view["klarna_order_id"] is None  # never acted on, so never shown as this app's


def test_order_view_warns_when_a_fulfilled_order_has_nothing_captured(
    client: Any, saleor: FakeSaleor, klarna: FakeKlarnaServer
) -> None:
    klarna_id = klarna.fake.create_order(order_amount=500, currency="USD")
    order_id = saleor.create_order(
        lines=[{"name": "Item", "quantity": 1, "unit_gross": "5.00"}], klarna_order_id=klarna_id
    )
    client.put(f"{API}/settings/*", headers=auth(saleor), json=CREDENTIALS)
    [line] = saleor.order(order_id)["lines"]
    saleor.auto_deliver = False  # the worker does not run here: nothing is captured
    saleor.fulfill(order_id, {line["id"]: 1})

    body = client.get(f"{API}/orders/{order_id}", headers=auth(saleor)).get_json()

    assert (body["order"]["status"], body["klarna"]["captured"]["amount"], body["fulfilled_uncaptured"]) == (
        "FULFILLED", 0, True,
    )  # fmt: skip


# -- the pages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "marker"), [("/app", "settings.js"), ("/widgets/order", "widget.js")])
def test_pages_are_script_only_from_our_origin_and_follow_the_theme(client: Any, path: str, marker: str) -> None:
    dark = client.get(f"{path}?saleorApiUrl=https://shop.example.com/graphql/&id=QXBwOjE=&theme=dark")
    unknown = client.get(f"{path}?theme=<script>")

    html = dark.get_data(as_text=True)
    assert dark.status_code == 200
    assert marker in html
    assert 'data-theme="dark"' in html
    assert 'data-theme="light"' in unknown.get_data(as_text=True)
    assert "script-src 'self'" in dark.headers["Content-Security-Policy"]
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline scripts would need 'unsafe-inline'"
    assert "Set-Cookie" not in dark.headers


def test_mapping_table_offers_only_sensible_actions(client: Any) -> None:
    html = client.get("/app").get_data(as_text=True)

    row = re.search(r'name="mapping\.UNFULFILLED".*?</select>', html, re.S)
    assert row is not None
    assert re.search(r'value="capture" disabled', row.group(0))
    assert re.search(r'value="cancel">', row.group(0))


def test_fonts_are_served_from_the_app(client: Any) -> None:
    response = client.get("/dashboard-static/fonts/Inter-SemiBold.woff2")

    assert response.status_code == 200
    assert response.mimetype == "font/woff2"
