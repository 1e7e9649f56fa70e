"""Saleor's books: payment source, match check, and the level-triggered reports (property tests)."""

from __future__ import annotations

import base64
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.domain.books import (
    BooksPlan,
    EventReport,
    failure_report,
    merchant_id_of,
    missing_reports,
    portal_order_url,
    request_psp_map,
    transaction_draft,
)
from plugin.domain.model import KlarnaCapture, KlarnaOrder, KlarnaOrderId, KlarnaRefund
from plugin.domain.transactions import (
    ActionKind,
    ActionRequest,
    AppRef,
    EventType,
    LegacyPayment,
    MismatchCode,
    OrderFacts,
    SaleorTransaction,
    SourceKind,
    TransactionEvent,
    check_match,
    find_request_event,
    refuse_reason,
    resolve_source,
)

ME = AppRef("QXBwOjM=", "app.klarna-om.saleor", "Klarna Order Management")
OTHER = AppRef("QXBwOjQ=", "com.example.other-payments", "Other payment app")


def tx(owner: AppRef | None = ME, name: str = "Klarna", psp: str = "k-1", **amounts: int) -> SaleorTransaction:
    return SaleorTransaction(id=f"tx-{psp}", name=name, psp_reference=psp, owner=owner, currency="USD", **amounts)


# -- PaymentSource -----------------------------------------------------------------------------


def test_own_klarna_transaction_acts_and_books():
    source = resolve_source(transactions=[tx(authorized=100)], me=ME, private_klarna_id=None)
    assert source.kind is SourceKind.OWN and source.acts and source.books and source.klarna_order_id == "k-1"


def test_a_reinstalled_app_owns_its_transactions_by_identifier():
    reinstalled = AppRef("QXBwOjk=", ME.identifier)
    assert (
        resolve_source(transactions=[tx(authorized=100)], me=reinstalled, private_klarna_id=None).kind is SourceKind.OWN
    )


def test_foreign_klarna_transaction_does_nothing_unless_allowed():
    foreign = tx(OTHER, authorized=100)
    denied = resolve_source(transactions=[foreign], me=ME, private_klarna_id="k-1")
    assert denied.kind is SourceKind.FOREIGN and not denied.acts and not denied.books
    assert denied.klarna_order_id is None and "Other payment app" in denied.books_kept_by
    allowed = resolve_source(
        transactions=[foreign], me=ME, private_klarna_id=None, allowed_apps=frozenset({OTHER.identifier or ""})
    )
    assert allowed.kind is SourceKind.FOREIGN_ALLOWED and allowed.acts and not allowed.books
    assert allowed.klarna_order_id == "k-1"


def test_private_metadata_creates_the_transaction_when_no_other_money():
    source = resolve_source(transactions=[], me=ME, private_klarna_id="k-9")
    assert source.kind is SourceKind.CREATE and source.books and source.klarna_order_id == "k-9"
    # A zero-money transaction of another PSP (a failed attempt) does not represent the money.
    assert resolve_source(transactions=[tx(OTHER, "Stripe", "pi_1")], me=ME, private_klarna_id="k-9").kind is (
        SourceKind.CREATE
    )


def test_other_money_is_never_booked_twice():
    paid = tx(None, "Manual", "", charged=100)  # "Mark as paid" by staff
    source = resolve_source(transactions=[paid], me=ME, private_klarna_id="k-9")
    assert source.kind is SourceKind.NOTES_ONLY and source.acts and not source.books
    split = resolve_source(transactions=[paid], me=ME, private_klarna_id="k-9", klarna_amount=50, order_total=150)
    assert split.kind is SourceKind.CREATE


def test_legacy_payment_and_nothing():
    legacy = resolve_source(transactions=[], me=ME, private_klarna_id=None, payments=[LegacyPayment("klarna", "k-3")])
    assert legacy.kind is SourceKind.NOTES_ONLY and legacy.klarna_order_id == "k-3"
    assert resolve_source(transactions=[], me=ME, private_klarna_id=None).kind is SourceKind.NONE


