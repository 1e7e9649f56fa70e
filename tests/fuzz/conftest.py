"""The world the fuzz tests attack: an installed app (Flask test client), a FakeSaleor on loopback
holding genuine signed deliveries and the signing key, a FakeKlarna behind real HTTP.

Every property checks the same three things after each input: no 5xx, no row added, changed or
removed in any table (``Base.metadata.sorted_tables``), no request reached Klarna. Inputs are
counted per test; the count is printed and stored as the JUnit property ``inputs``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import select

from plugin.db.models import Base
from plugin.settings import Settings
from plugin.testing.saleor import Delivery
from tests.functional.shop import Shop

EXAMPLES = int(os.environ.get("KLARNA_OM_FUZZ_EXAMPLES", "250"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@dataclass
class World:
    shop: Shop
    deliveries: list[Delivery]
    tried: Counter[str] = field(default_factory=Counter)
    known: Counter[str] = field(default_factory=Counter)  # inputs that hit a known bug (also in ``tried``)

    @property
    def client(self) -> Any:
        return self.shop.app.test_client()

    def snapshot(self) -> dict[str, list[str]]:
        with self.shop.services.db.transaction() as session:
            return {
                table.name: sorted(repr(tuple(row)) for row in session.execute(select(table)).all())
                for table in Base.metadata.sorted_tables
            }

    def klarna_calls(self) -> int:
        return len(self.shop.klarna.requests)


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    shop = Shop(settings)
    try:
        shop.install()
        # Genuine traffic to mutate: an order created, partly shipped, a note by the app.
        shop.saleor.auto_deliver = False
        order_id, _ = shop.order()
        tee, shoe = shop.line_ids(order_id)
        shop.saleor.fulfill(order_id, {tee: 1, shoe: 1}, tracking_number="1Z999")
        deliveries = list(shop.saleor.outbox)
        shop.saleor.outbox.clear()
        assert {d.event for d in deliveries} >= {"ORDER_CREATED", "FULFILLMENT_CREATED", "ORDER_UPDATED"}
        yield World(shop, deliveries)
    finally:
        shop.close()


REPORTED: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORTED:
        terminalreporter.section("fuzz: inputs tried")
        for line in REPORTED:
            terminalreporter.write_line(line)


def report(world: World, record_property: Any, name: str) -> None:
    total = sum(world.tried.values())
    line = f"[fuzz] {name}: {total} inputs {dict(world.tried)}" + (
        f"; known bug hit by {dict(world.known)}" if world.known else ""
    )
    print(line)
    REPORTED.append(line)
    record_property("inputs", total)
    for key, value in world.tried.items():
        record_property(f"inputs_{key}", value)


def error_type(response: Any) -> str | None:
    try:
        body = json.loads(response.get_data())
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return error.get("type") or error.get("code")
    return None
