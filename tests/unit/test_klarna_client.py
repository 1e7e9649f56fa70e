"""Klarna Order Management client and error tree, tested at the wire with `responses`."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.client import RemoteDisconnected
from typing import Any

import pytest
import requests
import responses
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from plugin.klarna.client import (
    BASE_URLS,
    KlarnaOrdersClient,
    KlarnaResponse,
    RateLimiter,
    base_url,
)
from plugin.klarna.errors import (
    KlarnaAPIError,
    KlarnaAuthError,
    KlarnaBadRequestError,
    KlarnaConflictError,
    KlarnaError,
    KlarnaNotAllowedError,
    KlarnaNotFoundError,
    KlarnaRateLimitError,
    KlarnaServerError,
    KlarnaTransportError,
    error_from_response,
)
from plugin.klarna.ratelimit import SharedRateLimiter

BASE = "https://api.playground.klarna.com"
ORDER_ID = "f3392f8b-6116-4073-ab96-e330819e2c07"
ORDER_URL = f"{BASE}/ordermanagement/v1/orders/{ORDER_ID}"
USERNAME = "PK12345_merchant"
PASSWORD = "s3cr3t-Pa55w0rd"
BASIC = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
KEY = "6f1c2e52-9a43-5b7e-8d11-0c8f4b1a2d33"
CORRELATION_ID = "66782175-ae05-44fc-9eb3-eeceadbad271"
CAPTURE_ID = "4ba29b50-be7b-44f5-a492-113e6a865e22"


@pytest.fixture
def wire() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def client() -> Iterator[KlarnaOrdersClient]:
    with KlarnaOrdersClient(BASE, USERNAME, PASSWORD) as klarna:
        yield klarna


def _error_body(code: str, *messages: str) -> dict[str, Any]:
    return {
        "error_code": code,
        "error_messages": list(messages),
        "correlation_id": CORRELATION_ID,
    }


# -- base URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "environment", "expected"),
    [
        ("EU", "live", "https://api.klarna.com"),
        ("EU", "playground", "https://api.playground.klarna.com"),
        ("NA", "live", "https://api-na.klarna.com"),
        ("NA", "playground", "https://api-na.playground.klarna.com"),
        ("OC", "live", "https://api-oc.klarna.com"),
        ("OC", "playground", "https://api-oc.playground.klarna.com"),
    ],
    ids=["eu_live_case", "eu_playground_case", "na_live_case", "na_playground_case",
         "oc_live_case", "oc_playground_case"],
)  # fmt: skip
def test_base_url_for_every_region_and_environment(region: str, environment: str, expected: str) -> None:
    # given a region and an environment
    # when the base URL is resolved
    url = base_url(region, environment)
    # then it is Klarna's documented host, and the table has exactly these six rows
    assert url == expected
    assert BASE_URLS[(region, environment)] == expected
    assert len(BASE_URLS) == 6


def test_base_url_override_wins() -> None:
    # given an override pointing at a fake Klarna
    override = "http://127.0.0.1:8099/"
    # when the base URL is resolved
    url = base_url("EU", "live", override)
    # then the override is used, without its trailing slash
    assert url == "http://127.0.0.1:8099"


def test_base_url_is_case_insensitive() -> None:
    # given lower-case region / upper-case environment from settings
    # when resolved / then they match the table
    assert base_url("na", "LIVE") == "https://api-na.klarna.com"


@pytest.mark.parametrize(
    ("region", "environment"),
    [("US", "live"), ("EU", "production"), ("", "")],
    ids=["unknown_region_case", "unknown_environment_case", "empty_case"],
)
def test_base_url_rejects_unknown_region_or_environment(region: str, environment: str) -> None:
    # given an unknown region or environment
    # when resolved / then ValueError
    with pytest.raises(ValueError, match="unknown Klarna region"):
        base_url(region, environment)


# -- headers -------------------------------------------------------------------------------


def test_get_order_sends_basic_auth_user_agent_and_no_idempotency_key(
    wire: responses.RequestsMock, client: KlarnaOrdersClient
) -> None:
    # given Klarna returns an order
    wire.get(ORDER_URL, json={"order_id": ORDER_ID, "status": "AUTHORIZED"})
    # when the order is read
    result = client.get_order(ORDER_ID)
    # then Basic auth and the SDK-style User-Agent were sent, and no idempotency key
    sent = wire.calls[0].request
    assert sent.headers["Authorization"] == f"Basic {BASIC}"
    user_agent = sent.headers["User-Agent"]
    assert isinstance(user_agent, str)
    assert user_agent.startswith("Library/klarna-om-saleor_")
    assert " Language/Python_" in user_agent
    assert " Module/klarna-om-saleor_" in user_agent
    assert "Klarna-Idempotency-Key" not in sent.headers
    assert "Content-Type" not in sent.headers
    assert result == KlarnaResponse(
        status=200,
        json={"order_id": ORDER_ID, "status": "AUTHORIZED"},
        resource_id=None,
        log=result.log,
    )
    assert result.log["method"] == "GET"
    assert result.log["idempotency_key"] is None


def test_custom_user_agent_is_sent_verbatim(wire: responses.RequestsMock) -> None:
    # given a client configured with a platform-specific User-Agent
    wire.get(ORDER_URL, json={})
    agent = "Library/klarna-om-saleor_1.0 Platform/Saleor_3.23"
    # when a call is made
    with KlarnaOrdersClient(BASE, USERNAME, PASSWORD, user_agent=agent) as klarna:
        klarna.get_order(ORDER_ID)
    # then that User-Agent is sent
    assert wire.calls[0].request.headers["User-Agent"] == agent


Call = Callable[[KlarnaOrdersClient], KlarnaResponse]

MUTATING_CALLS: list[tuple[str, str, Call, dict[str, Any] | None]] = [
    ("capture_case", "/captures", lambda k: k.capture(ORDER_ID, {"captured_amount": 6000}, KEY),
     {"captured_amount": 6000}),
    ("refund_case", "/refunds", lambda k: k.refund(ORDER_ID, {"refunded_amount": 3000}, KEY),
     {"refunded_amount": 3000}),
    ("cancel_case", "/cancel", lambda k: k.cancel(ORDER_ID, KEY), None),
    ("release_case", "/release-remaining-authorization",
     lambda k: k.release_remaining_authorization(ORDER_ID, KEY), None),
    ("extend_case", "/extend-authorization-time",
     lambda k: k.extend_authorization_time(ORDER_ID, KEY), None),
    ("shipping_info_case", f"/captures/{CAPTURE_ID}/shipping-info",
     lambda k: k.add_shipping_info(
         ORDER_ID, CAPTURE_ID, {"shipping_info": [{"tracking_number": "63456"}]}, KEY),
     {"shipping_info": [{"tracking_number": "63456"}]}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("suffix", "call", "body"),
    [row[1:] for row in MUTATING_CALLS],
    ids=[row[0] for row in MUTATING_CALLS],
)
def test_every_post_sends_the_idempotency_key(
    wire: responses.RequestsMock,
    client: KlarnaOrdersClient,
    suffix: str,
    call: Call,
    body: dict[str, Any] | None,
) -> None:
    # given Klarna accepts the operation
    wire.post(ORDER_URL + suffix, status=204)
    # when the operation is called with a key
    result = call(client)
    # then it was a POST with the key, auth, and a JSON body only when there is one
    sent = wire.calls[0].request
    assert sent.method == "POST"
    assert sent.headers["Klarna-Idempotency-Key"] == KEY
    assert sent.headers["Authorization"] == f"Basic {BASIC}"
    if body is None:
        assert not sent.body
        assert "Content-Type" not in sent.headers
    else:
        assert isinstance(sent.body, bytes)
        assert json.loads(sent.body) == body
        assert sent.headers["Content-Type"] == "application/json"
    assert result.status == 204
    assert result.log["idempotency_key"] == KEY
    assert result.log["request_body"] == body


@pytest.mark.parametrize("key", ["", None], ids=["empty_case", "none_case"])
def test_mutating_call_without_idempotency_key_is_refused(
    wire: responses.RequestsMock, client: KlarnaOrdersClient, key: Any
) -> None:
    # given no usable idempotency key
    # when a capture is attempted / then it fails before any request is sent
    with pytest.raises(ValueError, match="idempotency_key"):
        client.capture(ORDER_ID, {"captured_amount": 100}, key)
    assert len(wire.calls) == 0


def test_ids_are_escaped_into_one_path_segment(wire: responses.RequestsMock, client: KlarnaOrdersClient) -> None:
    # given an order id with path characters
    wire.get(f"{BASE}/ordermanagement/v1/orders/..%2Fx%3Fy", json={})
    # when it is read / then it stays one path segment
    client.get_order("../x?y")
    assert wire.calls[0].request.url == f"{BASE}/ordermanagement/v1/orders/..%2Fx%3Fy"


# -- success responses ---------------------------------------------------------------------


def test_capture_201_returns_capture_id(wire: responses.RequestsMock, client: KlarnaOrdersClient) -> None:
    # given Klarna creates a capture and answers 201 with an empty body
    wire.post(
        ORDER_URL + "/captures",
        status=201,
        headers={
            "Capture-Id": CAPTURE_ID,
            "Location": f"{ORDER_URL}/captures/{CAPTURE_ID}",
        },
    )
    # when a capture is made
    result = client.capture(ORDER_ID, {"captured_amount": 6000}, KEY)
    # then the Capture-Id is the resource id and the log records the exchange
    assert result.status == 201
    assert result.resource_id == CAPTURE_ID
    assert result.json is None
    assert result.log["status"] == 201
    assert result.log["url"] == ORDER_URL + "/captures"
    assert result.log["response_headers"]["Capture-Id"] == CAPTURE_ID
    assert result.log["response_body"] is None
    assert isinstance(result.log["elapsed_ms"], int)


def test_refund_201_returns_refund_id(wire: responses.RequestsMock, client: KlarnaOrdersClient) -> None:
    # given Klarna creates a refund
    refund_id = "b2cb4f2e-2781-4359-80ad-555735ebb8d8"
    wire.post(ORDER_URL + "/refunds", status=201, headers={"Refund-Id": refund_id})
    # when a refund is made / then the Refund-Id is the resource id
    assert client.refund(ORDER_ID, {"refunded_amount": 3000}, KEY).resource_id == refund_id


def test_capture_without_capture_id_header_falls_back_to_location(
    wire: responses.RequestsMock, client: KlarnaOrdersClient
) -> None:
    # given a 201 that only carries Location
    wire.post(
        ORDER_URL + "/captures",
        status=201,
        headers={"Location": f"{ORDER_URL}/captures/{CAPTURE_ID}"},
    )
    # when a capture is made / then the id comes from the Location's last segment
    assert client.capture(ORDER_ID, {"captured_amount": 1}, KEY).resource_id == CAPTURE_ID


def test_cancel_204(wire: responses.RequestsMock, client: KlarnaOrdersClient) -> None:
    # given Klarna cancels the order
    wire.post(ORDER_URL + "/cancel", status=204)
    # when cancelled
    result = client.cancel(ORDER_ID, KEY)
    # then 204, no body, no resource id
    assert (result.status, result.json, result.resource_id) == (204, None, None)


def test_redirect_is_not_followed(wire: responses.RequestsMock, client: KlarnaOrdersClient) -> None:
    # given Klarna (or a proxy) answers a capture with a redirect
    wire.post(ORDER_URL + "/captures", status=302, headers={"Location": "https://elsewhere/"})
    # when a capture is made / then it is a final API error, not a silent GET elsewhere
    with pytest.raises(KlarnaAPIError) as caught:
        client.capture(ORDER_ID, {"captured_amount": 1}, KEY)
    assert type(caught.value) is KlarnaAPIError
    assert caught.value.retryable is False
    assert len(wire.calls) == 1


def test_large_response_body_is_truncated_in_log(wire: responses.RequestsMock, client: KlarnaOrdersClient) -> None:
    # given a 200 body larger than 10 kB
    big = {"order_id": ORDER_ID, "merchant_data": "x" * 20_000}
    wire.get(ORDER_URL, json=big)
    # when read
    result = client.get_order(ORDER_ID)
    # then the caller gets the whole JSON but the log keeps at most ~10 kB of text
    assert result.json == big
    assert isinstance(result.log["response_body"], str)
    assert len(result.log["response_body"]) <= 10 * 1024 + len("…[truncated]")
    assert result.log["response_body"].endswith("…[truncated]")


# -- API errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "error_class", "retryable"),
    [
        (400, "BAD_VALUE", KlarnaBadRequestError, False),
        (401, "UNAUTHORIZED", KlarnaAuthError, False),
        (403, "CAPTURE_NOT_ALLOWED", KlarnaNotAllowedError, False),
        (404, "NO_SUCH_ORDER", KlarnaNotFoundError, False),
        (409, "CONFLICT", KlarnaConflictError, True),
        (413, "REQUEST_TOO_LARGE", KlarnaBadRequestError, False),
        (422, "UNPROCESSABLE_ENTITY", KlarnaBadRequestError, False),
        (429, "TOO_MANY_REQUESTS", KlarnaRateLimitError, True),
        (500, "INTERNAL_SERVER_ERROR", KlarnaServerError, True),
        (502, "TEMPORARILY_UNAVAILABLE", KlarnaServerError, True),
        (503, "TEMPORARILY_UNAVAILABLE", KlarnaServerError, True),
        (504, "TEMPORARILY_UNAVAILABLE", KlarnaServerError, True),
        (405, "METHOD_NOT_ALLOWED", KlarnaAPIError, False),
    ],
    ids=lambda v: f"{v}_case" if isinstance(v, int) and not isinstance(v, bool) else None,
)
def test_error_status_maps_to_class(
    wire: responses.RequestsMock,
    client: KlarnaOrdersClient,
    status: int,
    code: str,
    error_class: type[KlarnaAPIError],
    retryable: bool,
) -> None:
    # given Klarna rejects a capture with its error format
    message = "Captured amount is higher than the remaining authorized amount."
    wire.post(
        ORDER_URL + "/captures",
        status=status,
        json=_error_body(code, message, "second"),
    )
    # when a capture is made
    with pytest.raises(KlarnaError) as caught:
        client.capture(ORDER_ID, {"captured_amount": 6000}, KEY)
    # then the error has the right class, flag and details, and carries the exchange log
    error = caught.value
    assert type(error) is error_class
    assert isinstance(error, KlarnaAPIError)
    assert error.retryable is retryable
    assert error.http_status == status
    assert error.error_code == code
    assert error.error_messages == [message, "second"]
    assert error.correlation_id == CORRELATION_ID
    assert str(error) == (f"Klarna {status} {code}: {message}; second (correlation_id {CORRELATION_ID})")
    assert error.log is not None
    assert error.log["status"] == status
    assert error.log["correlation_id"] == CORRELATION_ID
    assert error.log["response_body"]["error_code"] == code
    assert error.log["idempotency_key"] == KEY


def test_non_json_502_gives_a_sane_server_error(wire: responses.RequestsMock, client: KlarnaOrdersClient) -> None:
    # given a proxy answers 502 with HTML
    html = "<html><body>\n<h1>502 Bad Gateway</h1>\n</body></html>"
    wire.get(ORDER_URL, status=502, body=html, content_type="text/html")
    # when the order is read
    with pytest.raises(KlarnaServerError) as caught:
        client.get_order(ORDER_ID)
    # then it is a retryable server error with no code and a one-line snippet of the body
    error = caught.value
    assert error.retryable is True
    assert error.error_code is None
    assert error.correlation_id is None
    assert error.error_messages == ["<html><body> <h1>502 Bad Gateway</h1> </body></html>"]
    assert str(error).startswith("Klarna 502: <html>")
    assert error.log is not None
    assert error.log["response_body"] == html


def test_empty_503_body_uses_the_reason_phrase() -> None:
    # given an empty 503 body
    # when classified
    error = error_from_response(503, b"", {}, None)
    # then the message is the HTTP reason phrase
    assert isinstance(error, KlarnaServerError)
    assert error.error_messages == ["Service Unavailable"]
    assert str(error) == "Klarna 503: Service Unavailable"


@given(status=st.integers(min_value=300, max_value=599), body=st.binary(max_size=300))
def test_error_from_response_never_fails_on_arbitrary_bodies(status: int, body: bytes) -> None:
    # given any non-2xx status and any body
    # when classified
    error = error_from_response(status, body, {"Retry-After": "garbage"}, None)
    # then it is a KlarnaAPIError whose retryable flag follows the status
    assert isinstance(error, KlarnaAPIError)
    assert error.http_status == status
    assert error.retryable is (status in (409, 429) or status >= 500)
    assert str(error).startswith(f"Klarna {status}")


# -- rate limiting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "1.5", "X-Ratelimit-Reset": "9"}, 1.5),
        ({"X-Ratelimit-Reset": "1"}, 1.0),
        ({"X-Ratelimit-Reset": "2, 2;w=1"}, 2.0),
        ({"Retry-After": "soon", "X-Ratelimit-Reset": "3"}, 3.0),
        ({"Retry-After": "-4"}, 0.0),
        ({}, None),
    ],
    ids=["retry_after_case", "lowercase_header_wins_case", "ratelimit_reset_case",
         "reset_list_form_case", "bad_retry_after_falls_back_case", "negative_case",
         "no_header_case"],
)  # fmt: skip
def test_429_retry_after_parsing(
    wire: responses.RequestsMock,
    client: KlarnaOrdersClient,
    headers: dict[str, str],
    expected: float | None,
) -> None:
    # given Klarna rate-limits the call
    wire.post(
        ORDER_URL + "/captures",
        status=429,
        json=_error_body("TOO_MANY_REQUESTS", "Too many requests"),
        headers=headers,
    )
    # when a capture is made
    with pytest.raises(KlarnaRateLimitError) as caught:
        client.capture(ORDER_ID, {"captured_amount": 1}, KEY)
    # then retry_after is parsed and the client did not retry by itself
    assert caught.value.retry_after == expected
    assert caught.value.retryable is True
    assert len(wire.calls) == 1


def test_429_retry_after_http_date() -> None:
    # given a Retry-After as an HTTP-date 30 s after "now"
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()
    headers = {"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}
    # when classified
    error = error_from_response(429, b"{}", headers, None, now=lambda: now)
    # then the delay is 30 s
    assert isinstance(error, KlarnaRateLimitError)
    assert error.retry_after == 30.0


class FakeClock:
    """A monotonic clock that only moves when something sleeps or the test advances it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_rate_limiter_allows_burst_then_paces() -> None:
    # given a bucket of 3 tokens refilled at 2 per second
    clock = FakeClock()
    limiter = RateLimiter(2.0, 3, clock=clock, sleep=clock.sleep)
    # when 3 calls come at once
    for _ in range(3):
        limiter.acquire()
    # then none waited
    assert clock.sleeps == []
    # when 2 more come
    limiter.acquire()
    limiter.acquire()
    # then each waited one refill interval
    assert clock.sleeps == pytest.approx([0.5, 0.5])