apps = st.sampled_from([ME, OTHER, AppRef("QXBwOjc=", "com.example.klarna-2", "Klarna 2"), None])
transactions = st.builds(
    lambda owner, name, psp, a, c: tx(owner, name, psp, authorized=a, charged=c),
    apps,
    st.sampled_from(["Klarna", "klarna pay", "Stripe", ""]),
    st.sampled_from(["k-1", "k-2", "", "pi_1"]),
    st.integers(0, 500),
    st.integers(0, 500),
)


@given(st.lists(transactions, max_size=4), st.sampled_from([None, "k-1", "k-7"]), st.booleans())
@settings(max_examples=300)
def test_source_never_books_on_a_transaction_it_does_not_own(txs, private_id, allow_other):
    allowed = frozenset({OTHER.identifier or ""}) if allow_other else frozenset()
    source = resolve_source(transactions=txs, me=ME, private_klarna_id=private_id, allowed_apps=allowed)
    if source.kind is SourceKind.OWN:
        assert source.transaction is not None and source.transaction.owned_by(ME)
    if source.kind is SourceKind.CREATE:  # nothing else holds money, no Klarna transaction of anyone
        assert all(t.money == 0 for t in txs) and not any(t.is_klarna and t.psp_reference for t in txs)
    if any(t.is_klarna and t.psp_reference and not t.owned_by(ME) for t in txs) and not any(
        t.owned_by(ME) and (t.is_klarna or t.psp_reference == private_id) and t.psp_reference for t in txs
    ):
        assert source.kind in (SourceKind.FOREIGN, SourceKind.FOREIGN_ALLOWED)
        assert source.acts == (source.kind is SourceKind.FOREIGN_ALLOWED)
    if source.acts:
        assert source.klarna_order_id  # always from a transaction, a legacy payment or private metadata


# -- match check -------------------------------------------------------------------------------


def klarna(**fields: object) -> KlarnaOrder:
    base: dict[str, object] = {
        "id": KlarnaOrderId("k-1"), "status": "AUTHORIZED", "fraud_status": "ACCEPTED", "currency": "USD",
        "order_amount": 13000, "captured": 0, "refunded": 0, "remaining": 13000, "expires_at": None,
    }  # fmt: skip
    base.update(fields)
    return KlarnaOrder(**base)  # type: ignore[arg-type]  # keyword overrides from the test


ORDER_ID = base64.b64encode(b"Order:4e8e8511-5dd4-401b-a3dc-0ec2526ad168").decode()
FACTS = OrderFacts(order_id=ORDER_ID, number="32", currency="USD", total_gross=13000)


def test_match_accepts_the_shops_order():
    assert check_match(FACTS, klarna()) is None
    for ref in ("32", "#32", ORDER_ID, "4e8e8511-5dd4-401b-a3dc-0ec2526ad168", None, ""):
        assert check_match(FACTS, klarna(), ref) is None


def test_match_refuses_a_strangers_klarna_order():
    assert check_match(FACTS, klarna(currency="EUR")).code is MismatchCode.CURRENCY  # type: ignore[union-attr]  # check_match returns a mismatch here
    assert check_match(FACTS, klarna(order_amount=20000)).code is MismatchCode.AMOUNT  # type: ignore[union-attr]  # check_match returns a mismatch here
    other_money = replace(FACTS, other_money=5000)
    assert check_match(other_money, klarna()).code is MismatchCode.AMOUNT  # type: ignore[union-attr]  # check_match returns a mismatch here
    assert check_match(FACTS, klarna(), "10001").code is MismatchCode.REFERENCE  # type: ignore[union-attr]  # check_match returns a mismatch here


