"""Tests for the Klarna OM fake (plugin/testing/klarna.py), driven over real HTTP."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests

from plugin.testing.klarna import (
    ROUTES,
    FakeClock,
    FakeKlarna,
    FakeKlarnaServer,
    KlarnaError,
    load_spec,
    spec_validator,
)

START = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
AUTH = ("PK_test", "secret")


@pytest.fixture
def clock():
    return {"now": START}


@pytest.fixture
def fake(clock):
    return FakeKlarna(now=lambda: clock["now"])


@pytest.fixture
def server(fake):
    with FakeKlarnaServer(fake) as srv:
        yield srv


def call(server, method, order_id, suffix="", *, json=None, key=None, auth=AUTH, timeout=5, **kwargs):
    headers = {"Klarna-Idempotency-Key": key} if key else {}
    headers |= kwargs.pop("headers", {})
    url = f"{server.base_url}/ordermanagement/v1/orders/{order_id}{suffix}"
    return requests.request(method, url, json=json, auth=auth, headers=headers, timeout=timeout, **kwargs)


def capture(server, order_id, amount, **kwargs):
    return call(server, "POST", order_id, "/captures", json={"captured_amount": amount}, **kwargs)


def refund(server, order_id, amount, **kwargs):
    return call(server, "POST", order_id, "/refunds", json={"refunded_amount": amount}, **kwargs)


def line(total, *, quantity=1, tax_rate=2500, tax=None, type_="physical", reference="SKU-1"):
    if tax is None:
        tax = round(total * tax_rate / (10000 + tax_rate))
    return {
        "type": type_,
        "reference": reference,
        "name": "Tomatoes",
        "quantity": quantity,
        "unit_price": total // quantity,
        "tax_rate": tax_rate,
        "total_amount": total,
        "total_tax_amount": tax,
    }


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["error_code"] == code
    assert body["error_messages"] and all(isinstance(m, str) for m in body["error_messages"])
    assert uuid.UUID(body["correlation_id"])
    spec_validator("ErrorMessageDto", closed=True).validate(body)
    return body


# ------------------------------------------------------------------ captures


def test_full_capture_returns_201_with_headers_and_marks_order_captured(server, fake):
    # given an authorized order of 10000
    order_id = fake.create_order(order_amount=10000)
    # when the whole amount is captured
    response = capture(server, order_id, 10000)
    # then Klarna answers 201 with an empty body, Capture-Id and a Location that resolves
    assert response.status_code == 201
    assert response.content == b""
    assert "Content-Type" not in response.headers
    capture_id = response.headers["Capture-Id"]
    assert response.headers["Location"].endswith(f"/ordermanagement/v1/orders/{order_id}/captures/{capture_id}")
    fetched = requests.get(response.headers["Location"], auth=AUTH, timeout=5)
    assert fetched.status_code == 200
    assert fetched.json()["captured_amount"] == 10000
    # and the order is fully captured
    order = fake.order(order_id)
    assert (order["status"], order["captured_amount"], order["remaining_authorized_amount"]) == ("CAPTURED", 10000, 0)
    assert fake.counts()["captures"] == 1


def test_partial_captures_move_order_through_part_captured_to_captured(server, fake):
    # given an order of 10000
    order_id = fake.create_order(order_amount=10000)
    # when 4000 is captured
    assert capture(server, order_id, 4000).status_code == 201
    # then the order is part captured
    order = call(server, "GET", order_id).json()
    assert (order["status"], order["remaining_authorized_amount"]) == ("PART_CAPTURED", 6000)
    # when the remaining 6000 is captured
    assert capture(server, order_id, 6000).status_code == 201
    # then the order is captured, with two captures listed
    order = call(server, "GET", order_id).json()
    assert (order["status"], order["captured_amount"], order["remaining_authorized_amount"]) == ("CAPTURED", 10000, 0)
    captures = call(server, "GET", order_id, "/captures").json()
    assert [c["captured_amount"] for c in captures] == [4000, 6000]
    assert [c["klarna_reference"] for c in captures] == [
        order["klarna_reference"] + "-1",
        order["klarna_reference"] + "-2",
    ]


def test_capture_above_remaining_authorization_is_403_and_changes_nothing(server, fake):
    # given an order with 3000 of 10000 captured
    order_id = fake.create_order(order_amount=10000)
    capture(server, order_id, 3000)
    # when 7001 is captured
    response = capture(server, order_id, 7001)
    # then Klarna refuses with its real message
    body = assert_error(response, 403, "CAPTURE_NOT_ALLOWED")
    assert body["error_messages"] == [
        "Captured amount is higher than the remaining authorized amount. Capture not possible."
    ]
    assert fake.order(order_id)["captured_amount"] == 3000
    # and a capture on the fully captured order is refused as well
    capture(server, order_id, 7000)
    assert_error(capture(server, order_id, 1), 403, "CAPTURE_NOT_ALLOWED")


@pytest.mark.parametrize("fraud_status", ["PENDING", "REJECTED", "STOPPED"])
def test_capture_is_refused_unless_fraud_status_accepted(server, fake, fraud_status):
    # given an order whose fraud check is not accepted
    order_id = fake.create_order(order_amount=5000, fraud_status=fraud_status)
    # when it is captured
    response = capture(server, order_id, 5000)
    # then the capture is refused and nothing is captured
    assert_error(response, 403, "CAPTURE_NOT_ALLOWED")
    assert fake.order(order_id)["captured_amount"] == 0
    if fraud_status != "PENDING":
        # a decision is final
        with pytest.raises(ValueError, match="cannot go from"):
            fake.set_fraud_status(order_id, "ACCEPTED")
        return
    # when the pending fraud check later passes, the capture goes through
    fake.set_fraud_status(order_id, "ACCEPTED")
    assert capture(server, order_id, 5000).status_code == 201


def test_capture_with_lines_and_shipping_info_is_stored_and_readable(server, fake):
    # given an order with two lines
    lines = [line(6000, quantity=10), line(4000, reference="SKU-2")]
    order_id = fake.create_order(order_amount=10000, currency="EUR", purchase_country="DE", order_lines=lines)
    # when the first line is captured with tracking, then more tracking is appended
    body = {
        "captured_amount": 6000,
        "reference": "ship-1",
        "description": "First parcel",
        "order_lines": lines[:1],
        "shipping_info": [{"shipping_company": "DHL US", "tracking_number": "123"}],
    }
    capture_id = call(server, "POST", order_id, "/captures", json=body).headers["Capture-Id"]
    more = {"shipping_info": [{"shipping_company": "UPS", "shipping_method": "Home", "tracking_number": "456"}]}
    response = call(server, "POST", order_id, f"/captures/{capture_id}/shipping-info", json=more)
    # then the shipping info call is 204 and the capture holds everything
    assert response.status_code == 204 and response.content == b""
    stored = call(server, "GET", order_id, f"/captures/{capture_id}").json()
    assert stored["order_lines"] == lines[:1]
    assert (stored["reference"], stored["description"]) == ("ship-1", "First parcel")
    assert [s["tracking_number"] for s in stored["shipping_info"]] == ["123", "456"]
    assert fake.counts()["shipping_infos"] == 1


def test_shipping_info_on_unknown_capture_is_404_no_such_capture(server, fake):
    # given an order without that capture
    order_id = fake.create_order(order_amount=1000)
    # when shipping info is sent to a made-up capture
    response = call(
        server,
        "POST",
        order_id,
        f"/captures/{uuid.uuid4()}/shipping-info",
        json={"shipping_info": [{"tracking_number": "1"}]},
    )
    # then Klarna answers 404 NO_SUCH_CAPTURE
    assert_error(response, 404, "NO_SUCH_CAPTURE")
    assert_error(call(server, "GET", order_id, f"/captures/{uuid.uuid4()}"), 404, "NO_SUCH_CAPTURE")


# ------------------------------------------------------------------ cancel and release


def test_cancel_before_capture_cancels_the_order(server, fake):
    # given an authorized order
    order_id = fake.create_order(order_amount=5000)
    # when it is cancelled
    response = call(server, "POST", order_id, "/cancel")
    # then 204, the order is cancelled, and it can no longer be captured or cancelled again
    assert response.status_code == 204
    order = fake.order(order_id)
    assert (order["status"], order["remaining_authorized_amount"]) == ("CANCELLED", 0)
    assert_error(capture(server, order_id, 100), 403, "CAPTURE_NOT_ALLOWED")
    assert_error(call(server, "POST", order_id, "/cancel"), 403, "CANCEL_NOT_ALLOWED")
    assert fake.counts()["cancels"] == 1


def test_cancel_after_capture_is_403_cancel_not_allowed(server, fake):
    # given a part-captured order
    order_id = fake.create_order(order_amount=5000)
    capture(server, order_id, 1000)
    # when it is cancelled
    response = call(server, "POST", order_id, "/cancel")
    # then Klarna refuses with its real message and the order is unchanged
    body = assert_error(response, 403, "CANCEL_NOT_ALLOWED")
    assert body["error_messages"] == ["Order has previous captures. Cancel not possible."]
    assert fake.order(order_id)["status"] == "PART_CAPTURED"


def test_release_remaining_authorization_after_partial_capture(server, fake):
    # given an order with 4000 of 10000 captured
    order_id = fake.create_order(order_amount=10000)
    capture(server, order_id, 4000)
    # when the remainder is released
    response = call(server, "POST", order_id, "/release-remaining-authorization")
    # then the order is closed for captures
    assert response.status_code == 204
    order = fake.order(order_id)
    assert (order["status"], order["captured_amount"], order["remaining_authorized_amount"]) == ("CAPTURED", 4000, 0)
    assert_error(capture(server, order_id, 1), 403, "CAPTURE_NOT_ALLOWED")
    assert fake.counts()["releases"] == 1


def test_release_is_not_allowed_without_captures_when_fully_captured_or_cancelled(server, fake):
    # given orders without captures, fully captured, and cancelled
    fresh = fake.create_order(order_amount=1000)
    full = fake.create_order(order_amount=1000)
    capture(server, full, 1000)
    cancelled = fake.create_order(order_amount=1000)
    call(server, "POST", cancelled, "/cancel")
    # when the remainder is released on each, then each is 403 NOT_ALLOWED
    for order_id in (fresh, full, cancelled):
        assert_error(call(server, "POST", order_id, "/release-remaining-authorization"), 403, "NOT_ALLOWED")
    body = call(server, "POST", full, "/release-remaining-authorization").json()
    assert body["error_messages"] == ["Order is fully captured. Remaining authorization cannot be released."]
    assert fake.counts()["releases"] == 0


# ------------------------------------------------------------------ refunds


def test_refund_limits(server, fake):
    # given an order with nothing captured
    order_id = fake.create_order(order_amount=10000)
    # when a refund is attempted, then it is refused
    body = assert_error(refund(server, order_id, 100), 403, "REFUND_NOT_ALLOWED")
    assert body["error_messages"] == ["Order has no captures. Refund not possible."]
    # given 6000 captured
    capture(server, order_id, 6000)
    # when more than captured is refunded, then it is refused
    assert_error(refund(server, order_id, 6001), 403, "REFUND_NOT_ALLOWED")
    # when 4000 is refunded, then 201 with Refund-Id and Location
    response = call(
        server, "POST", order_id, "/refunds", json={"refunded_amount": 4000, "reference": "r1", "description": "x"}
    )
    assert response.status_code == 201 and response.content == b""
    refund_id = response.headers["Refund-Id"]
    assert response.headers["Location"].endswith(f"/orders/{order_id}/refunds/{refund_id}")
    # when 2001 more is refunded, then it exceeds captured minus refunded
    assert_error(refund(server, order_id, 2001), 403, "REFUND_NOT_ALLOWED")
    # when the last 2000 is refunded, then it succeeds
    assert refund(server, order_id, 2000).status_code == 201
    order = fake.order(order_id)
    assert (order["refunded_amount"], order["status"]) == (6000, "PART_CAPTURED")
    assert order["captures"][0]["refunded_amount"] == 6000
    fetched = call(server, "GET", order_id, f"/refunds/{refund_id}").json()
    assert (fetched["refunded_amount"], fetched["reference"]) == (4000, "r1")
    assert_error(call(server, "GET", order_id, f"/refunds/{uuid.uuid4()}"), 404, "NOT_FOUND")
    assert fake.counts()["refunds"] == 2


def test_refunds_are_allocated_to_captures_first_in_first_out(server, fake):
    # given two captures of 3000 and 7000
    order_id = fake.create_order(order_amount=10000)
    capture(server, order_id, 3000)
    capture(server, order_id, 7000)
    # when 5000 is refunded
    refund(server, order_id, 5000)
    # then the first capture is refunded in full and the second in part
    assert [c["refunded_amount"] for c in fake.order(order_id)["captures"]] == [3000, 2000]


# ------------------------------------------------------------------ idempotency


def test_same_idempotency_key_replays_first_response_even_with_a_different_body(server, fake):
    # given an order and a capture of 1000 under key K
    order_id = fake.create_order(order_amount=10000)
    key = str(uuid.uuid4())
    first = capture(server, order_id, 1000, key=key)
    # when the same key is sent again with a different amount
    second = capture(server, order_id, 5000, key=key)
    # then the first response is replayed and only one capture exists
    assert (second.status_code, second.headers["Capture-Id"], second.headers["Location"]) == (
        first.status_code,
        first.headers["Capture-Id"],
        first.headers["Location"],
    )
    assert fake.order(order_id)["captured_amount"] == 1000
    assert fake.counts()["captures"] == 1
    # and the key was recorded on both requests
    assert [r.idempotency_key for r in fake.requests] == [key, key]
    assert [r.json for r in fake.requests] == [{"captured_amount": 1000}, {"captured_amount": 5000}]


def test_errors_are_replayed_too_and_keys_expire_after_24_hours(server, fake, clock):
    # given a refund refused under key K (nothing captured yet)
    order_id = fake.create_order(order_amount=10000)
    key = str(uuid.uuid4())
    first = refund(server, order_id, 100, key=key)
    assert first.status_code == 403
    capture(server, order_id, 1000)
    # when the same key is retried after the capture
    second = refund(server, order_id, 100, key=key)
    # then the stored 403 comes back byte for byte
    assert (second.status_code, second.content) == (403, first.content)
    # when the key is reused after 24 hours
    clock["now"] += timedelta(hours=24, seconds=1)
    # then it is a new request
    assert refund(server, order_id, 100, key=key).status_code == 201


def test_requests_without_key_are_performed_every_time(server, fake):
    # given an order
    order_id = fake.create_order(order_amount=10000)
    # when the same capture is sent twice without a key
    capture(server, order_id, 1000)
    capture(server, order_id, 1000)
    # then both are performed
    assert fake.order(order_id)["captured_amount"] == 2000
    assert fake.counts()["captures"] == 2


def test_key_sent_with_wrong_credentials_is_not_stored(server, fake):
    # given a capture under key K that fails authentication
    order_id = fake.create_order(order_amount=1000)
    key = str(uuid.uuid4())
    assert capture(server, order_id, 1000, key=key, auth=("PK_test", "wrong")).status_code == 401
    # when the key is used with the right credentials
    response = capture(server, order_id, 1000, key=key)
    # then the capture is performed rather than the 401 replayed
    assert response.status_code == 201


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"captured_amount": "1000"}, "captured_amount"),
        ({"captured_amount": 1000.0}, "captured_amount"),
        ({"captured_amount": -1}, "captured_amount"),
        ({"captured_amount": 100000001}, "captured_amount"),
        ({"description": "no amount"}, "captured_amount"),
        ({"captured_amount": 1000, "description": None}, "description"),
        ({"captured_amount": 1000, "reference": "x" * 256}, "reference"),
        ({"captured_amount": 1000, "order_lines": [line(1000) | {"type": "service"}]}, "order_lines[0].type"),
        ({"captured_amount": 1000, "order_lines": [line(1000) | {"type": "physicalx"}]}, "order_lines[0].type"),
        (
            {"captured_amount": 1000, "order_lines": [{k: v for k, v in line(1000).items() if k != "name"}]},
            "order_lines[0].name",
        ),
        (
            {"captured_amount": 1000, "shipping_info": [{"shipping_company": "x" * 101}]},
            "shipping_info[0].shipping_company",
        ),
        (
            {"captured_amount": 1000, "shipping_info": [{"shipping_method": "Drone"}]},
            "shipping_info[0].shipping_method",
        ),
    ],
)
def test_capture_body_that_breaks_the_schema_is_400_naming_the_field(server, fake, body, field):
    # given an order
    order_id = fake.create_order(order_amount=10000)
    # when a capture body breaks the spec's CaptureObject schema
    response = call(server, "POST", order_id, "/captures", json=body)
    # then Klarna answers 400 BAD_VALUE naming the field, and nothing is captured
    error = assert_error(response, 400, "BAD_VALUE")
    assert any(m.startswith(f"Bad value: {field}") for m in error["error_messages"]), error
    assert fake.order(order_id)["captured_amount"] == 0


def test_refund_and_shipping_info_bodies_are_validated_against_their_schemas(server, fake):
    # given a captured order
    order_id = fake.create_order(order_amount=1000)
    capture_id = capture(server, order_id, 1000).headers["Capture-Id"]
    # when a refund amount is a string, or the shipping info list is empty
    bad_refund = call(server, "POST", order_id, "/refunds", json={"refunded_amount": "10"})
    bad_info = call(server, "POST", order_id, f"/captures/{capture_id}/shipping-info", json={"shipping_info": []})
    # then both are 400 BAD_VALUE
    assert "refunded_amount" in assert_error(bad_refund, 400, "BAD_VALUE")["error_messages"][0]
    assert "shipping_info" in assert_error(bad_info, 400, "BAD_VALUE")["error_messages"][0]


def test_zero_amounts_and_missing_or_broken_bodies_are_400(server, fake):
    # given an order
    order_id = fake.create_order(order_amount=1000)
    url = f"{server.base_url}/ordermanagement/v1/orders/{order_id}/captures"
    json_header = {"Content-Type": "application/json"}
    # when captures of 0, no body and broken JSON are sent, then each is 400 BAD_VALUE
    assert_error(capture(server, order_id, 0), 400, "BAD_VALUE")
    assert_error(requests.post(url, auth=AUTH, timeout=5), 400, "BAD_VALUE")
    assert_error(requests.post(url, data=b"{nope", headers=json_header, auth=AUTH, timeout=5), 400, "BAD_VALUE")


def test_body_without_json_content_type_is_415(server, fake):
    # given an order
    order_id = fake.create_order(order_amount=1000)
    # when a JSON body is sent as text/plain
    response = call(
        server, "POST", order_id, "/captures", data=b'{"captured_amount": 1000}', headers={"Content-Type": "text/plain"}
    )
    # then it is refused and nothing is captured
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert fake.counts()["captures"] == 0


def test_bodiless_endpoints_ignore_an_empty_body(server, fake):
    # given an order
    order_id = fake.create_order(order_amount=1000)
    # when cancel is posted with an empty JSON content type and no body
    response = call(server, "POST", order_id, "/cancel", headers={"Content-Type": "application/json"})
    # then it is performed
    assert response.status_code == 204


def test_line_tax_outside_tolerance_is_400_with_klarnas_message(server, fake):
    # given an order with a 25% line of 12500 (tax 2500)
    order_id = fake.create_order(order_amount=12500, order_lines=[line(12500)])
    # when the capture line's tax is 2 off, then 400 with the calculated value
    body = {"captured_amount": 12500, "order_lines": [line(12500, tax=2502)]}
    error = assert_error(call(server, "POST", order_id, "/captures", json=body), 400, "BAD_VALUE")
    assert error["error_messages"] == [
        "Bad value: order_lines[0].total_tax_amount differs from the calculated value [2500] by more than [1]"
    ]
    # when the tax is 1 off, then the capture is accepted
    body = {"captured_amount": 12500, "order_lines": [line(12500, tax=2501)]}
    assert call(server, "POST", order_id, "/captures", json=body).status_code == 201


def test_discount_line_tax_is_checked_with_its_sign(server, fake):
    # given an order
    order_id = fake.create_order(order_amount=10000)
    # when a discount line carries positive tax
    lines = [line(12500, reference="a"), line(-2500, tax=500, type_="discount", reference="b")]
    response = call(server, "POST", order_id, "/captures", json={"captured_amount": 10000, "order_lines": lines})
    # then it is refused; with the right (negative) tax it passes
    assert "[-500]" in assert_error(response, 400, "BAD_VALUE")["error_messages"][0]
    lines[1]["total_tax_amount"] = -500
    assert (
        call(server, "POST", order_id, "/captures", json={"captured_amount": 10000, "order_lines": lines}).status_code
        == 201
    )


def test_line_arithmetic_and_sum_must_match_the_amount(server, fake):
    # given an order
    order_id = fake.create_order(order_amount=10000)
    wrong_total = line(1000) | {"quantity": 2, "unit_price": 600}
    # when a line total is not quantity*unit_price - discount, then 400
    response = call(server, "POST", order_id, "/captures", json={"captured_amount": 1000, "order_lines": [wrong_total]})
    assert "order_lines[0].total_amount" in assert_error(response, 400, "BAD_VALUE")["error_messages"][0]
    # when the lines do not sum to captured_amount, then 400
    response = call(server, "POST", order_id, "/captures", json={"captured_amount": 1500, "order_lines": [line(1000)]})
    assert "captured_amount" in assert_error(response, 400, "BAD_VALUE")["error_messages"][0]
    # when a discount is taken into account, then the line passes
    discounted = line(900) | {"quantity": 2, "unit_price": 500, "total_discount_amount": 100}
    response = call(server, "POST", order_id, "/captures", json={"captured_amount": 900, "order_lines": [discounted]})
    assert response.status_code == 201


def test_create_order_rejects_inconsistent_seed_lines(fake):
    # given lines that do not add up, when the order is seeded, then the fake refuses it
    with pytest.raises(ValueError, match="order_amount"):
        fake.create_order(order_amount=5000, order_lines=[line(1000)])


# ------------------------------------------------------------------ auth, routing


@pytest.mark.parametrize("auth", [None, ("PK_test", "wrong"), ("someone", "secret")])
def test_missing_or_wrong_credentials_are_401(server, fake, auth):
    # given an order
    order_id = fake.create_order(order_amount=1000)
    # when it is read or captured with bad credentials
    responses = [call(server, "GET", order_id, auth=auth), capture(server, order_id, 1000, auth=auth)]
    # then both are 401 and nothing is captured
    for response in responses:
        assert_error(response, 401, "UNAUTHORIZED")
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert fake.counts()["captures"] == 0


def test_unknown_order_is_404_no_such_order_and_non_uuid_is_400(server):
    # when an unknown order is read or captured, then 404 NO_SUCH_ORDER
    assert_error(call(server, "GET", str(uuid.uuid4())), 404, "NO_SUCH_ORDER")
    assert_error(capture(server, str(uuid.uuid4()), 100), 404, "NO_SUCH_ORDER")
    # when the id is not a UUID, then 400 INVALID_ORDER_ID
    assert_error(call(server, "GET", "saleor-order-1"), 400, "INVALID_ORDER_ID")


def test_unknown_paths_are_404_and_wrong_methods_405(server, fake):
    # given an order
    order_id = fake.create_order(order_amount=1000)
    # when an unsupported path or method is used
    assert_error(call(server, "POST", order_id, "/explode", json={}), 404, "NOT_FOUND")
    assert_error(requests.get(f"{server.base_url}/nothing", auth=AUTH, timeout=5), 404, "NOT_FOUND")
    response = call(server, "DELETE", order_id)
    # then Klarna-style errors come back
    assert_error(response, 405, "METHOD_NOT_ALLOWED")


def test_routes_exist_in_the_spec():
    # given the spec, then every route the fake serves is a spec operation
    paths = load_spec()["paths"]
    for method, template, _ in ROUTES:
        assert method.lower() in paths[template]


def test_every_response_has_rate_limit_headers(server, fake):
    # given an order
    order_id = fake.create_order(order_amount=1000)
    # when a success, a 204, an error and a 401 come back, then each carries X-Ratelimit-*
    for response in (
        call(server, "GET", order_id),
        call(server, "POST", order_id, "/cancel"),
        call(server, "GET", str(uuid.uuid4())),
        call(server, "GET", order_id, auth=None),
    ):
        assert response.headers["X-Ratelimit-Limit"] == "50, 50;w=1"
        assert int(response.headers["X-Ratelimit-Remaining"]) >= 0
        assert response.headers["X-Ratelimit-Reset"] == "1"


# ------------------------------------------------------------------ expiry and extension


def test_authorization_expires_and_capture_is_refused(server, fake, clock):
    # given an order that expires in 28 days
    order_id = fake.create_order(order_amount=1000)
    # when the clock passes expires_at
    clock["now"] = START + timedelta(days=28)
    # then the order reads back EXPIRED and captures, cancels and extensions are refused
    order = call(server, "GET", order_id).json()
    assert (order["status"], order["remaining_authorized_amount"]) == ("EXPIRED", 0)
    body = assert_error(capture(server, order_id, 1000), 403, "CAPTURE_NOT_ALLOWED")
    assert body["error_messages"] == [f"Order {order_id} is expired. Capture not possible."]
    assert_error(call(server, "POST", order_id, "/extend-authorization-time"), 403, "NOT_ALLOWED")
    assert_error(call(server, "POST", order_id, "/cancel"), 403, "CANCEL_NOT_ALLOWED")


def test_part_captured_remainder_lapses_at_expiry(server, fake, clock):
    # given a part-captured order
    order_id = fake.create_order(order_amount=1000)
    capture(server, order_id, 400)
    # when it expires
    clock["now"] = START + timedelta(days=29)
    # then the remainder lapses, further captures are refused, refunds still work
    order = fake.order(order_id)
    assert (order["status"], order["remaining_authorized_amount"]) == ("PART_CAPTURED", 0)
    assert_error(capture(server, order_id, 1), 403, "CAPTURE_NOT_ALLOWED")
    assert refund(server, order_id, 400).status_code == 201


def test_extend_authorization_time_pushes_expiry_capped_at_180_days(server, fake, clock):
    # given an order created at START
    order_id = fake.create_order(order_amount=1000)
    # when it is extended 20 days later
    clock["now"] = START + timedelta(days=20)
    assert call(server, "POST", order_id, "/extend-authorization-time").status_code == 204
    # then it expires 28 days after the call
    assert call(server, "GET", order_id).json()["expires_at"] == "2025-02-18T12:00:00.000Z"
    # given an order created at START whose authorization runs to day 170 (a long-fulfilment merchant)
    clock["now"] = START
    long_id = fake.create_order(order_amount=1000, expires_at=START + timedelta(days=170))
    # when it is extended at day 160, then it is capped at 180 days after creation
    clock["now"] = START + timedelta(days=160)
    assert call(server, "POST", long_id, "/extend-authorization-time").status_code == 204
    assert fake.order(long_id)["expires_at"] == "2025-06-30T12:00:00.000Z"
    assert fake.counts()["extensions"] == 2
    # and once cancelled it cannot be extended
    assert call(server, "POST", long_id, "/cancel").status_code == 204
    assert_error(call(server, "POST", long_id, "/extend-authorization-time"), 403, "NOT_ALLOWED")


# ------------------------------------------------------------------ faults


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("500", 500, "INTERNAL_SERVER_ERROR"), ("503", 503, "TEMPORARILY_UNAVAILABLE"), ("429", 429, "TOO_MANY_REQUESTS")],
)
def test_injected_error_happens_before_the_operation(server, fake, fault, status, code):
    # given an order and one injected fault on captures
    order_id = fake.create_order(order_amount=1000)
    fake.inject(fault, path_contains="/captures", method="POST")
    key = str(uuid.uuid4())
    # when a capture is sent
    first = capture(server, order_id, 1000, key=key)
    # then the fault comes back and nothing was captured or stored for the key
    assert_error(first, status, code)
    assert fake.counts()["captures"] == 0
    # when the client retries with the same key, then the capture is performed once
    assert capture(server, order_id, 1000, key=key).status_code == 201
    assert fake.counts()["captures"] == 1


def test_fault_filters_and_times(server, fake):
    # given two 503s limited to POST /cancel
    order_id = fake.create_order(order_amount=1000)
    fake.inject("503", times=2, path_contains="/cancel", method="POST")
    # when other requests are sent, then they are not affected
    assert call(server, "GET", order_id).status_code == 200
    # when cancel is sent three times, then the first two fail and the third is performed
    statuses = [call(server, "POST", order_id, "/cancel").status_code for _ in range(3)]
    assert statuses == [503, 503, 204]


def test_drop_after_performs_then_the_client_sees_a_connection_error(server, fake):
    # given an order and a drop_after fault on captures
    order_id = fake.create_order(order_amount=1000)
    fake.inject("drop_after", path_contains="/captures")
    key = str(uuid.uuid4())
    # when a capture is sent
    with pytest.raises(requests.ConnectionError):
        capture(server, order_id, 1000, key=key)
    # then Klarna captured anyway
    assert fake.order(order_id)["status"] == "CAPTURED"
    assert fake.counts()["captures"] == 1
    # when the client retries with the same key, then it gets the stored 201 and no second capture
    retry = capture(server, order_id, 1000, key=key)
    assert retry.status_code == 201
    assert retry.headers["Capture-Id"] == fake.order(order_id)["captures"][0]["capture_id"]
    assert fake.counts()["captures"] == 1


def test_drop_after_without_a_socket_sleeps_instead(fake):
    # given the fake used through werkzeug's test client (no socket in environ)
    from werkzeug.test import Client

    order_id = fake.create_order(order_amount=1000)
    fake.inject("drop_after", seconds=0.2)
    client = Client(fake.wsgi_app)
    started = time.monotonic()
    # when a capture is sent
    response = client.post(f"/ordermanagement/v1/orders/{order_id}/captures", json={"captured_amount": 1000}, auth=AUTH)
    # then it is performed after the sleep
    assert time.monotonic() - started >= 0.2
    assert response.status_code == 201
    assert fake.counts()["captures"] == 1


def test_injected_latency_delays_the_response(server, fake):
    # given 0.3 s of latency on the next GET
    order_id = fake.create_order(order_amount=1000)
    fake.inject("latency", seconds=0.3, method="GET")
    # when the client reads the order with a short timeout, then it times out
    with pytest.raises(requests.ReadTimeout):
        call(server, "GET", order_id, timeout=0.1)
    # when latency is configured globally, then every response takes at least that long
    fake.latency = 0.2
    started = time.monotonic()
    assert call(server, "GET", order_id).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_fault_rate_fails_requests_before_performing(server, fake):
    # given a fake that fails every request
    order_id = fake.create_order(order_amount=1000)
    fake.fault_rate = 1.0
    # when captures are sent, then each fails with a 5xx or 429 and nothing is captured
    statuses = {capture(server, order_id, 100).status_code for _ in range(10)}
    assert statuses <= {500, 503, 429}
    assert fake.counts()["captures"] == 0
    # when the rate is reset, then requests go through
    fake.fault_rate = 0.0
    assert capture(server, order_id, 100).status_code == 201


def test_rate_limit_per_second_returns_429(server, fake):
    # given a limit of 3 requests per second
    order_id = fake.create_order(order_amount=1000)
    fake.rate_limit_per_second = 3
    # when 6 requests are sent at once
    responses = [call(server, "GET", order_id) for _ in range(6)]
    # then the ones above the limit are 429 TOO_MANY_REQUESTS
    assert [r.status_code for r in responses[:3]] == [200, 200, 200]
    assert_error(responses[-1], 429, "TOO_MANY_REQUESTS")
    assert responses[-1].headers["X-Ratelimit-Limit"] == "3, 3;w=1"
    assert responses[-1].headers["X-Ratelimit-Remaining"] == "0"


def test_inject_rejects_unknown_faults(fake):
    with pytest.raises(ValueError):
        fake.inject("explode")


# ------------------------------------------------------------------ responses match the spec


def test_responses_validate_against_the_spec(server, fake):
    # given an order with lines, two captures with tracking, a refund and order-level shipping info
    lines = [line(6000, quantity=10), line(4000, reference="SKU-2", tax_rate=1900)]
    order_id = fake.create_order(order_amount=10000, order_lines=lines, currency="EUR", purchase_country="DE")
    first = call(
        server,
        "POST",
        order_id,
        "/captures",
        json={
            "captured_amount": 6000,
            "order_lines": lines[:1],
            "reference": "c1",
            "shipping_info": [{"shipping_company": "DHL", "tracking_number": "1"}],
        },
    ).headers["Capture-Id"]
    capture(server, order_id, 4000)
    refund_id = call(
        server,
        "POST",
        order_id,
        "/refunds",
        json={"refunded_amount": 600, "order_lines": [line(600, reference="SKU-1")], "description": "one kg"},
    ).headers["Refund-Id"]
    call(server, "POST", order_id, "/shipping-info", json={"shipping_info": [{"tracking_number": "2"}]})
    # when every read endpoint is called
    order = call(server, "GET", order_id)
    captures = call(server, "GET", order_id, "/captures")
    one = call(server, "GET", order_id, f"/captures/{first}")
    one_refund = call(server, "GET", order_id, f"/refunds/{refund_id}")
    # then each is JSON that the spec's (closed) schemas accept
    for response in (order, captures, one, one_refund):
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
    spec_validator("Order", closed=True).validate(order.json())
    for item in captures.json():
        spec_validator("Capture", closed=True).validate(item)
    spec_validator("Capture", closed=True).validate(one.json())
    spec_validator("Refund", closed=True).validate(one_refund.json())
    body = order.json()
    assert (body["status"], body["refunded_amount"], body["purchase_currency"]) == ("CAPTURED", 600, "EUR")
    assert body["created_at"] == "2025-01-01T12:00:00.000Z" and body["expires_at"] == "2025-01-29T12:00:00.000Z"
    assert [s["tracking_number"] for s in body["shipping_info"]] == ["2"]
    assert body == fake.order(order_id)


def test_spec_validator_translates_openapi_features():
    # given the order_line schema, then patterns are anchored and integers must be JSON integers
    validator = spec_validator("order_line", request=True)
    good = line(1000)
    assert validator.is_valid(good)
    assert not validator.is_valid(good | {"type": "xphysical"})
    assert not validator.is_valid(good | {"quantity": True})
    assert not validator.is_valid(good | {"quantity": 1.0})


# ------------------------------------------------------------------ the authorization's life


@pytest.fixture
def ticking():
    return FakeClock(START)


@pytest.fixture
def life(ticking):
    fake = FakeKlarna(now=ticking)
    with FakeKlarnaServer(fake) as srv:
        yield srv, fake


def test_fake_clock_expires_the_authorization_and_refuses_captures(life, ticking):
    # given an order authorized for 28 days on a controllable clock
    server, fake = life
    order_id = fake.create_order(order_amount=1000)
    # when the clock moves to one second before the expiry, it is still capturable
    fake.advance(days=28, seconds=-1)
    assert call(server, "GET", order_id).json()["status"] == "AUTHORIZED"
    # when it moves past expires_at
    fake.advance(seconds=1)
    # then the order is EXPIRED and Klarna refuses the capture with its message
    order = call(server, "GET", order_id).json()
    assert (order["status"], order["remaining_authorized_amount"]) == ("EXPIRED", 0)
    body = assert_error(capture(server, order_id, 1000), 403, "CAPTURE_NOT_ALLOWED")
    assert body["error_messages"] == [f"Order {order_id} is expired. Capture not possible."]
    # and the clock never goes backwards
    with pytest.raises(ValueError, match="backwards"):
        ticking.advance(days=-1)


def test_advance_needs_a_fake_clock(fake):
    with pytest.raises(TypeError):
        fake.advance(days=1)


def test_extension_counts_from_the_call_date_and_is_refused_at_the_180_day_limit(life):
    # given an order bought at START, extended every 25 days
    server, fake = life
    order_id = fake.create_order(order_amount=1000)
    expiries = []
    for _ in range(7):
        fake.advance(days=25)
        response = call(server, "POST", order_id, "/extend-authorization-time", key=str(uuid.uuid4()))
        assert response.status_code == 204, response.text
        expiries.append(fake.order(order_id)["expires_at"])
    # then each extension runs 28 days from its call, and the last is capped at 180 days after the purchase
    assert expiries[0] == "2025-02-23T12:00:00.000Z"
    assert expiries[-1] == "2025-06-30T12:00:00.000Z"
    # when it is extended once more, Klarna refuses: no authorization lives past 180 days
    body = assert_error(
        call(server, "POST", order_id, "/extend-authorization-time", key=str(uuid.uuid4())), 403, "NOT_ALLOWED"
    )
    assert "180 days" in body["error_messages"][0]
    # and at the limit the authorization lapses
    fake.advance(days=6)
    assert fake.order(order_id)["status"] == "EXPIRED"


def update(server, order_id, amount, lines=None, key=None):
    body = {"order_amount": amount, "description": "Edited in the shop"}
    if lines is not None:
        body["order_lines"] = lines
    return call(server, "PATCH", order_id, "/authorization", json=body, key=key or str(uuid.uuid4()))


def test_update_authorization_decrease_replaces_amount_and_lines(server, fake):
    # given an order of two lines
    lines = [line(6000, quantity=10), line(4000, reference="SKU-2")]
    order_id = fake.create_order(order_amount=10000, order_lines=lines)
    # when the second line is removed
    response = update(server, order_id, 6000, lines[:1])
    # then Klarna answers 204 and the order holds the new amount and only the lines sent
    assert response.status_code == 204, response.text
    order = fake.order(order_id)
    assert (order["order_amount"], order["original_order_amount"], order["remaining_authorized_amount"]) == (
        6000,
        10000,
        6000,
    )
    assert [ln["reference"] for ln in order["order_lines"]] == ["SKU-1"]
    assert fake.counts()["authorization_updates"] == 1
    # and an update without lines deletes the lines (D-UPD)
    assert update(server, order_id, 5000).status_code == 204
    assert fake.order(order_id)["order_lines"] == []
    spec_validator("Order", closed=True).validate(call(server, "GET", order_id).json())


def test_update_authorization_increase_depends_on_payment_method_and_risk(server, fake):
    # given an invoice order and a card order
    invoice = fake.create_order(order_amount=1000, payment_method="INVOICE")
    card = fake.create_order(order_amount=1000, payment_method="PAY_LATER_BY_CARD")
    # when both are raised: the invoice passes, the card is refused and keeps its amount
    assert update(server, invoice, 1500).status_code == 204
    assert fake.order(invoice)["remaining_authorized_amount"] == 1500
    body = assert_error(update(server, card, 1500), 403, "NOT_ALLOWED")
    assert "cannot be increased" in body["error_messages"][0]
    assert fake.order(card)["order_amount"] == 1000
    # when the invoice order's next risk check fails, the increase is refused, a decrease still goes through
    fake.refuse_increases(invoice)
    assert_error(update(server, invoice, 2000), 403, "NOT_ALLOWED")
    assert update(server, invoice, 900).status_code == 204


def test_update_authorization_is_refused_below_captured_and_on_closed_orders(life):
    server, fake = life
    # given an order with 4000 of 10000 captured
    order_id = fake.create_order(order_amount=10000)
    capture(server, order_id, 4000)
    # then the authorization cannot go below what was captured
    body = assert_error(update(server, order_id, 3000), 403, "NOT_ALLOWED")
    assert body["error_messages"] == [
        "Resulting authorization amount 3000 cannot be less than the captured amount 4000."
    ]
    # and lowering it to exactly the captured amount leaves the order fully captured, closed to updates
    assert update(server, order_id, 4000).status_code == 204
    order = fake.order(order_id)
    assert (order["status"], order["remaining_authorized_amount"]) == ("CAPTURED", 0)
    assert_error(update(server, order_id, 4000), 403, "NOT_ALLOWED")
    # and cancelled or expired orders are refused too
    cancelled = fake.create_order(order_amount=1000)
    call(server, "POST", cancelled, "/cancel")
    assert_error(update(server, cancelled, 500), 403, "NOT_ALLOWED")
    expired = fake.create_order(order_amount=1000)
    fake.advance(days=29)
    assert_error(update(server, expired, 500), 403, "NOT_ALLOWED")


def test_update_authorization_body_is_validated(server, fake):
    order_id = fake.create_order(order_amount=1000)
    # a missing amount, and lines that do not add up to it, are 400 BAD_VALUE
    assert_error(call(server, "PATCH", order_id, "/authorization", json={"description": "x"}), 400, "BAD_VALUE")
    assert_error(update(server, order_id, 900, [line(800)]), 400, "BAD_VALUE")
    assert fake.order(order_id)["order_amount"] == 1000


def test_portal_actions_change_the_books_as_the_api_would(server, fake):
    # given an order of 10000
    order_id = fake.create_order(order_amount=10000)
    # when the merchant captures 3000 without lines and 2000 with a line, refunds 1000, and releases the rest
    first = fake.portal_capture(order_id, 3000)
    fake.portal_capture(order_id, 2000, order_lines=[line(2000)], reference="portal-2")
    refund_id = fake.portal_refund(order_id, 1000)
    fake.portal_release(order_id)
    # then the order reads back as if the API had done it, and no request was recorded
    order = call(server, "GET", order_id).json()
    assert (order["status"], order["captured_amount"], order["refunded_amount"]) == ("CAPTURED", 5000, 1000)
    assert order["remaining_authorized_amount"] == 0
    assert order["captures"][0]["capture_id"] == first and "reference" not in order["captures"][0]
    assert order["captures"][1]["reference"] == "portal-2"
    assert order["refunds"][0]["refund_id"] == refund_id
    assert len(fake.requests) == 1
    spec_validator("Order", closed=True).validate(order)
    # and the portal obeys Klarna's rules
    with pytest.raises(KlarnaError) as refused:
        fake.portal_refund(order_id, 5000)
    assert refused.value.code == "REFUND_NOT_ALLOWED"
    other = fake.create_order(order_amount=1000)
    with pytest.raises(KlarnaError):
        fake.portal_capture(other, 2000)
    fake.portal_cancel(other)
    assert fake.order(other)["status"] == "CANCELLED"
    with pytest.raises(KlarnaError):
        fake.portal_cancel(other)


def test_fraud_decisions_follow_klarnas_states(server, fake):
    # given a pending order: capture is refused
    order_id = fake.create_order(order_amount=1000, fraud_status="PENDING")
    assert_error(capture(server, order_id, 1000), 403, "CAPTURE_NOT_ALLOWED")
    # when Klarna accepts it, it can be captured, and later stopped
    fake.set_fraud_status(order_id, "ACCEPTED")
    assert capture(server, order_id, 500).status_code == 201
    fake.set_fraud_status(order_id, "STOPPED")
    assert_error(capture(server, order_id, 500), 403, "CAPTURE_NOT_ALLOWED")
    assert call(server, "GET", order_id).json()["fraud_status"] == "STOPPED"
    # and unknown or backward transitions are refused
    rejected = fake.create_order(order_amount=1000, fraud_status="PENDING")
    fake.set_fraud_status(rejected, "REJECTED")
    for bad in ("PENDING", "ACCEPTED", "MAYBE"):
        with pytest.raises(ValueError):
            fake.set_fraud_status(rejected, bad)
