"""The sync's wiring of Saleor's books on the in-memory ports: the summary after the operations, the
books as a step of their own (a failed report never repeats the Klarna part), and the source rules."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from plugin.domain.ledger import Changes
from plugin.domain.model import Action
from plugin.domain.requests import RequestState
from plugin.domain.states import OperationState
from plugin.domain.transactions import ActionKind, AppRef, EventType, SaleorTransaction
from plugin.services.ports import SaleorUnavailable
from plugin.services.sync import BOOKS_RECHECK_SECONDS, BOOKS_REFUSAL_RETRY_SECONDS, SyncDeps, sync_order
from tests.unit.test_books_property import ORDER, SHIPPING, TOTAL, Shop


def _deps(shop: Shop) -> SyncDeps:
    return SyncDeps(
        repo=shop.ledger, saleor_for=lambda _u, _t: shop.saleor, klarna_for=lambda _m: shop.klarna,
        retry_base=0.0, monotonic=lambda: shop.ledger.clock,
    )  # fmt: skip


def test_the_summary_is_klarnas_state_after_the_operations_also_without_books() -> None:
    shop = Shop()
    shop.saleor.handle_payments = False  # an older installation: notes and metadata only
    shop.ship(everything=True)
    shop.run()
    assert shop.klarna.orders[shop.kid].status == "CAPTURED"
    assert shop.saleor.metadata[ORDER]["klarna_om.status"] == "CAPTURED"
    assert shop.saleor.transactions == {}


def test_a_report_saleor_cannot_take_now_is_retried_alone_without_a_second_capture() -> None:
    shop = Shop()
    shop.run()  # the transaction exists
    shop.ship(everything=True)
    [job] = shop.ledger.claim("w", lease_seconds=60, limit=1)
    calls = {"n": 0}
    report = shop.saleor.report_event

    def down_once(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise SaleorUnavailable("Saleor not reachable")
        return report(*args)  # type: ignore[arg-type]  # the port's own arguments, passed through

    shop.saleor.report_event = down_once  # type: ignore[method-assign]  # Saleor down for one report
    outcome = sync_order(_deps(shop), job)
    assert outcome.performed == [f"capture {TOTAL // 100}.00 EUR"] and outcome.retry_in is None
    assert outcome.again_in == BOOKS_RECHECK_SECONDS
    [tx] = shop.saleor.transactions[ORDER]
    assert tx.charged == 0  # not booked yet
    shop.run()
    [tx] = shop.saleor.transactions[ORDER]
    assert tx.charged == TOTAL and len(shop.klarna.performed) == 1  # booked; Klarna captured once


def test_another_apps_transaction_means_nothing_is_written() -> None:
    shop = Shop()
    other = AppRef("QXBwOjk5OQ==", "com.example.klarna-payments", "Klarna payments")
    foreign = SaleorTransaction("tx-f", "Klarna", shop.kid, other, "EUR", authorized=TOTAL)
    shop.saleor.transactions[ORDER] = [foreign]
    shop.ship(everything=True)
    shop.run()
    assert shop.klarna.performed == [] and shop.klarna.calls == []
    assert shop.saleor.notes == {} and shop.saleor.metadata == {}
    assert shop.saleor.transactions[ORDER] == [foreign]
    # Allowed by its identifier: acts with notes and metadata; that app keeps its books.
    star = shop.ledger.channels["*"]
    shop.ledger.channels["*"] = replace(star, options=replace(star.options, allowed_payment_apps=(other.identifier,)))
    shop.publish()
    shop.run()
    assert [p[0] for p in shop.klarna.performed] == ["capture"] and len(shop.saleor.notes[ORDER]) == 1
    assert shop.saleor.transactions[ORDER] == [foreign]


def test_a_klarna_order_in_another_currency_is_an_exception_never_an_operation() -> None:
    shop = Shop()
    shop.klarna.orders[shop.kid] = replace(shop.klarna.orders[shop.kid], currency="SEK")
    shop.ship(everything=True)
    shop.run()
    assert shop.klarna.performed == [] and ORDER not in shop.saleor.transactions
    [exc] = shop.ledger.exceptions.values()
    assert exc.code == "CURRENCY_MISMATCH" and "not acted on" in shop.saleor.notes[ORDER][0]


def test_a_refused_charge_is_closed_as_a_failure_with_the_reason() -> None:
    shop = Shop()
    shop.run()
    [tx] = shop.saleor.transactions[ORDER]
    shop.ledger.record_request(ORDER, tx, ActionKind.CHARGE, TOTAL + 1)
    shop.run()
    [tx] = shop.saleor.transactions[ORDER]
    [failure] = [e for e in tx.events if e.type is EventType.CHARGE_FAILURE]
    assert "remains authorized" in failure.message and shop.klarna.performed == []


def _failure_of(shop: Shop, psp: str) -> str:
    [tx] = shop.saleor.transactions[ORDER]
    [failure] = [e for e in tx.events if e.psp_reference == psp and e.type.endswith("_FAILURE")]
    return failure.message


def test_requests_the_run_cannot_perform_fail_at_once_instead_of_staying_pending() -> None:
    shop = Shop()
    shop.run()  # the transaction exists; nothing done in Klarna yet, so the match is checked again
    [tx] = shop.saleor.transactions[ORDER]
    # The Klarna order no longer fits the shop's order: no operation, and the button gets its answer.
    shop.klarna.orders[shop.kid] = replace(shop.klarna.orders[shop.kid], currency="SEK")
    charge = shop.ledger.record_request(ORDER, tx, ActionKind.CHARGE, 500)
    shop.run()
    assert shop.klarna.performed == []
    assert "not acted on" in _failure_of(shop, charge.psp_reference)
    assert shop.ledger.requests[charge.id].state is RequestState.REPORTED
    # Klarna does not know the order any more.
    del shop.klarna.orders[shop.kid]
    refund = shop.ledger.record_request(ORDER, tx, ActionKind.CANCEL, TOTAL)
    shop.run()
    assert "does not know order" in _failure_of(shop, refund.psp_reference)
    # No credentials for the channel.
    shop.ledger.channels["*"] = replace(shop.ledger.channels["*"], username="", password="")
    cancel = shop.ledger.record_request(ORDER, tx, ActionKind.CANCEL, TOTAL)
    shop.run()
    assert "not configured" in _failure_of(shop, cancel.psp_reference)
    events = shop.saleor.transactions[ORDER][0].events
    shop.ledger.enqueue(ORDER)
    shop.run()
    assert shop.saleor.transactions[ORDER][0].events == events  # each failure reported once


class Kill(BaseException):
    """The worker process dies."""


def _manual_capture(shop: Shop) -> None:
    """A merchant who captures with the dashboard's button, not on fulfilment."""
    star = shop.ledger.channels["*"]
    mapping = {status: Action.NONE for status in star.mapping} | {"CANCELED": Action.CANCEL}
    shop.ledger.channels["*"] = replace(star, mapping=mapping)


