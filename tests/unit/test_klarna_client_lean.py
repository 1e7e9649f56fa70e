"""What the Klarna client no longer repeats per call still behaves: proxies, cookies, per-call headers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import responses

from plugin.klarna.client import KlarnaOrdersClient

BASE = "https://api.playground.klarna.com"
ORDER_URL = f"{BASE}/ordermanagement/v1/orders/o-1"


@pytest.fixture
def wire() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def test_proxy_settings_are_read_from_the_environment_once(
    wire: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire.get(ORDER_URL, json={})
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with KlarnaOrdersClient(BASE, "PK_1", "pw") as klarna:
        klarna.get_order("o-1")
        monkeypatch.delenv("HTTPS_PROXY")  # read with the first call, not on every call
        klarna.get_order("o-1")
    for call in wire.calls:
        assert call.request.req_kwargs["proxies"].get("https") == "http://proxy.example:3128"  # type: ignore[attr-defined]  # responses records the request's kwargs on it


def test_each_call_has_its_own_body_key_and_length_and_no_cookies(wire: responses.RequestsMock) -> None:
    wire.post(ORDER_URL + "/captures", status=201, headers={"Capture-Id": "c-1", "Set-Cookie": "s=1; Path=/"})
    wire.post(ORDER_URL + "/cancel", status=204)
    with KlarnaOrdersClient(BASE, "PK_1", "pä55") as klarna:
        capture = klarna.capture("o-1", {"captured_amount": 100, "description": "Tée"}, "key-1")
        cancel = klarna.cancel("o-1", "key-2")
    sent_capture, sent_cancel = (call.request for call in wire.calls)
    assert sent_capture.body == '{"captured_amount":100,"description":"Tée"}'.encode()
    assert sent_capture.headers["Content-Length"] == str(len(sent_capture.body))
    assert sent_capture.headers["Klarna-Idempotency-Key"] == "key-1"
    assert sent_cancel.headers["Klarna-Idempotency-Key"] == "key-2"
    assert sent_cancel.headers["Content-Length"] == "0" and "Content-Type" not in sent_cancel.headers
    assert "Cookie" not in sent_cancel.headers  # nothing carried from one call to the next
    assert capture.resource_id == "c-1" and cancel.status == 204
    # the log shows each call's own headers, the credentials redacted
    assert capture.log["request_headers"]["Klarna-Idempotency-Key"] == "key-1"
    assert cancel.log["request_headers"]["Klarna-Idempotency-Key"] == "key-2"
    assert cancel.log["request_headers"]["Authorization"] == "[REDACTED]"
    assert capture.log["request_body"] == {"captured_amount": 100, "description": "Tée"}
