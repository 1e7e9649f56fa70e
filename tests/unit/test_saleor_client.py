"""The Saleor GraphQL client at the wire (``responses``): what it sends, what it raises, what it reads once."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
import responses

from plugin.saleor.client import NOTE_ADD, SaleorClient, SaleorError

API = "https://shop.example.com/graphql/"
ORDER = "T3JkZXI6MQ=="


@pytest.fixture
def wire() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def saleor() -> Iterator[SaleorClient]:
    client = SaleorClient(API, "app-token")
    yield client
    client.close()


def test_a_note_is_posted_as_written_with_the_app_token(wire: responses.RequestsMock, saleor: SaleorClient) -> None:
    wire.post(API, json={"data": {"orderNoteAdd": {"errors": []}}})
    saleor.add_note(ORDER, "Klarna: captured 130.00 USD.")
    saleor.add_note(ORDER, "second")
    first, second = (call.request for call in wire.calls)
    assert first.headers["Authorization"] == "Bearer app-token"
    assert first.headers["Content-Type"] == "application/json"
    assert json.loads(first.body) == {
        "query": NOTE_ADD,
        "variables": {"order": ORDER, "message": "Klarna: captured 130.00 USD."},
    }
    assert json.loads(second.body)["variables"]["message"] == "second"
    assert "Cookie" not in second.headers


def test_graphql_errors_and_refusals_raise(wire: responses.RequestsMock, saleor: SaleorClient) -> None:
    wire.post(API, json={"errors": [{"message": "You do not have permission"}]})
    with pytest.raises(SaleorError, match="GraphQL error"):
        saleor.add_note(ORDER, "x")
    wire.replace(responses.POST, API, json={"data": {"orderNoteAdd": {"errors": [{"code": "NOT_FOUND"}]}}})
    with pytest.raises(SaleorError, match="note refused"):
        saleor.add_note(ORDER, "x")


def test_unreachable_or_non_graphql_answers_raise_and_the_next_call_reconnects(
    wire: responses.RequestsMock, saleor: SaleorClient
) -> None:
    wire.post(API, body=requests.ConnectionError("refused"))
    with pytest.raises(SaleorError, match="not reachable"):
        saleor.add_note(ORDER, "x")
    wire.replace(responses.POST, API, status=502, body="<html>bad gateway</html>")
    with pytest.raises(SaleorError, match="not reachable"):
        saleor.add_note(ORDER, "x")
    wire.replace(responses.POST, API, json={"data": {"orderNoteAdd": {"errors": []}}})
    saleor.add_note(ORDER, "x")


def test_proxy_settings_are_read_from_the_environment_once(
    wire: responses.RequestsMock, saleor: SaleorClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire.post(API, json={"data": {"orderNoteAdd": {"errors": []}}})
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    saleor.add_note(ORDER, "x")
    monkeypatch.delenv("HTTPS_PROXY")  # read when the session opened, not on every call
    saleor.add_note(ORDER, "y")
    for call in wire.calls:
        assert call.request.req_kwargs["proxies"].get("https") == "http://proxy.example:3128"  # type: ignore[attr-defined]  # responses records the request's kwargs on it