def test_an_authorization_above_the_order_is_explained_by_an_edit_only_before_any_capture():
    edited = replace(FACTS, edits_explain_more=True)
    assert check_match(edited, klarna(order_amount=20000, remaining=20000)) is None
    captured = klarna(order_amount=20000, captured=100, remaining=19900, status="PART_CAPTURED")
    assert check_match(edited, captured).code is MismatchCode.AMOUNT  # type: ignore[union-attr]  # check_match returns a mismatch here
    assert check_match(edited, klarna(order_amount=20000, captured=14000)).code is MismatchCode.AMOUNT  # type: ignore[union-attr]  # check_match returns a mismatch here
    assert check_match(edited, klarna(currency="EUR")).code is MismatchCode.CURRENCY  # type: ignore[union-attr]  # check_match returns a mismatch here


# -- reports -----------------------------------------------------------------------------------


def apply(transaction: SaleorTransaction, report: EventReport) -> SaleorTransaction:
    """Saleor's bookkeeping for one report (samples gql-16/21/23/80-82), with its duplicate rule."""
    same = next(
        (e for e in transaction.events if e.type == report.type and e.psp_reference == report.psp_reference), None
    )
    if same is not None:
        assert same.amount == report.amount, "would be INCORRECT_DETAILS"
        return transaction  # alreadyProcessed
    t, a = transaction, report.amount
    changes = {
        EventType.CHARGE_SUCCESS: {"authorized": max(t.authorized - a, 0), "charged": t.charged + a},
        EventType.REFUND_SUCCESS: {"charged": t.charged - a, "refunded": t.refunded + a},
        EventType.CANCEL_SUCCESS: {"authorized": max(t.authorized - a, 0), "canceled": t.canceled + a},
    }[report.type]
    event = TransactionEvent(f"ev-{len(t.events)}", report.type, report.psp_reference, a, report.message, ME.id)
    return replace(t, events=(event, *t.events), **changes)


@st.composite
def klarna_orders(draw: st.DrawFn) -> KlarnaOrder:
    amount = draw(st.integers(1, 100_000))
    captures, left = [], amount
    for i in range(draw(st.integers(0, 4))):
        if left == 0:
            break
        part = draw(st.integers(1, left))
        captures.append(KlarnaCapture(f"cap-{i}", None, part))
        left -= part
    captured = amount - left
    refunds, refundable = [], captured
    for i in range(draw(st.integers(0, 3))):
        if refundable == 0:
            break
        part = draw(st.integers(1, refundable))
        refunds.append(KlarnaRefund(f"ref-{i}", None, part))
        refundable -= part
    ending = draw(st.sampled_from(["open", "cancel", "release", "expired"]))
    if ending == "cancel" and captured == 0:
        status, remaining = "CANCELLED", 0
    elif ending == "release":
        status, remaining = ("CAPTURED" if captured else "CANCELLED"), 0
    elif ending == "expired":
        status, remaining = "EXPIRED", left
    else:
        status = "AUTHORIZED" if captured == 0 else ("CAPTURED" if left == 0 else "PART_CAPTURED")
        remaining = left
    return klarna(
        order_amount=amount, captured=captured, refunded=captured - refundable, remaining=remaining, status=status,
        captures=tuple(captures), refunds=tuple(refunds),
    )  # fmt: skip


@given(klarna_orders(), st.integers(0, 5))
@settings(max_examples=400)
def test_reports_make_saleor_equal_klarna_and_are_level_triggered(order, booked_before):
    draft = transaction_draft(order, "https://portal")
    saleor = tx(authorized=draft.authorized, psp=draft.psp_reference)
    first = missing_reports(order, saleor, portal_url="https://portal")
    assert not first.conflicts
    # A run that died part-way: some reports were made, the rest are still missing.
    for report in first.reports[:booked_before]:
        saleor = apply(saleor, report)
    rest = missing_reports(order, saleor, portal_url="https://portal")
    assert rest.reports == first.reports[booked_before:]
    for report in rest.reports:
        saleor = apply(saleor, report)
    assert missing_reports(order, saleor).reports == ()  # at rest: nothing more
    assert saleor.charged == order.captured - order.refunded
    assert saleor.refunded == order.refunded
    still_authorized = 0 if order.status in ("CANCELLED", "EXPIRED") or order.remaining == 0 else order.remaining
    assert saleor.authorized == still_authorized
    assert all(r.amount > 0 and r.external_url == "https://portal" for r in first.reports)
    assert {r.psp_reference for r in first.reports if r.type is EventType.CHARGE_SUCCESS} == {
        c.capture_id for c in order.captures
    }


