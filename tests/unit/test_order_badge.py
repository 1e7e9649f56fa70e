"""The order widget's badge (issue 10 §7): what it warns about, and when the expiry is hidden."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from plugin.domain.model import KlarnaOrder, KlarnaOrderId, Options
from plugin.services.dashboard import order_badge

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
OPEN = KlarnaOrder(
    id=KlarnaOrderId("k-1"), status="AUTHORIZED", fraud_status="ACCEPTED", currency="EUR", order_amount=10000,
    captured=0, refunded=0, remaining=10000, expires_at=NOW + timedelta(days=20),
)  # fmt: skip


def codes(badge: dict[str, object]) -> list[str]:
    return [w["code"] for w in badge["warnings"]]  # type: ignore[attr-defined]  # a list of dicts


def test_a_quiet_open_order_warns_of_nothing_and_shows_its_expiry() -> None:
    badge = order_badge("UNFULFILLED", OPEN, 0, Options(), NOW)
    assert codes(badge) == [] and badge["show_expiry"] is True


def test_fulfilled_but_not_fully_captured_warns() -> None:
    part = replace(OPEN, status="PART_CAPTURED", captured=4000, remaining=6000)
    assert codes(order_badge("FULFILLED", part, 0, Options(), NOW)) == ["NOT_CAPTURED"]
    done = replace(OPEN, status="CAPTURED", captured=10000, remaining=0)
    assert codes(order_badge("FULFILLED", done, 0, Options(), NOW)) == []


def test_an_open_exception_warns() -> None:
    assert codes(order_badge("UNFULFILLED", OPEN, 2, Options(), NOW)) == ["EXCEPTION_OPEN"]


@pytest.mark.parametrize(("days", "near"), [(20, False), (7, True), (1, True)])
def test_expiry_near_warns(days: int, near: bool) -> None:
    order = replace(OPEN, expires_at=NOW + timedelta(days=days))
    assert ("EXPIRY_NEAR" in codes(order_badge("UNFULFILLED", order, 0, Options(), NOW))) is near


@pytest.mark.parametrize(
    "klarna",
    [
        replace(OPEN, status="CANCELLED", remaining=0, expires_at=NOW + timedelta(days=1)),
        replace(OPEN, status="CAPTURED", captured=10000, remaining=0, expires_at=NOW + timedelta(days=1)),
    ],
    ids=["cancelled", "fully-captured"],
)
def test_cancelled_and_fully_captured_orders_hide_the_expiry_and_never_warn_of_it(klarna: KlarnaOrder) -> None:
    badge = order_badge("FULFILLED", klarna, 0, Options(), NOW)
    assert badge["show_expiry"] is False and "EXPIRY_NEAR" not in codes(badge)
