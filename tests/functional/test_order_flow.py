"""End to end: signed webhooks from the fake Saleor -> app -> worker -> fake Klarna -> notes in Saleor."""

from __future__ import annotations

import contextlib

from plugin.domain.model import Options
from tests.functional.shop import SHOE, TEE, Shop


def test_full_capture_on_fulfilled(shop: Shop) -> None:
    # given an installed app and a Klarna order of 130.00 USD
    shop.install()
    order_id, kid = shop.order()
    tee, shoe = shop.line_ids(order_id)
    # when everything ships at once
    shop.saleor.fulfill(order_id, {tee: 2, shoe: 1}, tracking_number="1Z999")
    shop.sync()
    # then Klarna is fully captured once, with the tracking number, and the shop has one note
    state = shop.kstate(kid)
    assert (state["status"], state["captured_amount"], state["remaining_authorized_amount"]) == ("CAPTURED", 13000, 0)
    assert state["captures"][0]["shipping_info"][0]["tracking_number"] == "1Z999"
    notes = shop.saleor.notes(order_id)
    number = shop.saleor.order(order_id)["number"]  # Saleor's order page titles the shipment #<order>-<n>
    assert len(notes) == 1 and f"captured 130.00 USD for shipment #{number}-1" in notes[0] and "1Z999" in notes[0]
    assert shop.saleor.private_metadata(order_id)["klarna_om.captured"] == "130.00 USD"


def test_one_capture_per_shipment_with_tracking(shop: Shop) -> None:
    shop.install()
    order_id, kid = shop.order()
    tee, shoe = shop.line_ids(order_id)
    # when the order ships in two parts (PARTIALLY_FULFILLED, then FULFILLED)
    shop.saleor.fulfill(order_id, {tee: 1, shoe: 1}, tracking_number="1Z999AA10123456784")
    shop.sync()
    assert shop.kstate(kid)["status"] == "PART_CAPTURED"
    shop.saleor.fulfill(order_id, {tee: 1}, tracking_number="1Z999AA10123456795")
    shop.sync()
    # then two captures, 110.00 and 20.00, each with its shipment's tracking number
    state = shop.kstate(kid)
    assert [c["captured_amount"] for c in state["captures"]] == [11000, 2000]
    assert [c["shipping_info"][0]["tracking_number"] for c in state["captures"]] == [
        "1Z999AA10123456784",
        "1Z999AA10123456795",
    ]
    assert state["status"] == "CAPTURED"
    notes = shop.saleor.notes(order_id)
    assert len(notes) == 2 and "110.00 USD" in notes[0] and "20.00 USD" in notes[1]


def test_cancel_before_capture(shop: Shop) -> None:
    shop.install()
    order_id, kid = shop.order()
    shop.saleor.cancel_order(order_id)
    shop.sync()
    assert shop.kstate(kid)["status"] == "CANCELLED"
    assert shop.performed("cancels") == 1
    assert len(shop.saleor.notes(order_id)) == 1 and "cancelled" in shop.saleor.notes(order_id)[0]


def test_cancel_after_partial_capture_refunds_the_cancelled_shipment_and_releases_the_remainder(shop: Shop) -> None:
    shop.install()
    order_id, kid = shop.order()
    _tee, shoe = shop.line_ids(order_id)
    fulfillment = shop.saleor.fulfill(order_id, {shoe: 1}, tracking_number="T1")
    shop.sync()
    # when the admin cancels the shipment (goods back in stock) and then the order
    shop.saleor.cancel_fulfillment(order_id, fulfillment)
    shop.saleor.cancel_order(order_id)
    shop.sync()
    # then the captured 90.00 is refunded once (issue 10), the remaining 40.00 released, nothing cancelled
    state = shop.kstate(kid)
    assert (state["captured_amount"], state["refunded_amount"], state["remaining_authorized_amount"]) == (9000, 9000, 0)
    assert shop.performed("releases") == 1 and shop.performed("refunds") == 1 and shop.performed("cancels") == 0
    notes = shop.saleor.notes(order_id)
    number = shop.saleor.order(order_id)["number"]
    assert len(notes) == 3 and any("released the remaining authorization of 40.00 USD" in n for n in notes)
    assert any(f"refunded 90.00 USD for cancelled shipment #{number}-1" in n for n in notes)