def test_rate_limiter_refills_while_idle_up_to_burst() -> None:
    # given an emptied bucket
    clock = FakeClock()
    limiter = RateLimiter(10.0, 2, clock=clock, sleep=clock.sleep)
    limiter.acquire()
    limiter.acquire()
    # when a long time passes
    clock.now += 60.0
    # then only `burst` calls go through at once, the next one waits
    limiter.acquire()
    limiter.acquire()
    assert clock.sleeps == []
    limiter.acquire()
    assert clock.sleeps == pytest.approx([0.1])


def test_rate_limiter_concurrent_callers_queue_up() -> None:
    # given a 1-token bucket and a sleep that does not advance time (callers overlap)
    clock = FakeClock()
    waits: list[float] = []
    limiter = RateLimiter(4.0, 1, clock=clock, sleep=waits.append)
    # when 3 callers arrive at the same instant
    for _ in range(3):
        limiter.acquire()
    # then they are spaced one interval apart in arrival order
    assert waits == pytest.approx([0.25, 0.5])


LIMITERS: dict[str, Callable[[float, int], object]] = {
    "local_case": RateLimiter,
    "shared_case": lambda rate, burst: SharedRateLimiter(create_engine("sqlite://"), "k", rate, burst),
}


@pytest.mark.parametrize("make", LIMITERS.values(), ids=LIMITERS.keys())
@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (1.0, 0)], ids=["rate_case", "burst_case"])
def test_rate_limiter_rejects_nonsense(make: Callable[[float, int], object], rate: float, burst: int) -> None:
    # given / when / then: the shared limiter refuses through the local one it falls back to
    with pytest.raises(ValueError, match="must be"):
        make(rate, burst)