@given(klarna_orders())
def test_request_psp_closes_the_dashboard_request(order):
    mapping = {c.capture_id: f"req-{c.capture_id}" for c in order.captures} | {order.id: "req-cancel"}
    plan = missing_reports(order, tx(authorized=order.order_amount), request_psp=mapping)
    for report in plan.reports:
        if report.type is EventType.CHARGE_SUCCESS:
            assert report.psp_reference.startswith("req-cap-")
        if report.type is EventType.CANCEL_SUCCESS:
            assert report.psp_reference == "req-cancel"


def test_a_conflicting_booking_is_never_sent():
    order = klarna(
        captured=5000, remaining=8000, status="PART_CAPTURED", captures=(KlarnaCapture("cap-1", None, 5000),)
    )
    wrong = TransactionEvent("e1", EventType.CHARGE_SUCCESS, "cap-1", 3000)
    plan = missing_reports(order, tx(authorized=10000, charged=3000, events=(wrong,)))
    assert plan.reports == () and plan.conflicts[0].booked == 3000 and plan.conflicts[0].klarna == 5000


def test_cancel_booked_under_another_psp_is_not_repeated():
    order = klarna(status="CANCELLED", remaining=0)
    done = TransactionEvent("e1", EventType.CANCEL_SUCCESS, "req-1", 13000)
    assert missing_reports(order, tx(canceled=13000, events=(done,))).reports == ()


def test_a_cancel_request_after_the_cancel_is_booked_is_answered_as_done_without_counting_twice():
    order = klarna(status="CANCELLED", remaining=0)
    # The order's status cancelled it (booked under the Klarna order id); the button came after.
    done = TransactionEvent("e1", EventType.CANCEL_SUCCESS, "k-1", 13000)
    [report] = missing_reports(order, tx(canceled=13000, events=(done,)), cancel_requests=["req-1"]).reports
    assert (report.type, report.psp_reference, report.amount) == (EventType.CANCEL_SUCCESS, "req-1", 0)
    assert "already" in report.message
    # Two cancel requests before anything was booked: the first takes Klarna's cancel, the second is done.
    mapping = request_psp_map(order, [(ActionKind.CANCEL, "req-1", "req-1"), (ActionKind.CANCEL, "req-2", "req-2")])
    plan = missing_reports(order, tx(), request_psp=mapping, cancel_requests=["req-1", "req-2"])
    assert [(r.psp_reference, r.amount) for r in plan.reports] == [("req-1", 13000), ("req-2", 0)]
    # Level-triggered: once booked, nothing more.
    booked = tuple(TransactionEvent(f"e{i}", r.type, r.psp_reference, r.amount) for i, r in enumerate(plan.reports))
    assert missing_reports(order, tx(events=booked), request_psp=mapping, cancel_requests=["req-1", "req-2"]) == (
        BooksPlan()
    )
    # The status's cancel under the Klarna order id, the request answered with 0: nothing more, ever.
    answered = TransactionEvent("e2", EventType.CANCEL_SUCCESS, "req-1", 0)
    mapping = request_psp_map(order, [(ActionKind.CANCEL, "req-1", "req-1")])
    assert (
        missing_reports(
            order, tx(canceled=13000, events=(answered, done)), request_psp=mapping, cancel_requests=["req-1"]
        )
        == BooksPlan()
    )
    # Nothing released in Klarna yet: no answer for the request.
    assert missing_reports(klarna(), tx(), cancel_requests=["req-1"]).reports == ()


