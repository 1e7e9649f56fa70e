"""The sync use case on the in-memory ports: no database, no HTTP.

Each test drives :func:`sync_order` the way the worker does (claim, run) against
``plugin/testing/memory.py`` and checks what Klarna did, what the order's notes say, and what the
ledger holds: crashes at each step resume without a second operation, attempts count failures,
notes are never stranded or doubled, and exceptions resolve or reopen as their subject says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import pytest

from plugin.domain.ledger import Changes, ClaimedJob, Committed
from plugin.domain.model import (
    Fulfillment,
    FulfillmentLine,
    KlarnaOrderId,
    MerchantSettings,
    OrderLine,
    PlannedOperation,
    SaleorOrderId,
    ShopOrder,
)
from plugin.domain.states import ExceptionState, NoteState, OperationState
from plugin.services.ports import KlarnaFailure, LeaseLost, Written
from plugin.services.sync import Outcome, SyncDeps, idempotency_key, sync_order
from plugin.testing.memory import InMemoryKlarna, InMemoryLedger, InMemorySaleor

ORDER = "T3JkZXI6MQ=="
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


class Kill(BaseException):
    """A SIGKILL at this point: nothing in the worker catches it."""


def _order(klarna_id: str, *, shipments: int = 1) -> ShopOrder:
    tee = OrderLine("line-tee", "Tee", "TEE", 2, 5000, 2500, 0)
    shoe = OrderLine("line-shoe", "Shoe", "SHOE", 1, 8000, 8000, 0)
    if shipments == 1:
        fulfillments = (Fulfillment("ful-1", 1, "FULFILLED", "1Z1", (FulfillmentLine("line-tee", 2), FulfillmentLine("line-shoe", 1))),)  # fmt: skip
    else:
        fulfillments = (
            Fulfillment("ful-1", 1, "FULFILLED", "", (FulfillmentLine("line-tee", 2),)),
            Fulfillment("ful-2", 2, "FULFILLED", "", (FulfillmentLine("line-shoe", 1),)),
        )
    return ShopOrder(
        id=SaleorOrderId(ORDER), number="21", status="FULFILLED", channel_slug="default", currency="EUR",
        lines=(tee, shoe), fulfillments=fulfillments, shipping_gross=0, shipping_tax=0, total_gross=13000,
        klarna_order_id=KlarnaOrderId(klarna_id),
    )  # fmt: skip


@dataclass
class Rig:
    ledger: InMemoryLedger = field(default_factory=InMemoryLedger)
    klarna: InMemoryKlarna = field(default_factory=InMemoryKlarna)
    saleor: InMemorySaleor = field(default_factory=InMemorySaleor)
    max_attempts: int = 3
    owner: int = 0

    def __post_init__(self) -> None:
        self.ledger.channels["*"] = MerchantSettings(channel="*", username="PK1", password="secret")

    @property
    def deps(self) -> SyncDeps:
        return SyncDeps(
            repo=self.ledger, saleor_for=lambda _url, _token: self.saleor, klarna_for=lambda _m: self.klarna,
            lease_seconds=60, max_attempts=self.max_attempts, retry_base=0.0,
            now=lambda: NOW, monotonic=lambda: self.ledger.clock,
        )  # fmt: skip

    def shop(self, *, authorized: int = 13000, shipments: int = 1) -> str:
        kid = self.klarna.authorize(authorized)
        self.saleor.orders[ORDER] = _order(kid, shipments=shipments)
        self.ledger.enqueue(ORDER)
        return kid

    def claim(self) -> ClaimedJob:
        self.owner += 1
        [job] = self.ledger.claim(f"worker-{self.owner}", lease_seconds=60, limit=1)
        return job

    def run(self, rounds: int = 20) -> list[Outcome]:
        """Sync until nothing is due (a retry's delay is 0 here; the clock moves past it)."""
        outcomes = []
        for _ in range(rounds):
            self.ledger.clock += 1
            jobs = self.ledger.claim("worker", lease_seconds=60, limit=1)
            if not jobs:
                return outcomes
            outcomes.append(sync_order(self.deps, jobs[0]))
        return outcomes

    def notes(self) -> list[str]:
        return self.saleor.notes.get(ORDER, [])

    def op_states(self) -> list[OperationState]:
        return [op.state for op in self.ledger.operations.values()]


def _crash_after(original: Callable[..., object], when: Callable[..., bool]) -> Callable[..., object]:
    def wrapped(*args: object, **kwargs: object) -> object:
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            raise Kill
        return result

    return wrapped


def _wrote_the_ledger_row(job: ClaimedJob, changes: Changes, **_: object) -> bool:
    return changes.new_operation is not None


def _recorded_the_result(job: ClaimedJob, changes: Changes, **_: object) -> bool:
    return any(u.operation.state is OperationState.SUCCEEDED for u in changes.operations)


CRASH_POINTS = {
    "after the ledger write": ("ledger", "commit", _wrote_the_ledger_row),
    "after the Klarna call": ("klarna", "capture", lambda *a, **k: True),
    "after the result": ("ledger", "commit", _recorded_the_result),
    "after the note": ("saleor", "add_note", lambda *a, **k: True),
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_a_crash_at_each_step_resumes_without_a_second_operation(point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a shipped order and a worker that dies at one step of its capture
    rig = Rig()
    kid = rig.shop()
    port_name, method, when = CRASH_POINTS[point]
    port = getattr(rig, port_name)
    crashing = _crash_after(getattr(port, method), when)
    monkeypatch.setattr(port, method, crashing)
    with pytest.raises(Kill):
        sync_order(rig.deps, rig.claim())
    monkeypatch.undo()
    # when its lease runs out and another worker takes the order over
    rig.ledger.expire_leases()
    rig.run()
    # then Klarna captured once, the shop has the one note of it, and the ledger is settled
    assert rig.klarna.performed == [("capture", kid, 13000)]
    assert len(rig.notes()) == 1 and "captured 130.00 EUR for shipment #21-1" in rig.notes()[0]
    assert rig.op_states() == [OperationState.SUCCEEDED]
    assert [n.state for n in rig.ledger.notes.values()] == [NoteState.WRITTEN]
    assert not rig.ledger.job(ORDER).due and rig.ledger.job(ORDER).attempts == 0
    # and the only key Klarna saw is the one written before the first call
    assert set(rig.klarna.answers) == {rig.ledger.operations[next(iter(rig.ledger.operations))].idempotency_key}


def test_a_capture_takes_three_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a shipped order
    rig = Rig()
    rig.shop()
    # when one worker syncs it
    [outcome] = rig.run()
    # then: the ledger row (with the lease) before the call; the outcome with its note; the note's
    # delivery with the job's completion
    assert outcome.performed == ["capture 130.00 EUR"]
    assert rig.ledger.commits == 3
    assert rig.saleor.metadata[ORDER]["klarna_om.captured"] == "130.00 EUR"


def test_a_killed_worker_does_not_use_up_the_attempt_budget() -> None:
    # given an order whose worker is killed before it records anything, again and again
    rig = Rig(max_attempts=1)
    kid = rig.shop()
    for _ in range(3):
        rig.claim()
        rig.ledger.expire_leases()
    # then a claim is not an attempt: the next run still captures
    assert rig.ledger.job(ORDER).attempts == 0
    rig.run()
    assert rig.klarna.performed == [("capture", kid, 13000)]


def test_a_run_that_made_progress_keeps_its_budget() -> None:
    # given two shipments, and Klarna failing the second capture with a 503 after the first succeeded
    rig = Rig(max_attempts=1)
    rig.shop(shipments=2)
    rig.klarna.capture = _fail_second_capture(rig.klarna)  # type: ignore[method-assign]  # inject a fault into the in-memory port
    # when the order is synced
    outcomes = rig.run()
    # then the failed run did not count (it captured shipment 1), and the retry captured shipment 2
    assert outcomes[0].retry_in is not None and not outcomes[0].gave_up
    assert [amount for _, _, amount in rig.klarna.performed] == [5000, 8000]
    assert not rig.ledger.exceptions
    assert len(rig.notes()) == 2


def _fail_second_capture(klarna: InMemoryKlarna) -> Callable[..., object]:
    original, calls = klarna.capture, []

    def capture(order_id: str, body: object, key: str) -> object:
        calls.append(key)
        if len(calls) == 2:
            raise KlarnaFailure("503", retryable=True, code="SERVICE_UNAVAILABLE")
        return original(order_id, body, key)  # type: ignore[arg-type]  # a plain dict body in place of the typed one

    return capture


def test_giving_up_leaves_an_exception_and_a_note_and_a_later_sync_resolves_it() -> None:
    # given Klarna unreachable for as long as the budget lasts
    rig = Rig(max_attempts=2)
    kid = rig.shop()
    unavailable = KlarnaFailure("timeout", retryable=True, code="KlarnaTransportError")
    rig.klarna.failures = [unavailable, unavailable]
    # when the worker runs out of attempts
    outcomes = rig.run(rounds=2)
    # then it gives up with one open exception and a note that says what is not done and what to do
    assert [o.gave_up for o in outcomes] == [False, True]
    [exception] = rig.ledger.exceptions.values()
    assert (exception.code, exception.state) == ("SYNC_FAILED", ExceptionState.OPEN)
    [note] = rig.notes()
    assert "could not be synced after 2 attempts" in note and "press Retry" in note
    job = rig.ledger.job(ORDER)
    assert job.due and job.attempts == 0  # checked again later, on its own (after 3000 retry bases)
    # when Klarna answers again and the order is checked again
    rig.run()
    # then the capture happens and the exception resolved itself
    assert rig.klarna.performed == [("capture", kid, 13000)]
    assert exception.state is ExceptionState.RESOLVED


def test_a_note_saleor_refused_is_delivered_later_without_a_second_capture() -> None:
    # given Saleor failing the note after the capture succeeded
    rig = Rig()
    kid = rig.shop()
    original = rig.saleor.add_note
    failing = [True]

    def add_note(order_id: str, message: str) -> None:
        if failing and failing.pop():
            from plugin.services.ports import SaleorUnavailable

            raise SaleorUnavailable("down")
        original(order_id, message)

    rig.saleor.add_note = add_note  # type: ignore[method-assign]  # inject a fault into the in-memory port
    # when the order is synced (and retried)
    outcomes = rig.run()
    # then the note arrives on the retry; Klarna captured once; the failed run kept its budget
    assert outcomes[0].retry_in is not None and rig.ledger.job(ORDER).attempts == 0
    assert rig.klarna.performed == [("capture", kid, 13000)]
    assert len(rig.notes()) == 1
    assert [n.state for n in rig.ledger.notes.values()] == [NoteState.WRITTEN]


def test_a_worker_whose_lease_was_taken_over_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # given worker A stalled right after its capture, until its lease ran out and B took the order
    rig = Rig()
    kid = rig.shop()
    job_a = rig.claim()
    original = rig.klarna.capture

    def capture_then_stall(order_id: str, body: object, key: str) -> object:
        result = original(order_id, body, key)  # type: ignore[arg-type]  # a plain dict body in place of the typed one
        rig.ledger.clock += 61
        rig.run()  # B: sees the capture in Klarna, records it, writes the note
        return result

    monkeypatch.setattr(rig.klarna, "capture", capture_then_stall)
    # when A resumes
    with pytest.raises(LeaseLost):
        sync_order(rig.deps, job_a)
    # then A wrote nothing: one capture, one note
    assert rig.klarna.performed == [("capture", kid, 13000)]
    assert len(rig.notes()) == 1


def test_a_note_is_not_written_again_when_a_stalled_worker_may_have_lost_its_lease() -> None:
    # given a run whose note is due after more than half its lease went by (a long Klarna call)
    rig = Rig()
    rig.shop()
    original = rig.klarna.capture

    def slow_capture(order_id: str, body: object, key: str) -> object:
        rig.ledger.clock += 45
        return original(order_id, body, key)  # type: ignore[arg-type]  # a plain dict body in place of the typed one

    rig.klarna.capture = slow_capture  # type: ignore[method-assign]  # inject a delay into the in-memory port
    commits: list[Changes] = []
    commit = rig.ledger.commit

    def counting(job: ClaimedJob, changes: Changes, *, lease_seconds: int) -> Committed:
        commits.append(changes)
        return commit(job, changes, lease_seconds=lease_seconds)

    rig.ledger.commit = counting  # type: ignore[method-assign]  # count the ledger's commits
    rig.run()
    # then the outcome's commit renewed the lease just before the note: still one note
    assert len(rig.notes()) == 1


def test_a_final_refusal_opens_an_exception_that_a_successful_retry_resolves() -> None:
    # given Klarna refusing the capture for good once
    rig = Rig()
    kid = rig.shop()
    refusal = KlarnaFailure(
        "403", retryable=False, code="CAPTURE_NOT_ALLOWED", messages=("not allowed",), correlation_id="c-1"
    )
    rig.klarna.capture = _fail_first(rig.klarna, refusal)  # type: ignore[method-assign]  # inject a fault into the in-memory port
    rig.run()
    [exception] = rig.ledger.exceptions.values()
    [note] = rig.notes()
    assert exception.state is ExceptionState.OPEN and rig.op_states() == [OperationState.FAILED]
    # Klarna's words and its correlation id, once each
    assert note.count("not allowed") == 1 and note.count("c-1") == 1 and "c-1" not in exception.message
    # when the admin retries
    rig.ledger.retry(exception.id, _rekey)
    rig.run()
    # then the capture goes through under a new key and the exception resolved itself
    assert rig.klarna.performed == [("capture", kid, 13000)]
    assert exception.state is ExceptionState.RESOLVED
    assert len(rig.notes()) == 2


def _fail_first(klarna: InMemoryKlarna, failure: KlarnaFailure) -> Callable[..., object]:
    original, failures = klarna.capture, [failure]

    def capture(order_id: str, body: object, key: str) -> object:
        if failures:
            raise failures.pop()
        return original(order_id, body, key)  # type: ignore[arg-type]  # a plain dict body in place of the typed one

    return capture


def _rekey(op: object, generation: int) -> str:
    from plugin.domain.ledger import LedgerOperation

    assert isinstance(op, LedgerOperation)
    planned = PlannedOperation(op.kind, op.reference, op.amount)
    return idempotency_key("https://shop.example.com/graphql/", ORDER, op.klarna_order_id, planned, generation)


def test_a_retry_that_is_blocked_again_reopens_the_exception_with_a_fresh_note() -> None:
    # given a shipment worth more than Klarna authorized (and no authorization update to close the gap)
    rig = Rig()
    merchant = rig.ledger.channels["*"]
    rig.ledger.channels["*"] = replace(merchant, options=replace(merchant.options, update_authorization=False))
    rig.shop(authorized=7085)
    rig.run()
    [exception] = rig.ledger.exceptions.values()
    assert exception.code == "EXCEEDS_REMAINING" and len(rig.notes()) == 1
    # when the admin presses Retry and the re-check blocks again
    rig.ledger.retry(exception.id, _rekey)
    rig.run()
    # then the same exception is open again, and the order has a fresh note saying so
    assert exception.state is ExceptionState.OPEN and exception.reopened == 1
    assert len(rig.notes()) == 2 and "only 70.85 EUR remains authorized" in rig.notes()[1]
    assert not rig.klarna.performed
    # and another sync without a retry says nothing new
    rig.ledger.enqueue(ORDER)
    rig.run()
    assert len(rig.notes()) == 2


def test_an_order_fully_captured_elsewhere_settles_a_pending_row_without_sending_it() -> None:
    # given a ledger row written before a crash, and the capture found in Klarna (same reference)
    rig = Rig()
    rig.shop()
    job = rig.claim()
    rig.ledger.commit = _crash_after(rig.ledger.commit, _wrote_the_ledger_row)  # type: ignore[method-assign]  # crash right after the ledger write
    with pytest.raises(Kill):
        sync_order(rig.deps, job)
    del rig.ledger.commit  # back to the class's method
    op = next(iter(rig.ledger.operations.values()))
    rig.klarna.capture(op.klarna_order_id, dict(op.request_body or {}), op.idempotency_key)
    calls = len(rig.klarna.calls)
    # when another worker takes over
    rig.ledger.expire_leases()
    rig.run()
    # then it reads Klarna, records the success and its note, and sends nothing
    assert rig.klarna.calls[calls:] == ["get_order"]
    assert rig.op_states() == [OperationState.SUCCEEDED] and len(rig.notes()) == 1


def test_a_channel_without_notes_skips_them() -> None:
    rig = Rig()
    rig.ledger.channels["*"] = replace(
        rig.ledger.channels["*"], options=replace(rig.ledger.channels["*"].options, write_notes=False)
    )
    kid = rig.shop()
    rig.run()
    assert rig.klarna.performed == [("capture", kid, 13000)] and rig.notes() == []
    assert [n.state for n in rig.ledger.notes.values()] == [NoteState.SKIPPED]
    assert rig.ledger.commits == 2


def test_the_use_case_imports_no_framework_and_no_adapter() -> None:
    # a fresh interpreter: importing the use case (and its table and ports) loads none of them
    import subprocess
    import sys

    code = (
        "import sys, plugin.services.sync, plugin.testing.memory;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'flask', 'requests', 'gql')"
        " or m.startswith(('plugin.db', 'plugin.klarna', 'plugin.saleor'))];"
        "print(','.join(sorted(bad)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_notes_and_summary_go_in_one_write_and_a_note_saleor_refused_is_retried_alone() -> None:
    # given two shipments to capture, and Saleor refusing the first note of the first write only
    rig = Rig()
    kid = rig.shop(shipments=2)
    original = rig.saleor.write_order
    writes: list[tuple[list[str], bool]] = []

    def write_order(order_id: str, notes: Sequence[str], private_metadata: Mapping[str, str] | None) -> Written:
        writes.append((list(notes), private_metadata is not None))
        if len(writes) == 1:
            original(order_id, notes[1:], private_metadata)
            return Written((False, True), metadata=True)
        return original(order_id, notes, private_metadata)

    rig.saleor.write_order = write_order  # type: ignore[method-assign]  # a partial answer from the in-memory port
    # when the order is synced (and retried)
    outcomes = rig.run()
    # then the first run wrote both notes and the summary in one request; the refused note alone was
    # written again by the retry, which captured nothing more
    [(first, with_summary), (second, again)] = writes
    assert len(first) == 2 and with_summary and second == first[:1] and not again
    assert outcomes[0].retry_in is not None and len(rig.klarna.performed) == 2
    assert sorted(rig.notes()) == sorted(first) and rig.saleor.metadata[ORDER]["klarna_om.order_id"] == kid
    assert [n.state for n in rig.ledger.notes.values()] == [NoteState.WRITTEN, NoteState.WRITTEN]
    assert [n.attempts for n in rig.ledger.notes.values()] == [1, 0]