def test_client_acquires_a_token_before_each_request(
    wire: responses.RequestsMock,
) -> None:
    # given a client with a 1-token limiter
    clock = FakeClock()
    limiter = RateLimiter(1.0, 1, clock=clock, sleep=clock.sleep)
    wire.get(ORDER_URL, json={})
    wire.post(ORDER_URL + "/cancel", status=204)
    # when two calls are made back to back
    with KlarnaOrdersClient(BASE, USERNAME, PASSWORD, rate_limiter=limiter) as klarna:
        klarna.get_order(ORDER_ID)
        klarna.cancel(ORDER_ID, KEY)
    # then the second waited for a token
    assert clock.sleeps == pytest.approx([1.0])


# -- transport errors ----------------------------------------------------------------------


def _refused() -> requests.ConnectionError:
    reason = NewConnectionError(
        None,  # type: ignore[arg-type]  # urllib3 accepts None here at runtime
        "Failed to establish a new connection: [Errno 111] Connection refused",
    )
    pool_error = MaxRetryError(None, "/ordermanagement", reason)  # type: ignore[arg-type]  # urllib3 accepts None here at runtime
    return requests.ConnectionError(pool_error)


def _dropped() -> requests.ConnectionError:
    reason = RemoteDisconnected("Remote end closed connection without response")
    return requests.ConnectionError(ProtocolError("Connection aborted.", reason))


