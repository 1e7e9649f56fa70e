"""Property (issue 9 item 4): any interleaving of the dashboard's buttons, shipments, returns and cancels,
run through the one ledger and the one level-triggered plan on the in-memory ports.

Klarna never captures beyond the authorization nor refunds beyond what was captured (the app never
sends an operation Klarna must refuse), and at rest Saleor's charged and refunded amounts equal
Klarna's, with every dashboard request reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin.domain.model import (
    Action,
    Fulfillment,
    FulfillmentLine,
    KlarnaOrderId,
    MerchantSettings,
    OrderLine,
    SaleorOrderId,
    ShopOrder,
)
from plugin.domain.requests import RequestState
from plugin.domain.states import OperationState
from plugin.domain.transactions import ActionKind, EventType
from plugin.services.sync import SyncDeps, sync_order
from plugin.testing.memory import InMemoryKlarna, InMemoryLedger, InMemorySaleor

ORDER = "T3JkZXI6Nw=="
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LINES = (OrderLine("tee", "Tee", "TEE", 2, 5000, 2500, 0), OrderLine("shoe", "Shoe", "SHOE", 1, 8000, 8000, 0))
SHIPPING = 1000
TOTAL = 5000 + 8000 + SHIPPING


@dataclass
class Shop:
    """The Saleor order as staff change it, and the in-memory ports the worker runs against."""

    ledger: InMemoryLedger = field(default_factory=InMemoryLedger)
    klarna: InMemoryKlarna = field(default_factory=InMemoryKlarna)
    saleor: InMemorySaleor = field(default_factory=lambda: InMemorySaleor(handle_payments=True))
    shipped: list[dict[str, int]] = field(default_factory=list)  # FULFILLED fulfillments, by line
    returned: list[dict[str, int]] = field(default_factory=list)  # RETURNED fulfillments
    cancelled: bool = False
    kid: str = ""

    def __post_init__(self) -> None:
        self.ledger.channels["*"] = MerchantSettings(channel="*", username="PK1", password="secret")
        self.kid = self.klarna.authorize(TOTAL, "EUR")
        self.publish()

    def publish(self) -> None:
        held = {line.id: 0 for line in LINES}
        back = sum(sum(r.values()) for r in self.returned)
        for part in (*self.shipped, *self.returned):
            for line_id, qty in part.items():
                held[line_id] += qty
        units = sum(line.quantity for line in LINES)
        fulfilled = sum(held.values())
        if self.cancelled:
            status = "CANCELED"
        elif back:
            status = "RETURNED" if back == units else "PARTIALLY_RETURNED"
        else:
            status = {0: "UNFULFILLED", units: "FULFILLED"}.get(fulfilled, "PARTIALLY_FULFILLED")
        fulfillments = [
            Fulfillment(f"ful-{i}", i, state, "", tuple(FulfillmentLine(k, q) for k, q in part.items() if q > 0))
            for i, (state, part) in enumerate(
                [("FULFILLED", p) for p in self.shipped] + [("RETURNED", p) for p in self.returned], start=1
            )
        ]
        self.saleor.orders[ORDER] = ShopOrder(
            id=SaleorOrderId(ORDER), number="7", status=status, channel_slug="default", currency="EUR",
            lines=LINES, fulfillments=tuple(fulfillments), shipping_gross=SHIPPING, shipping_tax=0,
            total_gross=TOTAL, klarna_order_id=KlarnaOrderId(self.kid),
        )  # fmt: skip
        self.ledger.enqueue(ORDER)

    # -- what staff do -------------------------------------------------------------------------

    def unshipped(self) -> dict[str, int]:
        done = {line.id: 0 for line in LINES}
        for part in (*self.shipped, *self.returned):
            for line_id, qty in part.items():
                done[line_id] += qty
        return {line.id: line.quantity - done[line.id] for line in LINES if line.quantity > done[line.id]}

    def ship(self, everything: bool) -> None:
        left = self.unshipped()
        if self.cancelled or not left:
            return
        part = left if everything else dict([next(iter(left.items()))])
        self.shipped.append(part)
        self.publish()

    def give_back(self) -> None:
        for part in self.shipped:
            line_id = next((k for k, q in part.items() if q > 0), None)
            if line_id is not None:
                part[line_id] -= 1
                self.returned.append({line_id: 1})
                self.publish()
                return

    def cancel_order(self) -> None:
        if not self.shipped and not self.returned:
            self.cancelled = True
            self.publish()

    def press(self, action: ActionKind, amount: int) -> None:
        transactions = self.saleor.transactions.get(ORDER)
        if transactions:
            self.ledger.record_request(ORDER, transactions[0], action, amount)

    # -- the worker ----------------------------------------------------------------------------

    def run(self) -> None:
        deps = SyncDeps(
            repo=self.ledger, saleor_for=lambda _url, _token: self.saleor, klarna_for=lambda _m: self.klarna,
            retry_base=0.0, now=lambda: NOW, monotonic=lambda: self.ledger.clock,
        )  # fmt: skip
        for _ in range(20):
            self.ledger.clock += 1000.0
            jobs = self.ledger.claim("w", lease_seconds=60, limit=5)
            if not jobs:
                return
            for job in jobs:
                sync_order(deps, job)
        raise AssertionError("the worker did not come to rest")


STEPS = st.one_of(
    st.tuples(st.just("ship"), st.booleans()),
    st.tuples(st.just("return"), st.none()),
    st.tuples(st.just("cancel_order"), st.none()),
    st.tuples(st.just("run"), st.none()),
    # Amounts at random, and the values of shipments (a charge for exactly a shipment takes its lines).
    st.tuples(
        st.sampled_from([ActionKind.CHARGE, ActionKind.REFUND]),
        st.one_of(st.integers(1, TOTAL), st.sampled_from([5000, 5000 + SHIPPING, 8000, 8000 + SHIPPING, TOTAL])),
    ),
    st.tuples(st.just(ActionKind.CANCEL), st.none()),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.lists(STEPS, min_size=1, max_size=12))
def test_any_interleaving_keeps_klarna_safe_and_saleors_books_equal(
    manual: bool, steps: list[tuple[object, object]]
) -> None:
    shop = Shop()
    if manual:  # the merchant captures with the button only; fulfilments capture nothing
        star = shop.ledger.channels["*"]
        shop.ledger.channels["*"] = replace(star, mapping={**star.mapping, "FULFILLED": Action.NONE,
                                                           "PARTIALLY_FULFILLED": Action.NONE})  # fmt: skip
    shop.run()  # the transaction is created from the private metadata's Klarna id
    for kind, arg in steps:
        if kind == "ship":
            shop.ship(bool(arg))
        elif kind == "return":
            shop.give_back()
        elif kind == "cancel_order":
            shop.cancel_order()
        elif kind == "run":
            shop.run()
        else:
            assert isinstance(kind, ActionKind)
            shop.press(kind, arg if isinstance(arg, int) else 0)
        state = shop.klarna.orders[shop.kid]
        assert state.captured <= state.order_amount and state.refunded <= state.captured
    shop.run()
    state = shop.klarna.orders[shop.kid]
    assert state.captured <= TOTAL and state.refunded <= state.captured
    # Each shipment captured once at most, and no line's units captured beyond what was ordered.
    shipments = [c.reference for c in state.captures if c.reference and c.reference.startswith("ful-")]
    assert len(shipments) == len(set(shipments))
    for line in LINES:
        assert sum(ln.quantity for c in state.captures for ln in c.lines if ln.reference == line.reference) <= (
            line.quantity
        )
    # The app never sent what Klarna had to refuse.
    assert [op for op in shop.ledger.operations.values() if op.state is OperationState.FAILED] == []
    # At rest Saleor's books equal Klarna's, and every request is closed.
    [tx] = shop.saleor.transactions[ORDER]
    booked = {t: sum(e.amount for e in tx.events if e.type is t) for t in EventType}
    assert (booked[EventType.CHARGE_SUCCESS], booked[EventType.REFUND_SUCCESS]) == (state.captured, state.refunded)
    assert tx.charged == state.captured - state.refunded
    assert all(r.state is RequestState.REPORTED for r in shop.ledger.requests.values())
    # Level-triggered at rest: another sync books nothing, and Saleor never refused or disagreed.
    shop.ledger.enqueue(ORDER)
    shop.run()
    assert shop.saleor.transactions[ORDER][0].events == tx.events
    assert [e.code for e in shop.ledger.exceptions.values() if e.code.startswith("BOOKS")] == []


def test_a_charge_then_everything_shipped_captures_the_rest_and_books_it() -> None:
    shop = Shop()
    shop.run()
    shop.press(ActionKind.CHARGE, 5000)
    shop.run()
    shop.ship(everything=True)
    shop.run()
    state = shop.klarna.orders[shop.kid]
    assert [c.amount for c in state.captures] == [5000, TOTAL - 5000] and state.remaining == 0
    [tx] = shop.saleor.transactions[ORDER]
    assert (tx.charged, tx.authorized) == (TOTAL, 0)
    # A plain refund, then everything returned: the return is refunded less what the button gave back.
    shop.press(ActionKind.REFUND, 3000)
    shop.run()
    for _ in range(3):
        shop.give_back()
    shop.run()
    state = shop.klarna.orders[shop.kid]
    assert (state.captured, state.refunded) == (TOTAL, TOTAL)
    assert (tx := shop.saleor.transactions[ORDER][0]).refunded == TOTAL and tx.charged == 0