def test_full_refund_on_returned(shop: Shop) -> None:
    shop.install()
    order_id, kid = shop.order(shipping="10.00")
    tee, shoe = shop.line_ids(order_id)
    fulfillment = shop.saleor.fulfill(order_id, {tee: 2, shoe: 1}, tracking_number="T1")
    shop.sync()
    shop.saleor.return_products(order_id, fulfillment, {tee: 2, shoe: 1})
    shop.sync()
    state = shop.kstate(kid)
    assert shop.saleor.order(order_id)["status"] == "RETURNED"
    assert (state["captured_amount"], state["refunded_amount"]) == (14000, 14000)
    assert shop.performed("refunds") == 2  # the returned goods, then the shipping of a fully returned order
    assert len(shop.saleor.notes(order_id)) == 3


def test_partial_refund_on_partially_returned(shop: Shop) -> None:
    shop.install()
    order_id, kid = shop.order()
    tee, shoe = shop.line_ids(order_id)
    fulfillment = shop.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    shop.sync()
    shop.saleor.return_products(order_id, fulfillment, {tee: 1})
    shop.sync()
    state = shop.kstate(kid)
    assert shop.saleor.order(order_id)["status"] == "PARTIALLY_RETURNED"
    assert (state["captured_amount"], state["refunded_amount"]) == (13000, 2000)
    number = shop.saleor.order(order_id)["number"]
    assert f"refunded 20.00 USD for return #{number}-2" in shop.saleor.notes(order_id)[-1]


def test_return_out_of_a_captured_shipment_refunds_that_unit_only(shop: Shop) -> None:
    # given two captured shipments, as in the real Saleor samples (DESIGN §7)
    shop.install()
    order_id, kid = shop.order()
    tee, shoe = shop.line_ids(order_id)
    first = shop.saleor.fulfill(order_id, {tee: 1, shoe: 1}, tracking_number="A")
    shop.sync()
    shop.saleor.fulfill(order_id, {tee: 1}, tracking_number="B")
    shop.sync()
    # when one Tee moves out of the first shipment into a RETURNED fulfillment
    shop.saleor.return_products(order_id, first, {tee: 1})
    shop.sync()
    # then exactly one refund of 20.00 and no new capture
    state = shop.kstate(kid)
    assert shop.performed("captures") == 2 and shop.performed("refunds") == 1
    assert (state["captured_amount"], state["refunded_amount"]) == (13000, 2000)


def test_the_same_webhook_five_times_gives_one_capture(shop: Shop) -> None:
    shop.install()
    order_id, _kid = shop.order()
    tee, shoe = shop.line_ids(order_id)
    shop.saleor.auto_deliver = False
    shop.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    fulfilled = next(d for d in shop.saleor.outbox if d.event == "ORDER_FULFILLED")
    for _ in range(5):
        assert shop.saleor.deliver(fulfilled)[0] == 200
        shop.sync()
    assert shop.performed("captures") == 1
    assert len(shop.saleor.notes(order_id)) == 1


def test_events_out_of_order_reach_the_right_final_state(shop: Shop) -> None:
    shop.install()
    order_id, kid = shop.order()
    tee, shoe = shop.line_ids(order_id)
    shop.saleor.auto_deliver = False
    first = shop.saleor.fulfill(order_id, {tee: 1, shoe: 1}, tracking_number="A")
    shop.saleor.fulfill(order_id, {tee: 1}, tracking_number="B")
    shop.saleor.return_products(order_id, first, {tee: 1})
    # when the deliveries arrive newest first
    for delivery in reversed(shop.saleor.outbox):
        assert shop.saleor.deliver(delivery)[0] == 200
    shop.sync()
    # then Klarna charges what the customer keeps: the returned Tee was never captured, so it is
    # neither captured nor refunded (charging and refunding it would be money moved for nothing)
    state = shop.kstate(kid)
    assert (state["captured_amount"], state["refunded_amount"]) == (11000, 0)
    assert shop.performed("captures") == 2 and shop.performed("refunds") == 0


