"""The Klarna client's authorization calls, checked against the strict fake over loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from plugin.domain.model import KlarnaLine, PlannedOperation
from plugin.domain.states import OperationKind
from plugin.klarna.client import KlarnaOrdersClient
from plugin.klarna.errors import KlarnaNotAllowedError
from plugin.klarna.orders import parse_order
from plugin.services.kinds import KINDS
from plugin.testing.klarna import FakeClock, FakeKlarna, FakeKlarnaServer, _request_validator

START = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
UPDATE = OperationKind.UPDATE_AUTHORIZATION
SHIRT = KlarnaLine("physical", "SKU-1", "Shirt", 2, 3000, 6000, 0, 2500, 1200)


@pytest.fixture
def fake() -> FakeKlarna:
    return FakeKlarna(now=FakeClock(START))


@pytest.fixture
def client(fake: FakeKlarna) -> Iterator[KlarnaOrdersClient]:
    with FakeKlarnaServer(fake) as server, KlarnaOrdersClient(server.base_url, "PK_test", "secret") as klarna:
        yield klarna


def key() -> str:
    return str(uuid.uuid4())


def test_update_authorization_sends_a_spec_valid_body_and_lowers_the_amount(
    fake: FakeKlarna, client: KlarnaOrdersClient
) -> None:
    # given an order of 10000
    order_id = fake.create_order(order_amount=10000)
    op = PlannedOperation(UPDATE, order_id, 6000, (SHIRT,), description="Order 7 edited in the shop")
    body = KINDS[op.kind].body(op)
    assert body is not None
    assert not list(
        _request_validator("PATCH", "/ordermanagement/v1/orders/{order_id}/authorization").iter_errors(body)
    )
    # when the authorization is updated to the edited order
    response = client.update_authorization(order_id, body, key())
    # then Klarna answered 204, sent with the idempotency key, and holds the new amount and lines
    assert (response.status, response.json) == (204, None)
    request = fake.requests[-1]
    assert (request.method, request.path) == ("PATCH", f"/ordermanagement/v1/orders/{order_id}/authorization")
    assert request.idempotency_key
    order = parse_order(client.get_order(order_id).json)  # type: ignore[arg-type]  # a dict for GET order
    assert (order.order_amount, order.remaining, order.created_at) == (6000, 6000, START)
    assert fake.order(order_id)["order_lines"] == [SHIRT.as_json()]


def test_refused_increase_raises_not_allowed_and_changes_nothing(fake: FakeKlarna, client: KlarnaOrdersClient) -> None:
    # given a card order Klarna will not raise
    order_id = fake.create_order(order_amount=6000, payment_method="PAY_LATER_BY_CARD")
    three = KlarnaLine("physical", "SKU-1", "Shirt", 3, 3000, 9000, 0, 2500, 1800)
    body = KINDS[UPDATE].body(PlannedOperation(UPDATE, order_id, 9000, (three,)))
    assert body is not None
    # when the increase is sent, then Klarna refuses it with NOT_ALLOWED and the amount stays
    with pytest.raises(KlarnaNotAllowedError) as refused:
        client.update_authorization(order_id, body, key())
    assert refused.value.error_code == "NOT_ALLOWED"
    assert not refused.value.retryable
    assert fake.order(order_id)["order_amount"] == 6000


def test_extend_authorization_time_against_the_fake_until_the_180_day_limit(
    fake: FakeKlarna, client: KlarnaOrdersClient
) -> None:
    # given an order bought at START
    order_id = fake.create_order(order_amount=1000)
    # when it is extended every 27 days
    for _ in range(6):
        fake.advance(days=27)
        assert client.extend_authorization_time(order_id, key()).status == 204
    # then it expires at Klarna's limit, 180 days after the purchase
    order = parse_order(client.get_order(order_id).json)  # type: ignore[arg-type]  # a dict for GET order
    assert order.expires_at == datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
    # and one more extension is refused as final
    with pytest.raises(KlarnaNotAllowedError) as refused:
        client.extend_authorization_time(order_id, key())
    assert "180 days" in str(refused.value)
    # while the same key replays the first answer (a retry is safe)
    again = key()
    fake2 = fake.create_order(order_amount=1000)
    assert client.extend_authorization_time(fake2, again).status == 204
    assert client.extend_authorization_time(fake2, again).status == 204
    assert fake.counts()["extensions"] == 7
