"""End to end, the authorization's whole life (issue 10): signed webhooks and the schedule -> worker ->
strict fake Klarna, on SQLite and PostgreSQL. Klarna's clock (and the app's, and the queue's) is moved
by hand: :meth:`Shop.advance`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from plugin.cli import main
from plugin.domain.model import Options
from plugin.settings import Settings
from plugin.testing.klarna import FakeClock
from tests.conftest import SECRET
from tests.functional.shop import SHOE, TEE, Shop


@pytest.fixture
def life(settings: Settings) -> Iterator[Shop]:
    shop = Shop(settings, clock=FakeClock(datetime.now(UTC)))
    yield shop
    shop.close()


def placed(shop: Shop, **kwargs: Any) -> tuple[str, str]:
    """A Klarna order placed in the shop: (Saleor order id, Klarna order id)."""
    order_id, klarna_id = shop.order(**kwargs)
    assert klarna_id is not None
    return order_id, klarna_id


def open_codes(shop: Shop) -> list[str]:
    return [e.error_code or "" for e in shop.exceptions() if e.state == "open"]


def with_text(shop: Shop, order_id: str, text: str) -> list[str]:
    return [n for n in shop.saleor.notes(order_id) if text in n]


def test_an_open_order_has_its_next_check_in_the_queue_and_a_closed_one_none(life: Shop) -> None:
    life.install()
    order_id, _kid = placed(life)
    tee, shoe = life.line_ids(order_id)
    life.sync()
    # an authorized order is looked at again within the routine re-check (24 h by default)
    due = life.scheduled(order_id)
    assert due is not None and timedelta(hours=23) < due <= timedelta(hours=24)
    # fully captured: nothing authorized any more, no check waits
    life.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    life.sync()
    assert life.scheduled(order_id) is None and life.performed("captures") == 1


def test_the_authorization_is_extended_before_it_lapses_once(life: Shop) -> None:
    # given a partly shipped order (something remains to capture)
    life.install()
    order_id, kid = placed(life)
    tee, _shoe = life.line_ids(order_id)
    life.saleor.fulfill(order_id, {tee: 1})
    life.sync()
    expires = life.kstate(kid)["expires_at"]
    # when the schedule runs through the days up to the extension margin (3 days before expiry)
    for _ in range(26):
        life.advance(days=1)
        life.sync()
    # then Klarna extended it once, the ledger has the row, and the order a note with the new expiry
    state = life.kstate(kid)
    assert life.performed("extensions") == 1 and state["expires_at"] > expires
    new_day = state["expires_at"][:10]
    assert len(with_text(life, order_id, f"authorization extended; it now expires on {new_day}")) == 1
    assert [op.kind for op in life.operations()] == ["capture", "extend_authorization"]
    # and running again the same day does nothing more
    life.sync()
    assert life.performed("extensions") == 1 and not open_codes(life)


def test_klarnas_180_day_limit_is_announced_with_a_note_and_an_exception(life: Shop) -> None:
    life.install()
    order_id, _kid = placed(life)
    tee, _shoe = life.line_ids(order_id)
    life.saleor.fulfill(order_id, {tee: 1})
    life.sync()
    # when the goods wait for months (the schedule extends the authorization as it goes)
    for _ in range(34):
        life.advance(days=5)
        life.sync()
    # then, before the last expiry, the admin has one note and an open exception, and Klarna was never
    # asked to extend past its limit
    assert "AUTHORIZATION_FINAL_EXPIRY" in open_codes(life)
    assert len(with_text(life, order_id, "cannot be extended further")) == 1
    assert life.performed("extensions") >= 5
    asked = [r for r in life.klarna.requests if r.path.endswith("/extend-authorization-time")]
    assert len(asked) == life.performed("extensions")


def test_a_lapse_with_extension_off_is_noted_and_open(life: Shop) -> None:
    life.install(options=Options(extend_authorization=False))
    order_id, kid = placed(life)
    tee, _shoe = life.line_ids(order_id)
    life.saleor.fulfill(order_id, {tee: 1})
    life.sync()
    life.advance(days=26)
    life.sync()
    # three days before: a warning that nothing will extend it
    assert open_codes(life) == ["AUTHORIZATION_EXPIRING"]
    life.advance(days=3)
    life.sync()
    # lapsed: a note and an exception, not silence; and nothing was extended
    assert "AUTHORIZATION_EXPIRED" in open_codes(life)
    assert len(with_text(life, order_id, "authorization has expired")) == 1
    assert life.performed("extensions") == 0 and life.kstate(kid)["remaining_authorized_amount"] == 0


def test_portal_captures_and_refunds_are_recognised_noted_once_and_never_done_twice(life: Shop) -> None:
    life.install()
    order_id, kid = placed(life)
    tee, shoe = life.line_ids(order_id)
    life.sync()
    # when the merchant captures the shoe's 90.00 in Klarna's portal, and the schedule reads Klarna
    life.klarna.portal_capture(kid, 9000)
    life.advance(hours=25)
    life.sync()
    assert len(with_text(life, order_id, "seen in Klarna: captured 90.00 USD outside this app")) == 1
    # and then the shoe ships in Saleor
    life.saleor.fulfill(order_id, {shoe: 1})
    life.sync()
    # then the shipment is not captured again
    assert life.performed("captures") == 1 and not open_codes(life)
    # when 20.00 is refunded in the portal that no return in Saleor explains
    life.klarna.portal_refund(kid, 2000)
    for _ in range(3):
        life.advance(hours=25)
        life.sync()
    # then it is noted once, however often the order is read again, and the admin must look at it
    assert len(with_text(life, order_id, "seen in Klarna: refunded 20.00 USD outside this app")) == 1
    assert len(with_text(life, order_id, "seen in Klarna: captured")) == 1
    assert open_codes(life) == ["DRIFT_REFUNDED"]
    # and the tees are captured when they ship, once; nothing is refunded by the app
    life.saleor.fulfill(order_id, {tee: 2})
    life.sync()
    state = life.kstate(kid)
    assert (state["captured_amount"], state["remaining_authorized_amount"]) == (13000, 0)
    assert life.performed("captures") == 2 and life.performed("refunds") == 1  # the portal's own


def test_a_captured_shipment_cancelled_in_saleor_is_refunded_once(life: Shop) -> None:
    life.install()
    order_id, kid = placed(life)
    tee, shoe = life.line_ids(order_id)
    first = life.saleor.fulfill(order_id, {shoe: 1})
    life.sync()
    # when the shipment is cancelled in Saleor (goods back in stock)
    life.saleor.cancel_fulfillment(order_id, first)
    life.sync()
    life.advance(hours=25)
    life.sync()
    # then its 90.00 is refunded once, with a note
    state = life.kstate(kid)
    assert (state["captured_amount"], state["refunded_amount"]) == (9000, 9000)
    assert life.performed("refunds") == 1
    number = life.saleor.order(order_id)["number"]
    assert len(with_text(life, order_id, f"refunded 90.00 USD for cancelled shipment #{number}-1")) == 1
    # and later checks, and the tees shipping, refund nothing more
    life.advance(hours=25)
    life.sync()
    life.saleor.fulfill(order_id, {tee: 2})
    life.sync()
    state = life.kstate(kid)
    assert (state["captured_amount"], state["refunded_amount"]) == (13000, 9000)
    assert life.performed("refunds") == 1 and life.performed("captures") == 2


def test_a_cancelled_shipment_is_only_flagged_where_the_channel_says_so(life: Shop) -> None:
    life.install(options=Options(cancelled_shipment="flag"))
    order_id, _kid = placed(life)
    _tee, shoe = life.line_ids(order_id)
    first = life.saleor.fulfill(order_id, {shoe: 1})
    life.sync()
    life.saleor.cancel_fulfillment(order_id, first)
    life.sync()
    assert life.performed("refunds") == 0 and open_codes(life) == ["SHIPMENT_CANCELLED"]


def test_leftover_authorization_is_released_when_nothing_is_left_to_ship(life: Shop) -> None:
    # given Klarna authorized 150.00 for an order of 130.00 (the merchant does not update authorizations)
    life.install(options=Options(update_authorization=False))
    kid = life.klarna.create_order(order_amount=15000)
    order_id = life.saleor.create_order(lines=[dict(TEE), dict(SHOE)], klarna_order_id=kid)
    tee, shoe = life.line_ids(order_id)
    # when everything ships
    life.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    life.sync()
    # then 130.00 is captured and the 20.00 left over is released, with a note; no check waits
    state = life.kstate(kid)
    assert (state["status"], state["captured_amount"], state["remaining_authorized_amount"]) == ("CAPTURED", 13000, 0)
    assert life.performed("releases") == 1
    assert len(with_text(life, order_id, "released the remaining authorization of 20.00 USD")) == 1
    assert life.scheduled(order_id) is None


def test_an_edit_before_capture_lowers_the_authorization(life: Shop) -> None:
    # given Klarna authorized 150.00 and the shop's unconfirmed order is now worth 130.00 (edited
    # before capture: Saleor edits lines only in DRAFT and UNCONFIRMED)
    life.install()
    kid = life.klarna.create_order(order_amount=15000)
    order_id = life.saleor.create_order(lines=[dict(TEE), dict(SHOE)], klarna_order_id=kid, status="UNCONFIRMED")
    life.sync()
    # then Klarna's authorization follows the order, with a note; shipping captures within it
    assert life.kstate(kid)["order_amount"] == 13000 and life.performed("authorization_updates") == 1
    assert len(with_text(life, order_id, "authorization changed to 130.00 USD")) == 1
    life.saleor.confirm_order(order_id)
    tee, shoe = life.line_ids(order_id)
    life.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    life.sync()
    assert life.kstate(kid)["status"] == "CAPTURED" and life.performed("releases") == 0


def test_an_increase_klarna_refuses_is_an_exception_saying_what_to_do(life: Shop) -> None:
    # given a card order authorized for 50.00 while the shop's order is worth 90.00
    life.install()
    kid = life.klarna.create_order(order_amount=5000, payment_method="PAY_LATER_BY_CARD")
    order_id = life.saleor.create_order(lines=[dict(SHOE)], klarna_order_id=kid)
    life.sync()
    # then Klarna's amount stays, and the admin is told what the merchant can do, once
    assert life.kstate(kid)["order_amount"] == 5000 and life.performed("authorization_updates") == 0
    assert open_codes(life) == ["AUTHORIZATION_UPDATE_REFUSED"]
    assert len(with_text(life, order_id, "remove items")) == 1
    # and shipping captures nothing beyond what Klarna authorized
    life.saleor.fulfill(order_id, {life.line_ids(order_id)[0]: 1})
    life.sync()
    assert life.performed("captures") == 0 and life.kstate(kid)["captured_amount"] == 0


def test_fraud_pending_is_rechecked_on_the_schedule_and_captured_once_accepted(life: Shop) -> None:
    life.install()
    order_id, kid = placed(life, fraud_status="PENDING")
    tee, shoe = life.line_ids(order_id)
    life.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    life.sync()
    # a pending review: nothing captured, a note, no exception, and a check due within 15 minutes
    assert life.performed("captures") == 0 and not open_codes(life)
    assert len(with_text(life, order_id, "fraud review is still pending")) == 1
    due = life.scheduled(order_id)
    assert due is not None and due <= timedelta(minutes=15)
    # when Klarna accepts and the check comes due, the shipment is captured without a new webhook
    life.klarna.set_fraud_status(kid, "ACCEPTED")
    life.advance(minutes=16)
    life.sync()
    assert life.performed("captures") == 1 and life.kstate(kid)["status"] == "CAPTURED"


def test_fraud_rejected_means_no_capture_a_note_and_an_exception(life: Shop) -> None:
    life.install()
    order_id, kid = placed(life, fraud_status="PENDING")
    tee, shoe = life.line_ids(order_id)
    life.sync()
    life.klarna.set_fraud_status(kid, "REJECTED")
    life.advance(minutes=16)
    life.sync()
    assert "FRAUD_REJECTED" in open_codes(life)
    assert len(with_text(life, order_id, "do not ship")) == 1
    life.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    life.sync()
    assert life.performed("captures") == 0
    assert len(with_text(life, order_id, "do not ship")) == 1


def test_an_exception_closes_once_its_cause_is_gone(life: Shop) -> None:
    # given a fraud decision that blocks the order, then the order cancelled in Saleor
    life.install()
    order_id, kid = placed(life, fraud_status="PENDING")
    life.sync()
    life.klarna.set_fraud_status(kid, "REJECTED")
    life.advance(minutes=16)
    life.sync()
    assert open_codes(life) == ["FRAUD_REJECTED"]
    life.saleor.cancel_order(order_id)
    life.sync()
    # then Klarna is cancelled and the exception is resolved (level-triggered: nothing blocks any more)
    assert life.kstate(kid)["status"] == "CANCELLED"
    assert open_codes(life) == [] and [e.state for e in life.exceptions()] == ["resolved"]


def test_reconcile_checks_every_open_order_now_with_a_progress_bar(life: Shop, tmp_path: Path) -> None:
    # given two open orders whose next check is a day away, and a capture made in Klarna's portal
    life.install()
    (first, kid), (second, _other) = placed(life), placed(life)
    life.sync()
    life.klarna.portal_capture(kid, 2000)
    env = {
        "DATABASE_URL": life.settings.database_url,
        "KLARNA_APP_SECRET_KEYS": SECRET,
        "KLARNA_APP_INSTANCE_PATH": str(tmp_path / "cli-instance"),
        "KLARNA_APP_LOG_LEVEL": "ERROR",
        "KLARNA_BASE_URL": life.klarna_server.base_url,
        "KLARNA_APP_SALEOR_ALLOW_LOOPBACK": "1",  # the fake Saleor listens on 127.0.0.1
    }
    # when the admin runs `klarna-om reconcile --run`
    result = CliRunner().invoke(main, ["reconcile", "--run"], env=env)
    # then both orders are checked now: the portal capture is seen and noted, and each keeps its schedule
    assert result.exit_code == 0, result.output
    assert "2 open order(s) queued for a check now" in result.output and "Checking" in result.output
    assert len(with_text(life, first, "seen in Klarna: captured 20.00 USD outside this app")) == 1
    assert with_text(life, second, "seen in Klarna") == []
    assert all(life.scheduled(order) is not None for order in (first, second))