def test_the_apps_own_note_does_not_loop(shop: Shop) -> None:
    shop.install()
    order_id, _kid = shop.order()
    tee, shoe = shop.line_ids(order_id)
    shop.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    shop.sync()
    # the note fired ORDER_UPDATED with the app as issuingPrincipal: recorded, not enqueued
    own = [d for d, status in shop.saleor.delivered if d.event == "ORDER_UPDATED" and status == 200]
    assert own
    shop.sync()
    assert len(shop.saleor.notes(order_id)) == 1 and shop.performed("captures") == 1


def test_klarna_500_then_success_gives_one_capture(shop: Shop) -> None:
    shop.install()
    order_id, kid = shop.order()
    tee, shoe = shop.line_ids(order_id)
    shop.klarna.inject("500", times=2, path_contains="/captures", method="POST")
    shop.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    shop.sync()
    assert shop.performed("captures") == 1 and shop.kstate(kid)["captured_amount"] == 13000
    assert len(shop.saleor.notes(order_id)) == 1 and not shop.exceptions()


def test_captured_but_response_lost_retries_with_the_same_key(shop: Shop) -> None:
    shop.install()
    order_id, kid = shop.order()
    tee, shoe = shop.line_ids(order_id)
    shop.klarna.inject("drop_after", times=1, path_contains="/captures", method="POST")
    shop.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    shop.sync()
    keys = [r.idempotency_key for r in shop.klarna.requests if r.method == "POST" and r.path.endswith("/captures")]
    assert shop.performed("captures") == 1 and shop.kstate(kid)["captured_amount"] == 13000
    assert len(keys) >= 1 and len(set(keys)) == 1
    assert len(shop.saleor.notes(order_id)) == 1


def test_a_worker_killed_between_ledger_and_klarna_resumes_with_one_capture(shop: Shop) -> None:
    # given a worker that dies right after writing the ledger row (before the Klarna call)
    shop.install()
    order_id, _kid = shop.order()
    tee, shoe = shop.line_ids(order_id)
    shop.saleor.auto_deliver = False
    shop.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    for delivery in shop.saleor.outbox:
        shop.saleor.deliver(delivery)
    from plugin.klarna.port import KlarnaOrders

    original = KlarnaOrders.capture

    def crash(*args, **kwargs):  # type: ignore[no-untyped-def]  # stands in for KlarnaOrders.capture, any arguments
        raise SystemExit("killed")

    KlarnaOrders.capture = crash  # type: ignore[method-assign]  # patch the method for one test
    try:
        job = shop.worker.claim(1)[0]
        with contextlib.suppress(SystemExit):
            shop.worker.process(job)
    finally:
        KlarnaOrders.capture = original  # type: ignore[method-assign]  # restore the method
    assert [op.state for op in shop.operations()] == ["pending"] and shop.performed("captures") == 0
    # when the lease expires and another worker picks the job up
    from sqlalchemy import update

    from plugin.db.models import Job

    with shop.services.db.transaction() as session:
        session.execute(update(Job).values(leased_until=None))
    shop.sync()
    # then exactly one capture, with the key written before the crash
    assert shop.performed("captures") == 1
    assert [op.state for op in shop.operations()] == ["succeeded"]
    sent = [r.idempotency_key for r in shop.klarna.requests if r.method == "POST"]
    assert sent == [shop.operations()[0].idempotency_key]


def test_an_order_without_a_klarna_id_is_skipped_quietly(shop: Shop) -> None:
    shop.install()
    order_id, _ = shop.order(klarna=False)
    tee, shoe = shop.line_ids(order_id)
    shop.saleor.fulfill(order_id, {tee: 2, shoe: 1})
    shop.sync()
    assert shop.saleor.notes(order_id) == [] and not shop.klarna.requests and not shop.exceptions()


