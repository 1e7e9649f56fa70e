"""In-memory implementations of the use case's ports: the ledger repository, Klarna and Saleor.

They keep the rules that matter to the use case (a lease held by one owner, a note queued once per
dedupe key, an exception opened only with a new note, Klarna replaying the answer to a key it has
seen and refusing more than remains authorized) and nothing else, so unit tests can run
:func:`plugin.services.sync.sync_order` without a database or HTTP. mypy checks them against the
Protocols (see ``_conforms`` at the bottom).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from plugin.domain.books import EventReport, TransactionDraft
from plugin.domain.ledger import (
    Changes,
    ClaimedJob,
    Committed,
    Finish,
    JobSnapshot,
    LedgerOperation,
    OpenException,
    QueuedNote,
    RetryLater,
)
from plugin.domain.model import (
    KlarnaCapture,
    KlarnaOrder,
    KlarnaOrderId,
    KlarnaRefund,
    MerchantSettings,
    RecordedLine,
    ShopOrder,
    recorded_lines,
)
from plugin.domain.requests import OpenRequest, RequestState
from plugin.domain.states import ExceptionState, NoteState, OperationState
from plugin.domain.transactions import (
    ActionKind,
    AppRef,
    EventType,
    Mismatch,
    MismatchCode,
    OrderBooks,
    ReportOutcome,
    SaleorTransaction,
    TransactionEvent,
)
from plugin.services.ports import (
    BooksUnavailable,
    KlarnaFailure,
    KlarnaPort,
    LeaseLost,
    LedgerRepository,
    OperationResult,
    SaleorPort,
    SaleorUnavailable,
    Written,
)

# -- the ledger ----------------------------------------------------------------------------------


@dataclass
class MemoryJob:
    id: int
    saleor_api_url: str
    order_id: str
    requested_seq: int = 1
    done_seq: int = 0
    claimed_seq: int = 0
    run_after: float = 0.0
    leased_until: float | None = None
    lease_owner: str | None = None
    attempts: int = 0
    last_error: str | None = None

    @property
    def due(self) -> bool:
        return self.requested_seq > self.done_seq


@dataclass
class MemoryNote:
    id: int
    order_id: str
    dedupe: str
    message: str
    state: NoteState = NoteState.PENDING
    attempts: int = 0


@dataclass
class MemoryException:
    id: int
    order_id: str
    subject: str
    code: str
    message: str
    state: ExceptionState = ExceptionState.OPEN
    operation_id: int | None = None
    correlation_id: str | None = None
    reopened: int = 0


@dataclass
class InMemoryLedger:
    """Implements :class:`LedgerRepository` for one installation; ``clock`` is seconds (a test moves it)."""

    saleor_api_url: str = "https://shop.example.com/graphql/"
    token: str = "app-token"
    app_id: str = "QXBwOjE="
    channels: dict[str, MerchantSettings] = field(default_factory=dict)
    clock: float = 0.0
    installed: bool = True
    jobs: dict[int, MemoryJob] = field(default_factory=dict)
    operations: dict[int, LedgerOperation] = field(default_factory=dict)
    operation_orders: dict[int, str] = field(default_factory=dict)
    logs: dict[int, list[Mapping[str, Any]]] = field(default_factory=dict)
    notes: dict[int, MemoryNote] = field(default_factory=dict)
    exceptions: dict[int, MemoryException] = field(default_factory=dict)
    commits: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    requests: dict[int, OpenRequest] = field(default_factory=dict)  # the dashboard's, by id
    bindings: dict[str, str] = field(default_factory=dict)  # Klarna order id -> Saleor order id

    # -- what a webhook and a test do -----------------------------------------------------------

    def enqueue(self, order_id: str, *, delay: float = 0.0) -> None:
        job = next((j for j in self.jobs.values() if j.order_id == order_id), None)
        if job is None:
            job_id = next(self._ids)
            self.jobs[job_id] = MemoryJob(job_id, self.saleor_api_url, order_id, run_after=self.clock + delay)
            return
        if not job.due:
            job.run_after, job.attempts = self.clock + delay, 0
        elif job.last_error is None:  # a scheduled check is brought forward; a backoff keeps its time
            job.run_after = min(job.run_after, self.clock + delay)
        job.requested_seq += 1

    def record_request(
        self,
        order_id: str,
        tx: SaleorTransaction,
        action: ActionKind,
        amount: int,
        details: dict[str, object] | None = None,
    ) -> OpenRequest:
        """What the transaction-action webhook does: record the request (its pspReference) and enqueue."""
        request_id = next(self._ids)
        request = OpenRequest(
            request_id, order_id, tx.id, tx.psp_reference, action, amount, tx.currency, f"psp-{request_id}",
            details or {}, RequestState.RECORDED,
        )  # fmt: skip
        self.requests[request_id] = request
        self.enqueue(order_id)
        return request

    def expire_leases(self) -> None:
        """A worker died: its leases run out."""
        for job in self.jobs.values():
            job.leased_until = None

    def job(self, order_id: str) -> MemoryJob:
        return next(j for j in self.jobs.values() if j.order_id == order_id)

    # -- LedgerRepository -------------------------------------------------------------------

    def claim(self, owner: str, *, lease_seconds: int, limit: int) -> list[ClaimedJob]:
        claimed: list[ClaimedJob] = []
        for job in sorted(self.jobs.values(), key=lambda j: (j.run_after, j.id)):
            free = job.leased_until is None or job.leased_until < self.clock
            if len(claimed) < limit and job.due and job.run_after <= self.clock and free:
                job.leased_until, job.lease_owner, job.claimed_seq = (
                    self.clock + lease_seconds,
                    owner,
                    job.requested_seq,
                )
                claimed.append(ClaimedJob(job.id, job.saleor_api_url, job.order_id, job.attempts, owner, self.clock))
        return claimed

    def load(self, job: ClaimedJob) -> JobSnapshot | None:
        if not self.installed:
            return None
        order = job.order_id
        return JobSnapshot(
            token=self.token,
            app_id=self.app_id,
            channels=dict(self.channels),
            operations=tuple(op for op in self.operations.values() if self.operation_orders[op.id] == order),
            pending_notes=tuple(
                QueuedNote(n.id, n.message)
                for n in self.notes.values()
                if n.order_id == order and n.state is NoteState.PENDING
            ),
            exceptions=tuple(
                OpenException(e.id, e.subject, e.code, e.state, e.operation_id, e.reopened)
                for e in self.exceptions.values()
                if e.order_id == order and e.state in (ExceptionState.OPEN, ExceptionState.RETRIED)
            ),
            requests=tuple(r for _, r in sorted(self.requests.items()) if r.order_id == order),
        )

    def commit(self, job: ClaimedJob, changes: Changes, *, lease_seconds: int) -> Committed:
        row = self.jobs.get(job.id)
        if row is None or row.lease_owner != job.owner:
            raise LeaseLost(f"job {job.id}")
        self.commits += 1
        operation_id = None
        mismatch = self._bind(changes.bind, job.order_id) if changes.bind else None
        if changes.request_reference is not None and mismatch is None:
            request_id, reference = changes.request_reference
            self.requests[request_id] = replace(self.requests[request_id], klarna_reference=reference)
        if changes.new_operation is not None and mismatch is None:
            new = changes.new_operation
            operation_id = next(self._ids)
            self.operations[operation_id] = LedgerOperation(
                id=operation_id, kind=new.kind, reference=new.reference, amount=new.amount, currency=new.currency,
                klarna_order_id=new.klarna_order_id, idempotency_key=new.idempotency_key, generation=0,
                state=new.state, request_body=new.request_body, attempts=0 if new.state is OperationState.SUCCEEDED else 1,
            )  # fmt: skip
            self.operation_orders[operation_id] = job.order_id
            self.logs[operation_id] = []
        for update in changes.operations:
            attempts = self.operations[update.operation.id].attempts + (1 if update.attempted else 0)
            self.operations[update.operation.id] = replace(update.operation, attempts=attempts)
            if update.log:
                self.logs[update.operation.id].append(update.log)
        skip = changes.skip_notes
        queued = [q for d in changes.notes if (q := self._queue(job.order_id, d.dedupe, d.message, skip=skip))]
        for draft in changes.exceptions:
            note = self._queue(job.order_id, draft.note.dedupe, draft.note.message, skip=skip)
            if note is not None:
                queued.append(note)
            if draft.reopen is not None:
                exc = self.exceptions[draft.reopen]
                exc.state, exc.message, exc.code, exc.reopened = (
                    ExceptionState.OPEN,
                    draft.message,
                    draft.code,
                    exc.reopened + 1,
                )
            elif note is not None:
                exc_id = next(self._ids)
                self.exceptions[exc_id] = MemoryException(
                    exc_id, job.order_id, draft.subject, draft.code, draft.message,
                    operation_id=draft.operation_id, correlation_id=draft.correlation_id,
                )  # fmt: skip
        for note_id in changes.notes_written:
            self.notes[note_id].state = NoteState.WRITTEN
        for note_id in changes.notes_skipped:
            self.notes[note_id].state = NoteState.SKIPPED
        for note_id in changes.note_failures:
            self.notes[note_id].attempts += 1
        for exc_id in changes.resolved:
            if self.exceptions[exc_id].state in (ExceptionState.OPEN, ExceptionState.RETRIED):
                self.exceptions[exc_id].state = ExceptionState.RESOLVED
        self._end(row, changes.job, lease_seconds)
        return Committed(operation_id, tuple(queued), mismatch)

    def _queue(self, order_id: str, dedupe: str, message: str, *, skip: bool) -> QueuedNote | None:
        if any(n.order_id == order_id and n.dedupe == dedupe for n in self.notes.values()):
            return None
        note_id = next(self._ids)
        state = NoteState.SKIPPED if skip else NoteState.PENDING
        self.notes[note_id] = MemoryNote(note_id, order_id, dedupe, message, state)
        return QueuedNote(note_id, message)

    def _end(self, row: MemoryJob, end: Finish | RetryLater | None, lease_seconds: int) -> None:
        if end is None:
            row.leased_until = self.clock + lease_seconds
            return
        row.leased_until, row.lease_owner = None, None
        if isinstance(end, RetryLater):
            row.run_after, row.last_error = self.clock + end.delay, end.error
            row.attempts = row.attempts + 1 if end.failed else 0
            return
        row.done_seq, row.attempts, row.last_error = row.claimed_seq, 0, None
        if end.again_in is not None:
            if row.requested_seq > row.claimed_seq:
                row.run_after = self.clock
            else:
                row.requested_seq, row.run_after = row.claimed_seq + 1, self.clock + end.again_in

    # -- the admin's buttons ----------------------------------------------------------------

    def retry(self, exception_id: int, rekey: Callable[[LedgerOperation, int], str]) -> None:
        """As the exceptions list's Retry: a failed operation goes back to pending under a new key."""
        exc = self.exceptions[exception_id]
        exc.state = ExceptionState.RETRIED
        if exc.operation_id is not None:
            op = self.operations[exc.operation_id]
            if op.state is OperationState.FAILED:
                generation = op.generation + 1
                self.operations[op.id] = replace(
                    op, state=OperationState.PENDING, generation=generation, idempotency_key=rekey(op, generation)
                )
        self.enqueue(exc.order_id)

    # -- the dashboard's requests and the Klarna binding ---------------------------------------

    def mark_request(self, job: ClaimedJob, request_id: int, state: RequestState, reason: str | None = None) -> None:
        self.requests[request_id] = replace(self.requests[request_id], state=state, reason=reason)

    def bind(self, job: ClaimedJob, klarna_order_id: str) -> Mismatch | None:
        return self._bind(klarna_order_id, job.order_id)

    def _bind(self, klarna_order_id: str, order_id: str) -> Mismatch | None:
        bound = self.bindings.setdefault(klarna_order_id, order_id)
        if bound != order_id:
            return Mismatch(MismatchCode.BOUND_ELSEWHERE, f"Klarna order {klarna_order_id} already belongs to {bound}")
        return None