def test_failure_report_and_portal_link():
    report = failure_report(ActionKind.CHARGE, "req-1", 500, "USD", "CAPTURE_NOT_ALLOWED")
    assert report.type is EventType.CHARGE_FAILURE and "5.00 USD" in report.message
    assert merchant_id_of("PK12345_abcdef") == "PK12345"
    assert portal_order_url("live", "PK1", "k/1") == "https://portal.klarna.com/orders/all/merchants/PK1/orders/k%2F1"


# -- dashboard requests ------------------------------------------------------------------------


def request(action: ActionKind, amount: int, **tx_amounts: int) -> ActionRequest:
    event = TransactionEvent("ev-9", {"CHARGE": EventType.CHARGE_REQUEST, "REFUND": EventType.REFUND_REQUEST,
                                      "CANCEL": EventType.CANCEL_REQUEST}[action], "", amount)  # fmt: skip
    transaction = tx(events=(event,), **tx_amounts)
    return ActionRequest(
        action, amount, "USD", "order-1", transaction, ME.id, find_request_event((event,), action, amount)
    )


def test_refuse_reason_table():
    assert refuse_reason(request(ActionKind.CHARGE, 5000, authorized=13000), ME) is None
    assert "exceeds what remains authorized" in (
        refuse_reason(request(ActionKind.CHARGE, 14000, authorized=13000), ME) or ""
    )
    assert "exceeds what was captured" in (refuse_reason(request(ActionKind.REFUND, 100, charged=50), ME) or "")
    assert refuse_reason(request(ActionKind.REFUND, 50, charged=50), ME) is None
    assert "nothing remains" in (refuse_reason(request(ActionKind.CANCEL, 0, charged=50), ME) or "")
    # Cancelled already (the order's status, or a request on its way): recorded, the worker answers it as done.
    assert refuse_reason(request(ActionKind.CANCEL, 0, canceled=13000), ME) is None
    assert refuse_reason(request(ActionKind.CANCEL, 0, cancel_pending=13000), ME) is None
    assert refuse_reason(request(ActionKind.CANCEL, 8000, authorized=8000), ME) is None
    assert "not kept by this app" in (refuse_reason(request(ActionKind.CHARGE, 1, authorized=5), OTHER) or "")
    by_app = request(ActionKind.REFUND, 10, charged=50)
    by_app = replace(by_app, request_event=replace(by_app.request_event, created_by_app=OTHER.id))  # type: ignore[arg-type]  # a test id in place of the NewType
    assert "another app" in (refuse_reason(by_app, ME) or "")
    assert "EUR" in (refuse_reason(replace(request(ActionKind.CHARGE, 1, authorized=5), currency="EUR"), ME) or "")


def test_request_psp_map_follows_the_klarna_reference_convention():
    order = klarna(
        status="CAPTURED", captured=6000, remaining=0, refunded=1000,
        captures=(KlarnaCapture("cap-1", "req-c", 5000), KlarnaCapture("cap-2", "Fulfillment:1", 1000)),
        refunds=(KlarnaRefund("ref-1", "req-r", 1000),),
    )  # fmt: skip
    requests = [
        (ActionKind.CHARGE, "req-c", "req-c"), (ActionKind.REFUND, "req-r", "req-r"),
        (ActionKind.CANCEL, "req-x", "req-x"),
    ]  # fmt: skip
    assert request_psp_map(order, requests) == {"cap-1": "req-c", "ref-1": "req-r", "k-1": "req-x"}
    # A charge captured with a shipment's lines carries the shipment's reference.
    assert request_psp_map(order, [(ActionKind.CHARGE, "req-s", "Fulfillment:1")]) == {"cap-2": "req-s"}
    # A reference naming a request of another kind is not that request's outcome.
    assert request_psp_map(order, [(ActionKind.REFUND, "req-c", "req-c")]) == {}
    assert request_psp_map(klarna(), [(ActionKind.CANCEL, "req-x", "req-x")]) == {}  # nothing released yet
