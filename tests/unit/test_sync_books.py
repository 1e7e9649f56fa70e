"""The sync's wiring of Saleor's books on the in-memory ports: the summary after the operations, the
books as a step of their own (a failed report never repeats the Klarna part), and the source rules."""

from __future__ import annotations

from dataclasses import replace

from plugin.domain.transactions import ActionKind, AppRef, EventType, SaleorTransaction
from plugin.services.ports import SaleorUnavailable
from plugin.services.sync import BOOKS_RECHECK_SECONDS, BOOKS_REFUSAL_RETRY_SECONDS, SyncDeps, sync_order
from tests.unit.test_books_property import ORDER, TOTAL, Shop


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