FIRST_SHIPMENT = 5000 + SHIPPING  # tee x2, and the shipping goes with the first capture


def _dies_after_klarna(shop: Shop) -> None:
    capture = shop.klarna.capture

    def dies(*args: Any) -> Any:
        capture(*args)
        raise Kill

    shop.klarna.capture = dies  # type: ignore[method-assign]  # the process dies after Klarna answered


def _dies_after_the_result(shop: Shop) -> None:
    commit = shop.ledger.commit

    def dies(job: Any, changes: Changes, **kw: Any) -> Any:
        result = commit(job, changes, **kw)
        if any(u.operation.state is OperationState.SUCCEEDED for u in changes.operations):
            raise Kill
        return result

    shop.ledger.commit = dies  # type: ignore[method-assign]  # the process dies after recording the capture


CRASHES = {"after the Klarna call": _dies_after_klarna, "after the result": _dies_after_the_result}


@pytest.mark.parametrize("crash", [None, *CRASHES])
def test_a_charge_for_exactly_a_shipment_is_captured_with_its_lines(crash: str | None) -> None:
    shop = Shop()
    _manual_capture(shop)
    shop.ship(everything=False)  # the tee shipped; the shoe not yet
    shop.run()
    [tx] = shop.saleor.transactions[ORDER]
    request = shop.ledger.record_request(ORDER, tx, ActionKind.CHARGE, FIRST_SHIPMENT)
    if crash is not None:
        [job] = shop.ledger.claim("w", lease_seconds=60, limit=1)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(shop.klarna, "capture", shop.klarna.capture)  # undone when the block ends
            patch.setattr(shop.ledger, "commit", shop.ledger.commit)
            CRASHES[crash](shop)
            with pytest.raises(Kill):
                sync_order(_deps(shop), job)
        shop.ledger.expire_leases()
    shop.run()
    # One capture, under the shipment's reference, with its lines; booked under the request's pspReference.
    [capture] = shop.klarna.orders[shop.kid].captures
    assert (capture.reference, capture.amount) == ("ful-1", FIRST_SHIPMENT)
    assert sorted((ln.reference, ln.quantity) for ln in capture.lines) == [("TEE", 2), ("shipping", 1)]
    [tx] = shop.saleor.transactions[ORDER]
    [charge] = [e for e in tx.events if e.type is EventType.CHARGE_SUCCESS]
    assert (charge.psp_reference, charge.amount) == (request.psp_reference, FIRST_SHIPMENT)
    assert shop.ledger.requests[request.id].state is RequestState.REPORTED
    # The shoe ships and the merchant captures on fulfilment from now on: only the shoe is captured.
    star = shop.ledger.channels["*"]
    shop.ledger.channels["*"] = replace(star, mapping={**star.mapping, "FULFILLED": Action.CAPTURE})
    shop.ship(everything=True)
    shop.run()
    assert [(c.reference, c.amount) for c in shop.klarna.orders[shop.kid].captures] == [
        ("ful-1", FIRST_SHIPMENT), ("ful-2", 8000),
    ]  # fmt: skip
    assert shop.saleor.transactions[ORDER][0].charged == TOTAL