@pytest.mark.parametrize(
    ("exception", "maybe_performed"),
    [
        (_refused(), False),
        (requests.exceptions.ConnectTimeout("connect timed out"), False),
        (requests.exceptions.ReadTimeout("Read timed out. (read timeout=20.0)"), True),
        (_dropped(), True),
        (requests.exceptions.ChunkedEncodingError("Connection broken"), True),
    ],
    ids=["refused_case", "connect_timeout_case", "read_timeout_case",
         "remote_disconnected_case", "broken_body_case"],
)  # fmt: skip
def test_transport_failure_becomes_transport_error(
    wire: responses.RequestsMock,
    client: KlarnaOrdersClient,
    exception: Exception,
    maybe_performed: bool,
) -> None:
    # given the network fails during a capture
    wire.post(ORDER_URL + "/captures", body=exception)
    # when a capture is made
    with pytest.raises(KlarnaTransportError) as caught:
        client.capture(ORDER_ID, {"captured_amount": 6000}, KEY)
    # then it is retryable, says whether Klarna may have acted, and logs no response
    error = caught.value
    assert error.retryable is True
    assert error.maybe_performed is maybe_performed
    assert error.__cause__ is exception
    assert error.log is not None
    assert error.log["status"] is None
    assert error.log["response_body"] is None
    assert error.log["idempotency_key"] == KEY
    assert error.log["request_body"] == {"captured_amount": 6000}
    assert ORDER_URL + "/captures" in str(error)