# -- Klarna ---------------------------------------------------------------------------------------


def _recorded(body: Mapping[str, Any]) -> tuple[RecordedLine, ...]:
    return recorded_lines(body.get("order_lines"))


@dataclass
class InMemoryKlarna:
    """Implements :class:`KlarnaPort`: orders by id; a key seen before replays its first answer."""

    orders: dict[str, KlarnaOrder] = field(default_factory=dict)
    failures: list[KlarnaFailure] = field(default_factory=list)  # raised by the next calls, in order
    answers: dict[str, OperationResult] = field(default_factory=dict)
    performed: list[tuple[str, str, int]] = field(default_factory=list)  # (kind, order id, amount)
    calls: list[str] = field(default_factory=list)
    now: Callable[[], datetime] | None = None  # Klarna's clock, for extensions (None: from the expiry)
    increases: bool = True  # Klarna approves an authorization increase

    def authorize(self, amount: int, currency: str = "EUR", **fields: Any) -> str:
        order_id = str(uuid.uuid4())
        self.orders[order_id] = KlarnaOrder(
            id=KlarnaOrderId(order_id),
            status="AUTHORIZED", fraud_status="ACCEPTED", currency=currency, order_amount=amount,
            captured=0, refunded=0, remaining=amount, expires_at=None,
        )  # fmt: skip
        if fields:
            self.orders[order_id] = replace(self.orders[order_id], **fields)
        return order_id

    def _fail(self, call: str) -> None:
        self.calls.append(call)
        if self.failures:
            raise self.failures.pop(0)

    def _replay(self, key: str, perform: Callable[[], OperationResult]) -> OperationResult:
        if key not in self.answers:
            self.answers[key] = perform()
        return self.answers[key]

    def _refused(self, code: str) -> KlarnaFailure:
        return KlarnaFailure(code, retryable=False, code=code, messages=(code.replace("_", " ").lower(),))

    def get_order(self, order_id: str) -> KlarnaOrder:
        self._fail("get_order")
        if order_id not in self.orders:
            raise KlarnaFailure("not found", retryable=False, code="NO_SUCH_ORDER", not_found=True)
        return self.orders[order_id]

    def capture(self, order_id: str, body: Mapping[str, Any], idempotency_key: str) -> OperationResult:
        self._fail("capture")

        def perform() -> OperationResult:
            order, amount = self.orders[order_id], int(body["captured_amount"])
            if amount > order.remaining or order.status not in ("AUTHORIZED", "PART_CAPTURED"):
                raise self._refused("CAPTURE_NOT_ALLOWED")
            capture = KlarnaCapture(str(uuid.uuid4()), body.get("reference"), amount, _recorded(body))
            remaining = order.remaining - amount
            self.orders[order_id] = replace(
                order, captured=order.captured + amount, remaining=remaining, captures=(*order.captures, capture),
                status="CAPTURED" if remaining == 0 else "PART_CAPTURED",
            )  # fmt: skip
            self.performed.append(("capture", order_id, amount))
            return OperationResult(capture.capture_id, {"status": 201})

        return self._replay(idempotency_key, perform)

    def refund(self, order_id: str, body: Mapping[str, Any], idempotency_key: str) -> OperationResult:
        self._fail("refund")

        def perform() -> OperationResult:
            order, amount = self.orders[order_id], int(body["refunded_amount"])
            if amount > order.captured - order.refunded:
                raise self._refused("REFUND_NOT_ALLOWED")
            refund = KlarnaRefund(str(uuid.uuid4()), body.get("reference"), amount, _recorded(body))
            self.orders[order_id] = replace(order, refunded=order.refunded + amount, refunds=(*order.refunds, refund))
            self.performed.append(("refund", order_id, amount))
            return OperationResult(refund.refund_id, {"status": 201})

        return self._replay(idempotency_key, perform)

    def cancel(self, order_id: str, idempotency_key: str) -> OperationResult:
        self._fail("cancel")

        def perform() -> OperationResult:
            order = self.orders[order_id]
            if order.captured:
                raise self._refused("CANCEL_NOT_ALLOWED")
            self.orders[order_id] = replace(order, status="CANCELLED", remaining=0)
            self.performed.append(("cancel", order_id, order.remaining))
            return OperationResult(None, {"status": 204})

        return self._replay(idempotency_key, perform)

    def release_remaining_authorization(self, order_id: str, idempotency_key: str) -> OperationResult:
        self._fail("release")

        def perform() -> OperationResult:
            order = self.orders[order_id]
            self.orders[order_id] = replace(order, status="CAPTURED", remaining=0)
            self.performed.append(("release", order_id, order.remaining))
            return OperationResult(None, {"status": 204})

        return self._replay(idempotency_key, perform)

    # -- the authorization's life (issue 10): Klarna's rules in short ---------------------------

    def extend_authorization_time(self, order_id: str, idempotency_key: str) -> OperationResult:
        """``expires_at`` moves to ``now`` + 28 days, never past 180 days after the purchase."""
        self._fail("extend")

        def perform() -> OperationResult:
            order = self.orders[order_id]
            now = self.now() if self.now else order.expires_at
            limit = order.created_at + timedelta(days=180) if order.created_at else None
            if order.status not in ("AUTHORIZED", "PART_CAPTURED") or order.expires_at is None or now is None:
                raise self._refused("NOT_ALLOWED")
            if limit is not None and order.expires_at >= limit:
                raise self._refused("NOT_ALLOWED")
            expires = now + timedelta(days=28)
            self.orders[order_id] = replace(order, expires_at=max(order.expires_at, min(expires, limit or expires)))
            self.performed.append(("extend_authorization", order_id, order.remaining))
            return OperationResult(None, {"status": 204})

        return self._replay(idempotency_key, perform)

    def update_authorization(self, order_id: str, body: Mapping[str, Any], idempotency_key: str) -> OperationResult:
        """A new ``order_amount``: a decrease goes through, an increase only where ``increases`` allows it."""
        self._fail("update_authorization")

        def perform() -> OperationResult:
            order, amount = self.orders[order_id], int(body["order_amount"])
            if order.status not in ("AUTHORIZED", "PART_CAPTURED") or amount < order.captured:
                raise self._refused("NOT_ALLOWED")
            if amount > order.order_amount and not self.increases:
                raise self._refused("NOT_ALLOWED")
            self.orders[order_id] = replace(order, order_amount=amount, remaining=amount - order.captured)
            self.performed.append(("update_authorization", order_id, amount))
            return OperationResult(None, {"status": 204})

        return self._replay(idempotency_key, perform)


