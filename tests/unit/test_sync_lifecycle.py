"""The sync use case with the authorization's life wired in (issue 10), on the in-memory ports."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from plugin.domain.ledger import LedgerOperation
from plugin.domain.states import ExceptionState, OperationKind, OperationState
from plugin.services.lifecycle import app_history
from tests.unit.test_sync_use_case import NOW, ORDER, Rig


def _unshipped(rig: Rig) -> None:
    order = rig.saleor.orders[ORDER]
    rig.saleor.orders[ORDER] = replace(order, status="UNFULFILLED", fulfillments=())


def _row(
    op_id: int, kind: OperationKind, state: OperationState, resource: str | None = None, amount: int = 100
) -> LedgerOperation:
    return LedgerOperation(
        id=op_id, kind=kind, reference=f"r{op_id}", amount=amount, currency="EUR", klarna_order_id="k",
        idempotency_key=f"key{op_id}", generation=0, state=state, klarna_resource_id=resource,
    )  # fmt: skip


def test_the_history_the_planner_sees_is_the_ledgers() -> None:
    history = app_history(
        [
            _row(1, OperationKind.CAPTURE, OperationState.SUCCEEDED, "cap-1"),
            _row(2, OperationKind.CAPTURE, OperationState.PENDING),
            _row(3, OperationKind.REFUND, OperationState.SUCCEEDED, "ref-1"),
            _row(4, OperationKind.UPDATE_AUTHORIZATION, OperationState.SUCCEEDED),
            _row(5, OperationKind.UPDATE_AUTHORIZATION, OperationState.FAILED, amount=9000),
            _row(6, OperationKind.RELEASE, OperationState.SUCCEEDED),
        ]
    )
    assert history.capture_ids == {"cap-1"} and history.refund_ids == {"ref-1"}
    assert (history.updates, history.refused_update_amounts) == (1, frozenset({9000}))
    assert history.released and not history.cancelled


def test_a_status_that_maps_to_nothing_still_reads_klarna_and_schedules_the_next_check() -> None:
    rig = Rig()
    rig.shop()
    _unshipped(rig)
    rig.run()
    # Klarna was read, nothing was done, and the order's check waits a day (the routine re-read)
    assert rig.klarna.calls == ["get_order"] and not rig.klarna.performed
    job = rig.ledger.job(ORDER)
    assert job.due and job.run_after == 1 + 24 * 3600  # it ran at 1 on the ledger's clock
    # a webhook for the order brings the check forward to now
    rig.ledger.enqueue(ORDER)
    assert rig.ledger.job(ORDER).run_after == rig.ledger.clock


def test_a_fully_captured_order_has_no_check_waiting() -> None:
    rig = Rig()
    rig.shop()
    rig.run()
    assert [p[0] for p in rig.klarna.performed] == ["capture"] and not rig.ledger.job(ORDER).due


def test_the_authorization_is_extended_and_the_note_tells_the_new_expiry() -> None:
    rig = Rig()
    kid = rig.shop()
    _unshipped(rig)
    rig.klarna.now = lambda: NOW
    rig.klarna.orders[kid] = replace(
        rig.klarna.orders[kid], expires_at=NOW + timedelta(days=2), created_at=NOW - timedelta(days=26)
    )
    rig.run()
    assert [p[0] for p in rig.klarna.performed] == ["extend_authorization"]
    new_expiry = NOW + timedelta(days=28)
    assert rig.notes() == [f"Klarna: authorization extended; it now expires on {new_expiry:%Y-%m-%d %H:%M} UTC."]
    # the check comes back three days before the new expiry at the latest (the routine re-read is sooner)
    assert rig.ledger.job(ORDER).due


def test_a_refused_update_is_no_exception_of_its_own_but_the_replanned_block_is() -> None:
    # given Klarna authorized 70.85 for an order of 130.00 and refuses any increase
    rig = Rig()
    rig.shop(authorized=7085)
    _unshipped(rig)
    rig.klarna.increases = False
    rig.run()
    # then the update was tried once; the ledger row failed; the next run (at once) opened one
    # exception saying what the merchant can do, with one note
    assert rig.klarna.calls.count("update_authorization") == 1
    assert [op.state for op in rig.ledger.operations.values()] == [OperationState.FAILED]
    [exception] = rig.ledger.exceptions.values()
    assert (exception.code, exception.state) == ("AUTHORIZATION_UPDATE_REFUSED", ExceptionState.OPEN)
    assert len(rig.notes()) == 1 and "remove items" in rig.notes()[0]
    # and a later run says nothing new and sends nothing
    rig.ledger.enqueue(ORDER)
    rig.run()
    assert rig.klarna.calls.count("update_authorization") == 1 and len(rig.notes()) == 1


def test_a_block_that_is_gone_closes_its_exception() -> None:
    rig = Rig()
    rig.shop(authorized=7085)
    _unshipped(rig)
    order = rig.saleor.orders[ORDER]
    rig.saleor.orders[ORDER] = replace(order, status="UNCONFIRMED")  # Saleor edits lines only before confirming
    rig.klarna.increases = False
    rig.run()
    [exception] = rig.ledger.exceptions.values()
    # when the shop's order is edited down to what Klarna authorized
    order = rig.saleor.orders[ORDER]
    tee = replace(order.lines[0], quantity=1, total_gross=2500)
    rig.saleor.orders[ORDER] = replace(order, lines=(tee,), total_gross=2500)
    rig.ledger.enqueue(ORDER)
    rig.run()
    # then the authorization follows the edit and the exception is resolved
    assert exception.state is ExceptionState.RESOLVED
    assert rig.klarna.orders[next(iter(rig.klarna.orders))].order_amount == 2500