def test_a_charge_for_another_amount_is_captured_by_amount_and_counted_by_the_plan() -> None:
    shop = Shop()
    _manual_capture(shop)
    shop.ship(everything=False)
    shop.run()
    [tx] = shop.saleor.transactions[ORDER]
    request = shop.ledger.record_request(ORDER, tx, ActionKind.CHARGE, 2000)
    shop.run()
    [capture] = shop.klarna.orders[shop.kid].captures
    assert (capture.reference, capture.amount, capture.lines) == (request.psp_reference, 2000, ())


def test_a_refused_books_read_is_asked_again_only_every_ten_minutes() -> None:
    # given an installation without HANDLE_PAYMENTS and one worker process (one SyncDeps)
    shop = Shop()
    shop.saleor.handle_payments = False
    deps = _deps(shop)

    def sync_after(seconds: float) -> None:
        shop.ledger.clock += seconds
        shop.ledger.enqueue(ORDER)
        [job] = shop.ledger.claim("w", lease_seconds=60, limit=1)
        sync_order(deps, job)

    # when the order is synced, then again a minute later
    sync_after(0)
    sync_after(60)
    # then Saleor was asked for the books once; the second run read the order alone
    assert shop.saleor.books_refused == 1 and shop.saleor.transactions == {}
    # when the merchant grants HANDLE_PAYMENTS, a run ten minutes after the refusal asks again and keeps the books
    shop.saleor.handle_payments = True
    sync_after(BOOKS_REFUSAL_RETRY_SECONDS - 60)
    [tx] = shop.saleor.transactions[ORDER]
    assert tx.psp_reference == shop.kid and deps.books_refused == {}