def test_fraud_pending_blocks_the_capture_with_one_note(shop: Shop) -> None:
    shop.install()
    order_id, _kid = shop.order(fraud_status="PENDING")
    tee, shoe = shop.line_ids(order_id)
    shop.saleor.fulfill(order_id, {tee: 1}, tracking_number="A")
    shop.saleor.fulfill(order_id, {tee: 1, shoe: 1}, tracking_number="B")
    shop.sync()
    assert shop.performed("captures") == 0
    notes = shop.saleor.notes(order_id)
    assert len(notes) == 1 and "fraud review is still pending" in notes[0]


def test_an_unknown_klarna_order_becomes_a_process_exception_and_a_note(shop: Shop) -> None:
    shop.install()
    order_id = shop.saleor.create_order(lines=[dict(TEE)], klarna_order_id="7d7c1f1e-0000-4000-8000-000000000000")
    tee = shop.line_ids(order_id)[0]
    shop.saleor.fulfill(order_id, {tee: 2})
    shop.sync()
    [exception] = shop.exceptions()
    assert exception.error_code == "UNKNOWN_KLARNA_ORDER"
    notes = shop.saleor.notes(order_id)
    assert len(notes) == 1 and "does not know order" in notes[0]


def test_a_final_klarna_refusal_is_a_process_exception_with_its_correlation_id(shop: Shop) -> None:
    # given a Klarna order authorized for less than the shop's order (authorization updates off)
    shop.install(options=Options(update_authorization=False))
    kid = shop.klarna.create_order(order_amount=5000)
    order_id = shop.saleor.create_order(lines=[dict(SHOE)], klarna_order_id=kid)
    shoe = shop.line_ids(order_id)[0]
    shop.saleor.fulfill(order_id, {shoe: 1})
    shop.sync()
    # then nothing is sent (the plan sees it) and the admin is told once
    assert shop.performed("captures") == 0
    [exception] = shop.exceptions()
    assert exception.error_code == "EXCEEDS_REMAINING"
    assert len(shop.saleor.notes(order_id)) == 1


def test_an_unconfigured_channel_is_reported_once_when_there_is_something_to_do(shop: Shop) -> None:
    # given an installed app without Klarna credentials
    assert shop.saleor.install(f"{shop.settings.public_base}/api/manifest").ok
    order_id, _kid = shop.order()
    shop.sync()
    # then placing the order says nothing yet (its status maps to no action)
    assert shop.saleor.notes(order_id) == [] and not shop.exceptions()
    # when it ships, twice over
    tee, shoe = shop.line_ids(order_id)
    shop.saleor.fulfill(order_id, {tee: 1})
    shop.saleor.fulfill(order_id, {tee: 1, shoe: 1})
    shop.sync()
    # then one exception and one note tell the admin, and nothing reaches Klarna
    assert [e.error_code for e in shop.exceptions()] == ["NOT_CONFIGURED"]
    assert len(shop.saleor.notes(order_id)) == 1 and "not configured" in shop.saleor.notes(order_id)[0]
    assert shop.klarna.requests == []


def test_a_retry_that_is_blocked_again_reopens_the_exception_with_a_fresh_note(shop: Shop) -> None:
    # given a shipment worth more than Klarna still has authorized, reported once (authorization updates off)
    shop.install(options=Options(update_authorization=False))
    kid = shop.klarna.create_order(order_amount=5000)
    order_id = shop.saleor.create_order(lines=[dict(SHOE)], klarna_order_id=kid)
    shop.saleor.fulfill(order_id, {shop.line_ids(order_id)[0]: 1})
    shop.sync()
    [exception] = shop.exceptions()
    assert exception.state == "open" and len(shop.saleor.notes(order_id)) == 1
    # when the admin presses Retry and the re-check blocks again
    from plugin.services.exceptions import retry_exception

    with shop.services.db.transaction() as session:
        retry_exception(session, exception.id)
    shop.sync()
    # then the exception is open again (not "retried" with nothing open), with a fresh note
    [exception] = shop.exceptions()
    assert (exception.state, exception.reopened) == ("open", 1)
    notes = shop.saleor.notes(order_id)
    assert len(notes) == 2 and notes[1].startswith("Klarna, after Retry: not captured")
    assert shop.performed("captures") == 0
