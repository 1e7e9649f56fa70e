"""The Saleor GraphQL client at the wire (``responses``): what it sends, what it raises, what it reads once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import graphql
import pytest
import requests
import responses

from plugin.saleor import client as client_module
from plugin.saleor import transactions as tx_wire
from plugin.saleor.client import NOTE_ADD, SaleorClient, SaleorError
from plugin.saleor.port import SaleorOrders
from plugin.services.ports import BooksUnavailable, SaleorUnavailable

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


SCHEMA_FILE = Path(__file__).resolve().parents[2] / "plugin" / "testing" / "data" / "saleor-schema.graphql"
DOCUMENTS = {
    "order": client_module.ORDER_QUERY,
    "order and books": client_module.ORDER_AND_BOOKS_QUERY,
    "books": tx_wire.BOOKS_QUERY,
    "note": client_module.NOTE_ADD,
    "summary metadata": client_module.PRIVATE_METADATA,
    "transaction": tx_wire.TRANSACTION_CREATE,
    "report": tx_wire.EVENT_REPORT,
    "notes and summary": client_module.write_document(2, True),
    "a note": client_module.write_document(1, False),
    "summary": client_module.write_document(0, True),
    "legacy notes": client_module.write_document(2, False, legacy=True),
}


@cache
def _schema() -> graphql.GraphQLSchema:
    return graphql.build_schema(SCHEMA_FILE.read_text())


@pytest.mark.parametrize("document", DOCUMENTS.values(), ids=DOCUMENTS.keys())
def test_the_worker_documents_validate_against_saleor_3_23(document: str) -> None:
    assert graphql.validate(_schema(), graphql.parse(document)) == []


ORDER_RAW = {
    "id": ORDER, "number": "7", "status": "UNFULFILLED", "checkoutId": None,
    "channel": {"slug": "default-channel", "currencyCode": "USD"},
    "total": {"gross": {"amount": 130.0, "currency": "USD"}},
    "shippingPrice": {"gross": {"amount": 0.0}, "tax": {"amount": 0.0}},
    "lines": [], "fulfillments": [], "payments": [], "metadata": [], "events": [],
    "privateMetadata": [{"key": "klarna_order_id", "value": "k-1"}], "klarnaOrderId": "k-1",
    "transactions": [],
}  # fmt: skip


def test_the_order_and_its_books_come_from_one_query(wire: responses.RequestsMock, saleor: SaleorClient) -> None:
    wire.post(API, json={"data": {"order": ORDER_RAW}})
    order, books = saleor.get_order_and_books(ORDER)
    [call] = wire.calls
    assert json.loads(call.request.body)["variables"] == {"id": ORDER, "key": "klarna_order_id"}
    assert order is not None and (order.klarna_order_id, order.total_gross) == ("k-1", 13000)
    assert books is not None and (books.private_klarna_id, books.transactions) == ("k-1", ())
    wire.replace(responses.POST, API, json={"data": {"order": None}})
    assert saleor.get_order_and_books(ORDER) == (None, None)


def test_a_refused_transactions_field_is_books_unavailable_not_an_outage(
    wire: responses.RequestsMock, saleor: SaleorClient
) -> None:
    # Order.transactions is non-null: Saleor's PermissionDenied on it nulls the whole order.
    denied = "To access this path, you need one of the following permissions: MANAGE_ORDERS, HANDLE_PAYMENTS"
    wire.post(
        API,
        json={
            "data": {"order": None},
            "errors": [{"message": denied, "path": ["order", "transactions"],
                        "extensions": {"exception": {"code": "PermissionDenied"}}}],
        },
    )  # fmt: skip
    port = SaleorOrders(saleor)
    with pytest.raises(BooksUnavailable):
        port.get_order_and_books(ORDER, "klarna_order_id")
    wire.replace(responses.POST, API, status=502, body="bad gateway")
    with pytest.raises(SaleorUnavailable):
        port.get_order_and_books(ORDER, "klarna_order_id")


def test_notes_and_summary_are_one_request_answered_per_mutation(
    wire: responses.RequestsMock, saleor: SaleorClient
) -> None:
    # Saleor answers each mutation on its own: the second note failed at the top level (null), the summary was refused.
    wire.post(
        API,
        json={
            "data": {"note0": {"errors": []}, "note1": None, "summary": {"errors": [{"code": "NOT_FOUND"}]}},
            "errors": [{"message": "Internal error", "path": ["note1"]}],
        },
    )
    taken = saleor.write_order(ORDER, ["first", "second"], {"klarna_om.status": "CAPTURED"})
    assert taken == ((True, False), False)
    [call] = wire.calls
    assert json.loads(call.request.body)["variables"] == {
        "order": ORDER, "note0": "first", "note1": "second",
        "summary": [{"key": "klarna_om.status", "value": "CAPTURED"}],
    }  # fmt: skip
    wire.replace(responses.POST, API, status=502, body="bad gateway")
    with pytest.raises(SaleorError):  # nothing known of what Saleor took
        saleor.write_order(ORDER, ["first"], None)


def test_a_saleor_before_3_15_gets_the_notes_as_order_add_note(
    wire: responses.RequestsMock, saleor: SaleorClient
) -> None:
    missing = 'Cannot query field "orderNoteAdd" on type "Mutation". Did you mean "orderAddNote"?'
    wire.post(API, status=400, json={"errors": [{"message": missing}]})
    wire.post(API, json={"data": {"note0": {"errors": []}}})
    assert saleor.write_order(ORDER, ["first"], None) == ((True,), False)
    assert "orderAddNote" in json.loads(wire.calls[1].request.body)["query"] and not saleor.has_note_add