def test_invalid_url_is_not_disguised_as_transport_error() -> None:
    # given a misconfigured base URL
    klarna = KlarnaOrdersClient("not a url", USERNAME, PASSWORD)
    # when called / then the programming error surfaces as-is (not retryable forever)
    with pytest.raises(requests.exceptions.RequestException) as caught:
        klarna.get_order(ORDER_ID)
    assert not isinstance(caught.value, KlarnaError)


# -- logging and redaction -----------------------------------------------------------------


def test_one_structured_log_record_per_call(
    wire: responses.RequestsMock,
    client: KlarnaOrdersClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given one success and one 403
    wire.get(ORDER_URL, json={})
    wire.post(ORDER_URL + "/cancel", status=403, json=_error_body("CANCEL_NOT_ALLOWED", "no"))
    caplog.set_level(logging.DEBUG, logger="plugin.klarna.client")
    # when both calls are made
    client.get_order(ORDER_ID)
    with pytest.raises(KlarnaNotAllowedError):
        client.cancel(ORDER_ID, KEY)
    # then there is one record each, with a constant message and the context in extra
    records = [r for r in caplog.records if r.name == "plugin.klarna.client"]
    assert [r.getMessage() for r in records] == ["Klarna call finished"] * 2
    ok, failed = (vars(record) for record in records)
    assert ok["klarna_order_id"] == ORDER_ID
    assert (ok["operation"], ok["status"], ok["outcome"]) == ("get_order", 200, "ok")
    assert failed["operation"] == "cancel"
    assert failed["status"] == 403
    assert failed["correlation_id"] == CORRELATION_ID
    assert failed["error_code"] == "CANCEL_NOT_ALLOWED"
    assert isinstance(failed["elapsed_ms"], int)


def test_credentials_never_appear_in_logs_errors_or_records(
    wire: responses.RequestsMock,
    client: KlarnaOrdersClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given a success, an API error and a transport error
    wire.post(ORDER_URL + "/captures", status=201, headers={"Capture-Id": CAPTURE_ID})
    wire.post(
        ORDER_URL + "/refunds",
        status=401,
        json=_error_body("UNAUTHORIZED", "bad creds"),
    )
    wire.post(ORDER_URL + "/cancel", body=_dropped())
    caplog.set_level(logging.DEBUG)
    # when all three calls are made
    ok = client.capture(ORDER_ID, {"captured_amount": 1}, KEY)
    with pytest.raises(KlarnaAuthError) as api_error:
        client.refund(ORDER_ID, {"refunded_amount": 1}, KEY)
    with pytest.raises(KlarnaTransportError) as transport_error:
        client.cancel(ORDER_ID, KEY)
    # then the Authorization header is redacted and no secret is anywhere
    logs = [ok.log, api_error.value.log, transport_error.value.log]
    for log in logs:
        assert log is not None
        assert log["request_headers"]["Authorization"] == "[REDACTED]"
    texts = [
        json.dumps(logs),
        repr(logs),
        str(api_error.value),
        repr(api_error.value),
        str(transport_error.value),
        repr(transport_error.value),
        repr(client),
        caplog.text,
        repr([vars(record) for record in caplog.records]),
    ]
    for text in texts:
        assert PASSWORD not in text
        assert BASIC not in text