# -- Saleor ---------------------------------------------------------------------------------------


@dataclass
class InMemorySaleor:
    """Implements :class:`SaleorPort`: orders by id, their notes and private metadata."""

    orders: dict[str, ShopOrder] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    unavailable: int = 0  # the next calls that fail
    # Saleor's books: without HANDLE_PAYMENTS (the default here, an older install) they are refused.
    handle_payments: bool = False
    app: AppRef = field(default_factory=lambda: AppRef("QXBwOjE=", "app.klarna-om.saleor", "Klarna OM"))
    transactions: dict[str, list[SaleorTransaction]] = field(default_factory=dict)  # by order id
    private_ids: dict[str, str | None] = field(default_factory=dict)  # else the order's klarna_order_id
    books_refused: int = 0  # reads and writes of the books refused (no HANDLE_PAYMENTS)

    def _check(self) -> None:
        if self.unavailable > 0:
            self.unavailable -= 1
            raise SaleorUnavailable("Saleor not reachable")

    def get_order(self, order_id: str, metadata_key: str) -> ShopOrder | None:
        self._check()
        order = self.orders.get(order_id)
        return replace(order, notes=frozenset(self.notes.get(order_id, []))) if order else None

    def add_note(self, order_id: str, message: str) -> None:
        self._check()
        self.notes.setdefault(order_id, []).append(message)

    def set_private_metadata(self, object_id: str, values: dict[str, str]) -> None:
        self._check()
        self.metadata.setdefault(object_id, {}).update(values)

    def write_order(self, order_id: str, notes: Sequence[str], private_metadata: Mapping[str, str] | None) -> Written:
        """A note failing fails the request as a whole (what was written is unknown to the caller);
        the metadata failing fails only the metadata."""
        for message in notes:
            self.add_note(order_id, message)
        taken = (True,) * len(notes)
        if private_metadata is None:
            return Written(taken)
        try:
            self.set_private_metadata(order_id, dict(private_metadata))
        except SaleorUnavailable:
            return Written(taken, metadata=False)
        return Written(taken, metadata=True)

    # -- Saleor's books (amounts recomputed from the events, as Saleor does) --------------------

    def _books_check(self) -> None:
        self._check()
        if not self.handle_payments:
            self.books_refused += 1
            raise BooksUnavailable("the app lacks HANDLE_PAYMENTS")

    def get_order_and_books(self, order_id: str, metadata_key: str) -> tuple[ShopOrder | None, OrderBooks | None]:
        self._books_check()
        order = self.orders.get(order_id)
        if order is None:
            return None, None
        return replace(order, notes=frozenset(self.notes.get(order_id, []))), self._books(order)

    def get_books(self, order_id: str, metadata_key: str) -> OrderBooks | None:
        self._books_check()
        order = self.orders.get(order_id)
        return self._books(order) if order else None

    def _books(self, order: ShopOrder) -> OrderBooks:
        order_id = order.id
        return OrderBooks(
            order_id=order.id, number=order.number, checkout_id=None, channel_slug=order.channel_slug,
            currency=order.currency, total_gross=order.total_gross,
            private_klarna_id=self.private_ids.get(order_id, order.klarna_order_id),
            transactions=tuple(self.transactions.get(order_id, ())), payments=(),
        )  # fmt: skip

    def create_transaction(self, order_id: str, draft: TransactionDraft) -> SaleorTransaction:
        self._books_check()
        event = TransactionEvent(
            str(uuid.uuid4()), EventType.AUTHORIZATION_SUCCESS, draft.psp_reference, draft.authorized, draft.message
        )
        tx = _recomputed(
            SaleorTransaction(
                str(uuid.uuid4()), draft.name, draft.psp_reference, self.app, draft.currency, events=(event,)
            )
        )
        self.transactions.setdefault(order_id, []).append(tx)
        return tx

    def report_event(self, transaction_id: str, report: EventReport, currency: str) -> ReportOutcome:
        self._books_check()
        order_id, index = next(
            (o, i) for o, txs in self.transactions.items() for i, t in enumerate(txs) if t.id == transaction_id
        )
        tx = self.transactions[order_id][index]
        if not tx.owned_by(self.app):
            return ReportOutcome(False, error_code="PERMISSION_DENIED")
        same = [e for e in tx.events if (e.type, e.psp_reference) == (report.type, report.psp_reference)]
        if same:
            if same[0].amount != report.amount:
                return ReportOutcome(False, error_code="INCORRECT_DETAILS", message="another amount")
            return ReportOutcome(True, already_processed=True)
        event = TransactionEvent(str(uuid.uuid4()), report.type, report.psp_reference, report.amount, report.message)
        self.transactions[order_id][index] = _recomputed(replace(tx, events=(event, *tx.events)))
        return ReportOutcome(True)


def _recomputed(tx: SaleorTransaction) -> SaleorTransaction:
    total: dict[EventType, int] = {}
    for event in tx.events:
        total[event.type] = total.get(event.type, 0) + event.amount
    charged, refunded = total.get(EventType.CHARGE_SUCCESS, 0), total.get(EventType.REFUND_SUCCESS, 0)
    canceled = total.get(EventType.CANCEL_SUCCESS, 0)
    authorized = total.get(EventType.AUTHORIZATION_SUCCESS, 0) - charged - canceled
    return replace(tx, authorized=max(authorized, 0), charged=charged - refunded, refunded=refunded, canceled=canceled)


def _conforms(
    ledger: InMemoryLedger, klarna: InMemoryKlarna, saleor: InMemorySaleor
) -> tuple[LedgerRepository, KlarnaPort, SaleorPort]:
    """Never called: mypy checks here that each in-memory port implements its Protocol."""
    return ledger, klarna, saleor
