"""TRANSACTION_*_REQUESTED under mutated, validly signed bodies: never a 5xx, never a success body
on a 4xx, and an answered pspReference always names exactly one recorded request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from plugin.db.models import PaymentRequest
from plugin.settings import Settings
from tests.functional.shop import Shop

leaf = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(
    leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=8
)


@pytest.fixture
def world(settings: Settings) -> Iterator[tuple[Shop, Any, dict[str, Any]]]:
    shop = Shop(settings)
    shop.install()
    order_id, _ = shop.order()
    tx_id = shop.saleor.order(order_id)["transactions"][0]["id"]
    shop.saleor.request_action(tx_id, "CHARGE", "10.00")
    delivery = next(d for d, _ in reversed(shop.saleor.delivered) if d.event.startswith("TRANSACTION_"))
    yield shop, delivery, json.loads(delivery.body)
    shop.close()


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(copy[path[0]], path[1:], new)
    return copy


@given(data=st.data())
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_mutated_signed_requests_never_fail_the_server(world: tuple[Shop, Any, dict[str, Any]], data: Any) -> None:
    shop, delivery, genuine = world
    body_obj: Any = genuine
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(body_obj)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        body_obj = _replace(body_obj, path, data.draw(json_values))
    body = json.dumps(body_obj).encode()
    event = data.draw(st.sampled_from(["transaction_charge_requested", "transaction_refund_requested",
                                       "transaction_cancelation_requested"]))  # fmt: skip
    headers = {**delivery.headers, "Saleor-Event": event, "Saleor-Signature": shop.saleor.sign(body)}
    response = shop.app.test_client().post(urlsplit(delivery.target_url).path, data=body, headers=headers)
    answer = response.get_json(silent=True) or {}
    assert response.status_code < 500
    if response.status_code >= 400:
        assert "pspReference" not in answer and not str(answer.get("result", "")).endswith("_SUCCESS")
    if "pspReference" in answer:
        assert "result" not in answer
        with shop.services.db.transaction() as session:
            rows = session.scalars(
                select(PaymentRequest).where(PaymentRequest.psp_reference == answer["pspReference"])
            ).all()
        assert (len(rows) == 1 and rows[0].amount > 0) or rows[0].action == "CANCEL"
