"""sync_order: make Klarna reflect one Saleor order, durably, and tell the shop (DESIGN §2 steps 3-6).

The use case works through three ports (:mod:`plugin.services.ports`): Klarna, Saleor, and the
ledger repository. Each planned operation is written to the ledger with its idempotency key before
the Klarna call, and its outcome is recorded with its note; so a crash at any point resumes: the
next run re-reads Klarna, recognises what was performed (:data:`plugin.services.kinds.KINDS`), and
re-sends what was not with the same key. Writes are batched: a run that performs one capture
commits the ledger row (renewing the lease) before the call, then the outcome with its note, then
the note's delivery with the job's completion.

Nothing stranded, nothing silent: a failed run counts against the attempt budget only if it made no
progress; notes wait in the outbox until Saleor has them; giving up leaves an open exception and a
note saying what is not done; an exception resolves itself when a later run does what it was about.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from plugin.domain.books import merchant_id_of, portal_order_url
from plugin.domain.ledger import (
    Changes,
    ClaimedJob,
    Committed,
    ExceptionDraft,
    Finish,
    JobSnapshot,
    LedgerOperation,
    NewOperation,
    NoteDraft,
    OpenException,
    OperationUpdate,
    QueuedNote,
    RetryLater,
)
from plugin.domain.lifecycle import plan_life
from plugin.domain.model import (
    Action,
    Blocked,
    KlarnaOrder,
    MerchantSettings,
    Options,
    PlannedOperation,
    ShopOrder,
)
from plugin.domain.money import format_minor
from plugin.domain.requests import OpenRequest, RequestState
from plugin.domain.states import ExceptionState, OperationKind, OperationState, transition
from plugin.domain.transactions import (
    Mismatch,
    OrderBooks,
    PaymentSource,
    SourceKind,
    check_match,
)
from plugin.services import booking, lifecycle
from plugin.services.books import BooksResult, keep_books, report_failures
from plugin.services.kinds import KINDS, fulfillment_name
from plugin.services.ports import (
    BooksUnavailable,
    KlarnaFailure,
    KlarnaPort,
    LeaseLost,
    LedgerRepository,
    SaleorPort,
    SaleorUnavailable,
    Transient,
    Written,
)

__all__ = ["LeaseLost", "Outcome", "SyncDeps", "Transient", "backoff", "idempotency_key", "sync_order"]

logger = logging.getLogger(__name__)

KEY_NAMESPACE = uuid.UUID("8a6f1c2e-6b1e-4c35-9d7a-0c6d9b4f2a10")
NOTE_RECHECK_SECONDS = 300.0  # a note Saleor did not take yet: deliver it later
BOOKS_RECHECK_SECONDS = 60.0  # Saleor's books not kept this run (Saleor down, a request refused): again
BOOKS_REFUSAL_RETRY_SECONDS = 600.0  # Saleor refused an installation its books: ask again after this long
# After giving up, the order is checked again on its own (nothing stranded) at this many retry
# bases, at most 15 minutes; the open exception tells the admin meanwhile.
GIVE_UP_RECHECK_BASES, GIVE_UP_RECHECK_MAX = 3000.0, 900.0
ANY_CHANNEL = "*"


def backoff(
    attempts: int,
    *,
    base: float,
    cap: float = 300.0,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with jitter (half to full), at least ``retry_after``."""
    rng = rng or random.Random()
    delay = min(cap, base * float(2 ** max(attempts - 1, 0))) * rng.uniform(0.5, 1.0)
    return max(delay, retry_after or 0.0)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class SyncDeps:
    repo: LedgerRepository
    saleor_for: Callable[[str, str], SaleorPort]  # (saleor_api_url, token)
    klarna_for: Callable[[MerchantSettings], KlarnaPort]
    lease_seconds: int = 60
    max_attempts: int = 8
    retry_base: float = 2.0
    now: Callable[[], datetime] = _utcnow
    monotonic: Callable[[], float] = time.monotonic
    # (saleor_api_url, app id) -> when (``monotonic``) Saleor last refused that installation its books.
    books_refused: dict[tuple[str, str], float] = field(default_factory=dict)


@dataclass
class Outcome:
    performed: list[str] = field(default_factory=list)
    again_in: float | None = None
    skipped: str | None = None
    retry_in: float | None = None  # the run failed and will be retried
    gave_up: bool = False


def idempotency_key(
    saleor_api_url: str, order_id: str, klarna_order_id: str, op: PlannedOperation, generation: int
) -> str:
    """Deterministic: the same intended operation gives the same key; another amount, another key."""
    name = "|".join((saleor_api_url, order_id, klarna_order_id, op.kind, op.reference, str(op.amount), str(generation)))
    return str(uuid.uuid5(KEY_NAMESPACE, name))


def sync_order(deps: SyncDeps, job: ClaimedJob) -> Outcome:
    """Run one claimed job to its end: done, retried later, or given up (with a note and an exception).

    Raises :class:`LeaseLost` when another worker took the job over (nothing more is written).
    """
    snapshot = deps.repo.load(job)
    if snapshot is None:
        deps.repo.commit(job, Changes(job=Finish()), lease_seconds=deps.lease_seconds)
        return Outcome(skipped="installation removed")
    run = _Run(deps, job, snapshot)
    try:
        run.sync()
    except Transient as exc:
        run.settle_failure(exc)
    return run.outcome


def fail_job(deps: SyncDeps, job: ClaimedJob, error: str) -> Outcome:
    """A run that broke outside the use case's own handling (a bug, the database): retry or give up."""
    snapshot = deps.repo.load(job)
    if snapshot is None:
        deps.repo.commit(job, Changes(job=Finish()), lease_seconds=deps.lease_seconds)
        return Outcome(skipped="installation removed")
    run = _Run(deps, job, snapshot)
    run.settle_failure(Transient(error))
    return run.outcome


class _Run:
    """One run of one job: the order, its ledger as the run sees it, and the writes not yet committed."""

    def __init__(self, deps: SyncDeps, job: ClaimedJob, snapshot: JobSnapshot) -> None:
        self.deps, self.job, self.snapshot = deps, job, snapshot
        self.ops: dict[int, LedgerOperation] = {op.id: op for op in snapshot.operations}
        self.notes: dict[int, QueuedNote] = {note.id: note for note in snapshot.pending_notes}
        self.exceptions: dict[int, OpenException] = {e.id: e for e in snapshot.exceptions}
        self.pending = Changes()
        self.outcome = Outcome()
        self.progressed = False
        self.lease_from = job.leased_at
        self.saleor: SaleorPort = deps.saleor_for(job.saleor_api_url, snapshot.token)
        self.order: ShopOrder | None = None
        self.merchant: MerchantSettings | None = None
        self.klarna_state: KlarnaOrder | None = None
        self.told: set[str] = set()  # subjects raised in this run
        self.planned = False  # the run read Klarna and planned: a block it did not raise is gone
        # Saleor's books (issue 9): whose payment it is, the dashboard's requests, Klarna after the run.
        self.source: PaymentSource | None = None
        self.books: OrderBooks | None = None
        self.requests: list[OpenRequest] = []
        self.fresh = False  # klarna_state was read after the operations
        self.mismatched = False  # the Klarna order is not this order's: its state is never booked here

    # -- the run -------------------------------------------------------------------------------

    def sync(self) -> None:
        channels = self.snapshot.channels
        any_channel = channels.get(ANY_CHANNEL)
        metadata_key = any_channel.options.klarna_id_metadata_key if any_channel else "klarna_order_id"
        try:
            order, self.books = self._read_order(metadata_key)
        except SaleorUnavailable as exc:
            raise Transient(str(exc)) from None
        source = None
        if order is not None:
            found = channels.get(order.channel_slug, any_channel)
            options = found.options if found else Options()
            source = booking.source_of(order, self.books, self.snapshot.app_id, options)
        if order is None or source is None or not source.acts:
            # Not a Klarna order, or another app's Klarna payment: nothing is written (issue 9 item 1c).
            self.outcome.skipped = (
                source.reason if source and source.kind is SourceKind.FOREIGN else "not a Klarna order"
            )
            self._commit(job=Finish())
            return
        self.source = source
        if source.books:
            self.requests = list(self.snapshot.requests)
        # The Klarna id comes only from the source: never from a transaction of an app not allowed.
        order = replace(order, klarna_order_id=source.klarna_order_id)
        self.order = order
        self.merchant = channels.get(order.channel_slug, any_channel)
        if self.merchant is None or not self.merchant.has_credentials:
            mapping = self.merchant or MerchantSettings(channel=ANY_CHANNEL)
            message = (
                f"Klarna is not configured for channel {order.channel_slug}: "
                "set the API credentials in the app's settings"
            )
            if mapping.action_for(order.status) is not Action.NONE:
                self._raise(
                    "config", "NOT_CONFIGURED", message, note_key=f"exception:NOT_CONFIGURED:{order.klarna_order_id}"
                )
            self._refuse_requests(message)
        else:
            self._sync_klarna(self.merchant)
        self._resolve_settled()
        self._deliver_and_finish()

    def _read_order(self, metadata_key: str) -> tuple[ShopOrder | None, OrderBooks | None]:
        """The order with its books in one read; the order alone (books None) where Saleor refuses the books.

        A refusal is remembered for the installation (:attr:`SyncDeps.books_refused`), so the refused
        query is sent again only every :data:`BOOKS_REFUSAL_RETRY_SECONDS` (the merchant may grant
        HANDLE_PAYMENTS meanwhile).
        """
        installation, now = (self.job.saleor_api_url, self.snapshot.app_id), self.deps.monotonic()
        refused_at = self.deps.books_refused.get(installation)
        if refused_at is None or now - refused_at >= BOOKS_REFUSAL_RETRY_SECONDS:
            try:
                read = self.saleor.get_order_and_books(self.job.order_id, metadata_key)
            except BooksUnavailable:
                self.deps.books_refused[installation] = now
            else:
                self.deps.books_refused.pop(installation, None)
                return read
        return self.saleor.get_order(self.job.order_id, metadata_key), None

    def _sync_klarna(self, merchant: MerchantSettings) -> None:
        # Klarna is read on every run, whatever the mapping says for the status: a scheduled check
        # (expiry, drift, a fraud decision) has no webhook of its own.
        order = self._order
        klarna = self.deps.klarna_for(merchant)
        state = self._read_klarna(klarna)
        if state is None:
            return
        state = self._reconcile(state)
        self.klarna_state = state
        if not self._matches(state):
            return
        # The dashboard's requests first; the plan sees Klarna with them done (issue 9 item 4).
        now = self.deps.now()
        prepaid = booking.prepaid_references(self.requests)
        judging = booking.Judging(merchant.options, now, prepaid)
        steps, seen = booking.button_steps(self.requests, order, state, judging)
        buttons = [step.operation for step in steps if step.operation is not None]
        # A request whose operation carries another reference than its pspReference (a shipment's):
        # the reference is stored with the operation's ledger row, before Klarna is called.
        owners = {
            (step.operation.kind, step.operation.reference, step.operation.amount): step.request.id
            for step in steps
            if step.operation is not None and step.operation.reference != step.request.reference
        }
        # What the buttons are about to do is the app's own, not activity seen in Klarna.
        ledger = lifecycle.app_history(self.ops.values())
        history = replace(
            ledger,
            references=prepaid,
            cancelled=ledger.cancelled or any(op.kind is OperationKind.CANCEL for op in buttons),
            released=ledger.released or any(op.kind is OperationKind.RELEASE for op in buttons),
        )
        life = plan_life(order, seen, merchant.mapping, merchant.options, history, now=now, prepaid=prepaid)
        self.planned = True
        self._supersede([*buttons, *life.operations])
        self.pending.notes.extend(lifecycle.seen_notes(life.seen, self._klarna_id))
        for blocked in life.blocked:
            self._blocked(blocked)
        for op in [*buttons, *life.operations]:
            if not self._perform(klarna, op, owners.get((op.kind, op.reference, op.amount))):
                break
        self._settle_requests(steps)
        self._refresh(klarna)
        self._schedule(merchant, now)
        self._keep_books()

    def _schedule(self, merchant: MerchantSettings, now: datetime) -> None:
        """Keep the order's next check (the job's delayed run) while something is authorized."""
        after = self.klarna_state
        assert after is not None  # read before the plan; re-read by _refresh after operations
        # Klarna's state after the operations is unknown (the re-read failed): look again soon.
        soon = NOTE_RECHECK_SECONDS if self.outcome.performed and not self.fresh else None
        extended = {
            f"op:{op.id}:succeeded" for op in self.ops.values() if op.kind is OperationKind.EXTEND_AUTHORIZATION
        }
        self.pending.notes = [
            replace(n, message=lifecycle.extension_note(after)) if n.dedupe in extended else n
            for n in self.pending.notes
        ]
        wait = lifecycle.check_in(self._order, after, merchant.options, now)
        if wait is not None or soon is not None:
            wait = min(w for w in (wait, soon) if w is not None)
            self.outcome.again_in = wait if self.outcome.again_in is None else min(self.outcome.again_in, wait)

    @property
    def _order(self) -> ShopOrder:
        assert self.order is not None  # set before any step that needs it
        return self.order

    @property
    def _klarna_id(self) -> str:
        return self._order.klarna_order_id or ""

    def _read_klarna(self, klarna: KlarnaPort) -> KlarnaOrder | None:
        try:
            return klarna.get_order(self._klarna_id)
        except KlarnaFailure as exc:
            if exc.retryable:
                raise Transient(str(exc), exc.retry_after, progressed=self.progressed) from None
            if exc.not_found:
                code, message = "UNKNOWN_KLARNA_ORDER", f"Klarna does not know order {self._klarna_id}"
            else:
                code, message = exc.code or "KLARNA_ERROR", f"Klarna refused to read the order: {exc.reason}"
            self._raise("read", code, message, note_key=f"exception:{code}:{self._klarna_id}", failure=exc)
            self._refuse_requests(message)
            return None

    def _reconcile(self, state: KlarnaOrder) -> KlarnaOrder:
        """Settle unsettled ledger rows against Klarna's truth; make ledger successes visible to the plan."""
        for op in list(self.ops.values()):
            if op.state in (OperationState.PENDING, OperationState.FAILED):
                done = KINDS[op.kind].done_in(op, state)
                if done is not None:
                    self._succeeded(op, done.resource_id)
        for op in self.ops.values():
            spec = KINDS[op.kind]
            if op.state is OperationState.SUCCEEDED and spec.done_in(op, state) is None and spec.show_in:
                logger.warning("Klarna does not list an operation the ledger recorded", extra=self._log_extra())
                state = spec.show_in(state, op)
        return state

    def _supersede(self, operations: Iterable[PlannedOperation]) -> None:
        """Pending rows the plan no longer wants (the order changed before they were sent) are closed,
        so they are never sent later."""
        wanted = {(op.kind, op.reference, op.amount) for op in operations}
        for op in list(self.ops.values()):
            if op.state is OperationState.PENDING and (op.kind, op.reference, op.amount) not in wanted:
                self._update(replace(op, state=transition(op.state, OperationState.SUPERSEDED)))

    def _blocked(self, blocked: Blocked) -> None:
        # A block that waits (fraud review) is looked at again on the order's schedule.
        verb = BLOCKED_VERB.get(blocked.code, "captured")
        note_key = lifecycle.blocked_note_key(blocked, self._klarna_id)
        message = f"Klarna: not {verb}: {blocked.message}."
        if blocked.code not in lifecycle.QUIET_BLOCKS:
            self._raise(
                f"blocked:{blocked.code}:{blocked.reference}",
                blocked.code,
                blocked.message,
                note_key=note_key,
                note=message,
            )
        else:
            self.pending.notes.append(NoteDraft(note_key, message))

    # -- one operation -------------------------------------------------------------------------

    def _perform(self, klarna: KlarnaPort, planned: PlannedOperation, request_id: int | None = None) -> bool:
        """Ledger first, then Klarna, then the outcome. False stops the remaining operations.

        ``request_id``: the dashboard request the operation is made for, under another reference than
        its pspReference; the reference is stored in the commit before the Klarna call.
        """
        reference = (request_id, planned.reference) if request_id is not None else None
        spec = KINDS[planned.kind]
        op = next(
            (
                o
                for o in self.ops.values()
                if (o.kind, o.reference, o.amount) == (planned.kind, planned.reference, planned.amount)
            ),
            None,
        )
        if op is not None and op.state is OperationState.SUPERSEDED:
            op = self._update(replace(op, state=transition(op.state, OperationState.PENDING)))
        if op is not None and op.state is not OperationState.PENDING:
            return op.state is OperationState.SUCCEEDED
        if op is None:
            free = planned.amount == 0
            new = NewOperation(
                kind=planned.kind,
                reference=planned.reference,
                amount=planned.amount,
                currency=self._order.currency,
                klarna_order_id=self._klarna_id,
                idempotency_key=idempotency_key(self.job.saleor_api_url, self._order.id, self._klarna_id, planned, 0),
                request_body=spec.body(planned),
                # Free goods: Klarna refuses an empty capture or refund; the ledger remembers the
                # units so the next shipment of the line is valued after them.
                state=OperationState.SUCCEEDED if free else OperationState.PENDING,
            )
            committed = self._commit(new_operation=new, bind=self._klarna_id, request_reference=reference)
            if committed.mismatch is not None:  # the Klarna order is another order's: nothing written, nothing sent
                self._mismatch(committed.mismatch)
                return False
            assert committed.operation_id is not None
            op = LedgerOperation(
                id=committed.operation_id,
                kind=new.kind,
                reference=new.reference,
                amount=new.amount,
                currency=new.currency,
                klarna_order_id=new.klarna_order_id,
                idempotency_key=new.idempotency_key,
                generation=0,
                state=new.state,
                request_body=new.request_body,
                attempts=0 if free else 1,
            )
            self.ops[op.id] = op
            if free:
                return True
        else:
            self.pending.operations.append(OperationUpdate(op, attempted=True))
            self._commit(request_reference=reference)
        try:
            result = spec.send(klarna, self._klarna_id, op.request_body, op.idempotency_key)
        except KlarnaFailure as exc:
            return self._failed(op, exc)
        self._succeeded(op, result.resource_id, log=result.log)
        self.outcome.performed.append(f"{op.kind.value} {format_minor(op.amount, op.currency)}")
        return True

    def _failed(self, op: LedgerOperation, exc: KlarnaFailure) -> bool:
        failed = replace(op, error_code=exc.code, error_message=str(exc)[:2000], correlation_id=exc.correlation_id)
        if exc.retryable:
            # The row stays pending: the retry re-sends it with the same key. Past the attempt
            # budget the run gives up (an exception, a note), and the order is checked again.
            self._update(failed, log=exc.log)
            raise Transient(str(exc), exc.retry_after, progressed=self.progressed)
        failed = self._update(replace(failed, state=transition(op.state, OperationState.FAILED)), log=exc.log)
        if op.kind in lifecycle.REPLANNED_ON_REFUSAL:
            self.outcome.again_in = 0.0  # the next plan says what Klarna refused and what to do
            return False
        spec = KINDS[op.kind]
        amount = format_minor(op.amount, op.currency)
        reason = f"{exc.code}: {exc.reason}"
        again = f" (retry {op.generation})" if op.generation else ""
        message = f"the {spec.label} of {amount}{self._about(op)} failed{again}: {reason}"
        self._raise(
            f"op:{op.id}",
            exc.code,
            message,
            note_key=f"op:{op.id}:failed:{op.generation}",
            operation_id=op.id,
            failure=exc,
            what_to_do="Retry it from the app's process exceptions.",
        )
        logger.warning("Klarna operation failed", extra=self._log_extra(op_kind=op.kind.value, error_code=exc.code))
        return False

    def _about(self, op: LedgerOperation) -> str:
        noun = {OperationKind.CAPTURE: "shipment", OperationKind.REFUND: "return"}.get(op.kind)
        if noun is None or self.order is None or op.reference == "shipping":
            return ""
        return f" for {fulfillment_name(self.order, op.reference, noun)}"

    def _succeeded(self, op: LedgerOperation, resource_id: str | None, log: Mapping[str, Any] | None = None) -> None:
        done = replace(
            op,
            state=transition(op.state, OperationState.SUCCEEDED),
            klarna_resource_id=resource_id or op.klarna_resource_id,
            error_code=None,
            error_message=None,
        )
        self._update(done, log=log)
        self.pending.notes.append(NoteDraft(f"op:{op.id}:succeeded", KINDS[op.kind].success_note(done, self._order)))
        self.progressed = True

    def _update(self, op: LedgerOperation, log: Mapping[str, Any] | None = None) -> LedgerOperation:
        self.ops[op.id] = op
        self.pending.operations.append(OperationUpdate(op, log=log))
        return op

    def _failures(self) -> int:
        """Failed runs so far, this one included."""
        return self.job.attempts + 1

    # -- exceptions ----------------------------------------------------------------------------

    def _raise(
        self,
        subject: str,
        code: str,
        message: str,
        *,
        note_key: str,
        operation_id: int | None = None,
        failure: KlarnaFailure | None = None,
        what_to_do: str = "",
        note: str | None = None,
    ) -> None:
        """Open an exception with its note, once; reopen one whose retry is blocked again (a fresh note)."""
        self.told.add(subject)
        existing = next((e for e in self.exceptions.values() if e.subject == subject), None)
        if existing is not None and existing.state is ExceptionState.OPEN:
            return  # the admin was told; the note said it
        correlation = f" (Klarna correlation id {failure.correlation_id})" if failure and failure.correlation_id else ""
        if note is None:
            text = message if message.startswith("Klarna") else f"Klarna: {message}"
            note = f"{text}{correlation}." + (f" {what_to_do}" if what_to_do else "")
        reopen = None
        if existing is not None:
            reopen = existing.id
            reopened = existing.reopened + 1
            note_key = f"{note_key}:again:{reopened}"
            note = note.replace("Klarna: ", "Klarna, after Retry: ", 1)
            self.exceptions[existing.id] = replace(
                existing, state=transition(existing.state, ExceptionState.OPEN), reopened=reopened
            )
        self.pending.exceptions.append(
            ExceptionDraft(
                subject=subject,
                code=code,
                message=message,
                note=NoteDraft(note_key, note),
                operation_id=operation_id,
                correlation_id=failure.correlation_id if failure else None,
                log=(failure.log,) if failure and failure.log else (),
                reopen=reopen,
            )
        )
        logger.warning("process exception", extra=self._log_extra(error_code=code))

    def _resolve_settled(self) -> None:
        """Close the exceptions whose subject this run has done (a later sync did what they were about)."""
        for exc in list(self.exceptions.values()):
            if exc.subject in self.told or not self._settled(exc):
                continue
            transition(exc.state, ExceptionState.RESOLVED)
            del self.exceptions[exc.id]
            self.pending.resolved.append(exc.id)

    def _settled(self, exc: OpenException) -> bool:
        kind, _, rest = exc.subject.partition(":")
        if kind == "op":
            op = self.ops.get(exc.operation_id or int(rest or 0))
            return op is not None and op.state is OperationState.SUCCEEDED
        if kind == "blocked":
            # Level-triggered: the run planned and the block is not there any more.
            return self.planned
        if kind == "config":
            return self.merchant is not None and self.merchant.has_credentials
        if kind == "read":
            return self.klarna_state is not None
        return kind == "sync"  # the whole run went through

    # -- failure of the run --------------------------------------------------------------------

    def settle_failure(self, exc: Transient) -> None:
        """Retry later, or give up: an open exception and a note saying what is not done."""
        progressed = self.progressed or exc.progressed
        failures = self.job.attempts if progressed else self._failures()
        if progressed or failures < self.deps.max_attempts:
            delay = backoff(max(failures, 1), base=self.deps.retry_base, retry_after=exc.retry_after)
            self.outcome.retry_in = delay
            self._commit(job=RetryLater(delay, str(exc), failed=not progressed))
            return
        self.outcome.gave_up = True
        self._raise(
            "sync",
            "SYNC_FAILED",
            f"the order could not be synced after {failures} attempts ({exc}); {self._not_done()}",
            note_key=f"sync-failed:{self.deps.now().isoformat()}",
            what_to_do="Check that Klarna and Saleor answer, then press Retry on the exception in the app.",
        )
        logger.error("sync gave up", extra={"order_id": self.job.order_id, "saleor_api_url": self.job.saleor_api_url})
        self.outcome.again_in = min(GIVE_UP_RECHECK_BASES * self.deps.retry_base, GIVE_UP_RECHECK_MAX)
        try:
            self._deliver_and_finish()
        except Transient:
            self._commit(job=Finish(again_in=self.outcome.again_in))

    def _not_done(self) -> str:
        open_ops = [op for op in self.ops.values() if op.state is OperationState.PENDING]
        if not open_ops:
            return "Klarna may not reflect the order's latest status yet"
        what = ", ".join(
            f"the {KINDS[op.kind].label} of {format_minor(op.amount, op.currency)}{self._about(op)}" for op in open_ops
        )
        return f"not done in Klarna: {what}"

    # -- notes, summary, commits ---------------------------------------------------------------

    def _deliver_and_finish(self) -> None:
        """Queue what the run decided, write the pending notes and the summary, and complete the job."""
        write = self.merchant is None or self.merchant.options.write_notes
        if not write:
            self.pending.notes_skipped.extend(self.notes)
            self.pending.skip_notes = True
            self.notes.clear()
            self._commit(job=self._finish())
            self._write_order()
            return
        if self.pending.empty and not self.notes:
            self._commit(job=self._finish())
            self._write_order()
            return
        self._commit()
        self._write_order()
        self._commit(job=self._finish())

    def _finish(self) -> Finish:
        again_in = self.outcome.again_in
        if self.notes:  # not delivered (no order to write to yet): try again later
            again_in = min(again_in or NOTE_RECHECK_SECONDS, NOTE_RECHECK_SECONDS)
        return Finish(again_in=again_in)

    def _write_order(self) -> None:
        """The pending notes and the summary metadata, in one request to Saleor where both are due.

        Each note Saleor took is marked written; one it refused, or every one when the request failed as
        a whole (what Saleor took is unknown), stays pending and the run is retried: a note already on
        the order is recognised then and not written twice. The summary is best effort.
        """
        on_order = self.order.notes if self.order is not None else frozenset()
        notes = sorted(self.notes.values(), key=lambda n: n.id)
        for note in notes:
            if note.message in on_order:  # written by a run that died before recording it
                self._written(note)
        notes = [n for n in notes if n.message not in on_order]
        summary = self._summary()
        if not notes and summary is None:
            return
        self._ensure_lease()
        try:
            written = self.saleor.write_order(self.job.order_id, [n.message for n in notes], summary)
        except SaleorUnavailable as exc:
            written, failure = Written(), str(exc)
        else:
            failure = "Saleor refused a note"
        if summary is not None and not written.metadata:
            logger.warning("order summary metadata not written", extra=self._log_extra())
        taken = written.notes + (False,) * (len(notes) - len(written.notes))
        for note, ok in zip(notes, taken, strict=True):
            if ok:
                self._written(note)
            else:
                self.pending.note_failures.append(note.id)
        if not all(taken):
            raise Transient(failure, progressed=self.progressed)

    def _written(self, note: QueuedNote) -> None:
        del self.notes[note.id]
        self.pending.notes_written.append(note.id)
        self.progressed = True

    def _ensure_lease(self) -> None:
        """A worker that may have lost its lease writes nothing to Saleor: renew it if half of it is used."""
        if self.deps.monotonic() - self.lease_from > self.deps.lease_seconds / 2:
            self._commit()

    def _commit(
        self,
        *,
        new_operation: NewOperation | None = None,
        job: Finish | RetryLater | None = None,
        bind: str | None = None,
        request_reference: tuple[int, str] | None = None,
    ) -> Committed:
        changes, self.pending = self.pending, Changes()
        changes.new_operation, changes.job, changes.bind = new_operation, job, bind
        changes.request_reference = request_reference
        started = self.deps.monotonic()
        committed = self.deps.repo.commit(self.job, changes, lease_seconds=self.deps.lease_seconds)
        self.lease_from = started
        if request_reference is not None and committed.mismatch is None:
            request_id, reference = request_reference
            self.requests = [replace(r, klarna_reference=reference) if r.id == request_id else r for r in self.requests]
        for note in () if changes.skip_notes else committed.queued_notes:
            self.notes[note.id] = note
        return committed

    def _summary(self) -> dict[str, str] | None:
        """The order's private-metadata summary where the run performed something (the ledger stays the record)."""
        state, order = self.klarna_state, self.order
        if state is None or order is None or not self.outcome.performed:
            return None
        done = [op for op in sorted(self.ops.values(), key=lambda o: o.id) if op.state is OperationState.SUCCEEDED]
        captured = max(state.captured, sum(op.amount for op in done if op.kind is OperationKind.CAPTURE))
        refunded = max(state.refunded, sum(op.amount for op in done if op.kind is OperationKind.REFUND))
        last = done[-1].kind if done else None
        status = state.status if self.fresh or last is None else SUMMARY_STATUS.get(last, state.status)
        return {
            "klarna_om.order_id": self._klarna_id,
            "klarna_om.status": status,
            "klarna_om.captured": format_minor(captured, order.currency),
            "klarna_om.refunded": format_minor(refunded, order.currency),
        }

    # -- Saleor's books and the dashboard's requests (plugin/services/booking.py) -------------------

    def _matches(self, state: KlarnaOrder) -> bool:
        """Before the first operation: one Klarna order for one Saleor order, and it fits the order (issue 11)."""
        if any(op.state is OperationState.SUCCEEDED for op in self.ops.values()):
            return True
        assert self.source is not None  # set with the order
        options = self.merchant.options if self.merchant else Options()
        facts = booking.order_facts(self._order, self.books, self.source, options)
        mismatch = check_match(facts, state, state.merchant_reference1)
        if mismatch is None and self.source.kind is SourceKind.CREATE:
            # Bound before the transaction is created (the first operation's commit binds otherwise).
            mismatch = self.deps.repo.bind(self.job, self._klarna_id)
        if mismatch is None:
            return True
        self._mismatch(mismatch)
        return False

    def _mismatch(self, mismatch: Mismatch) -> None:
        self.mismatched = True
        self._refuse_requests(f"Klarna order {self._klarna_id} is not acted on: {mismatch.message}")
        self._raise(
            "match",
            mismatch.code.value,
            f"Klarna order {self._klarna_id} is not acted on: {mismatch.message}",
            note_key=f"exception:{mismatch.code.value}:{self._klarna_id}",
            what_to_do="Check which Klarna order pays this order; nothing was done in Klarna.",
        )

    def _settle_requests(self, steps: list[booking.ButtonStep]) -> None:
        """Each performed request PERFORMED, each impossible or refused one FAILED with the reason."""
        if steps and not self.pending.empty:
            self._commit()  # the operations' outcomes first: a request is never ahead of the ledger
        for step in steps:
            state, reason = RequestState.PERFORMED, None
            if step.refusal is not None:
                state, reason = RequestState.FAILED, step.refusal
            elif step.operation is not None:
                planned = step.operation
                op = next(
                    (o for o in self.ops.values() if (o.kind, o.reference, o.amount) == (planned.kind, planned.reference, planned.amount)),
                    None,
                )  # fmt: skip
                if op is None or op.state not in (OperationState.SUCCEEDED, OperationState.FAILED):
                    continue  # not sent yet (an earlier one stopped the run): still RECORDED
                if op.state is OperationState.FAILED:
                    state, reason = RequestState.FAILED, op.error_message or op.error_code or "refused"
                    self.outcome.again_in = min(self.outcome.again_in or BOOKS_RECHECK_SECONDS, BOOKS_RECHECK_SECONDS)
            self.deps.repo.mark_request(self.job, step.request.id, state, reason)
            self.requests = [
                replace(r, state=state, reason=reason) if r.id == step.request.id else r for r in self.requests
            ]
        if any(r.state is RequestState.RECORDED for r in self.requests):
            self._books_later()  # a request waits for one before it (or a stopped run): judged again soon

    def _refresh(self, klarna: KlarnaPort) -> None:
        """Klarna's order after the operations: the summary and the books are written from it (issue 9 item 5)."""
        if not self.outcome.performed and not any(r.state is RequestState.PERFORMED for r in self.requests):
            return  # Klarna's order is as read
        try:
            self.klarna_state, self.fresh = klarna.get_order(self._klarna_id), True
        except KlarnaFailure:
            self._books_later()  # the summary falls back to the ledger; the books wait for a fresh read

    def _keep_books(self) -> None:
        """Report on the app's transaction what Klarna now shows; a failure here never touches Klarna's part:
        the run finishes and the books are tried again on their own (``again_in``)."""
        source, state = self.source, self.klarna_state
        if source is None or state is None or not source.books or self.mismatched:
            return
        if not self.fresh and (self.outcome.performed or any(r.state is RequestState.PERFORMED for r in self.requests)):
            return  # Klarna's order after the operations could not be read: the books wait for the next run
        portal = self._portal_url()
        try:
            # Every request, the reported ones too: a capture made for one stays booked under its pspReference.
            result = keep_books(
                self.saleor,
                order_id=self._order.id,
                source=source,
                klarna=state,
                portal_url=portal,
                requests=self.requests,
            )
        except BooksUnavailable:
            logger.info("Saleor's books not kept: HANDLE_PAYMENTS not granted", extra=self._log_extra())
            return
        except SaleorUnavailable:
            logger.warning("Saleor's books not kept now; tried again later", extra=self._log_extra())
            self._books_later()
            return
        self._booked(result, state.currency)

    def _refuse_requests(self, reason: str) -> None:
        """The run cannot perform the dashboard's requests (the Klarna order is not this order's, Klarna
        cannot be read, no credentials): each recorded one fails with the reason and Saleor gets its
        *_FAILURE now, instead of a request pending for ever. Klarna's state is not booked."""
        tx = self.source.transaction if self.source is not None and self.source.books else None
        if tx is None:
            return
        for request in self.requests:
            if request.state is RequestState.RECORDED:
                self.deps.repo.mark_request(self.job, request.id, RequestState.FAILED, reason)
        self.requests = [
            replace(r, state=RequestState.FAILED, reason=reason) if r.state is RequestState.RECORDED else r
            for r in self.requests
        ]
        if not any(r.state is RequestState.FAILED for r in self.requests):
            return
        try:
            result = report_failures(self.saleor, tx, self.requests, self._portal_url())
        except BooksUnavailable:
            return
        except SaleorUnavailable:
            self._books_later()
            return
        self._booked(result, tx.currency)

    def _portal_url(self) -> str:
        """The order's page in Klarna's merchant portal ("" without credentials to name the merchant)."""
        merchant = self.merchant
        if merchant is None or not merchant.has_credentials:
            return ""
        return portal_order_url(merchant.environment, merchant_id_of(merchant.username), self._klarna_id)

    def _booked(self, result: BooksResult, currency: str) -> None:
        """Record what Saleor took, and tell the admin what it refused."""
        reported = {r.id for r in self.requests if r.state is RequestState.REPORTED}
        for request_id in set(result.settled) - reported:
            self.deps.repo.mark_request(self.job, request_id, RequestState.REPORTED)
        for conflict in result.conflicts:
            self._raise(
                f"books:{conflict.type.value}:{conflict.psp_reference}",
                "BOOKS_CONFLICT",
                f"Saleor holds {conflict.type.value} {conflict.psp_reference} with another amount "
                f"({format_minor(conflict.booked, currency)}) than Klarna "
                f"({format_minor(conflict.klarna, currency)}); Saleor's books were not changed",
                note_key=f"books:conflict:{conflict.type.value}:{conflict.psp_reference}",
            )
        for report, outcome in result.refused:
            if outcome.error_code == "PERMISSION_DENIED":
                logger.info("Saleor's books not kept: the report was refused", extra=self._log_extra())
                continue
            self._raise(
                f"books:{report.type.value}:{report.psp_reference}",
                outcome.error_code or "BOOKS_REFUSED",
                f"Saleor refused the {report.type.value} report of {format_minor(report.amount, currency)}: "
                f"{outcome.message or outcome.error_code}",
                note_key=f"books:refused:{report.type.value}:{report.psp_reference}",
            )

    def _books_later(self) -> None:
        self.outcome.again_in = min(self.outcome.again_in or BOOKS_RECHECK_SECONDS, BOOKS_RECHECK_SECONDS)

    def _log_extra(self, **more: object) -> dict[str, object]:
        return {
            "saleor_api_url": self.job.saleor_api_url,
            "order_id": self.job.order_id,
            "klarna_order_id": self.order.klarna_order_id if self.order else None,
            **more,
        }


# The verb of a blocked plan step's note, by its code. Every block but a waiting one
# (lifecycle.QUIET_BLOCKS) opens an exception, which closes once a run plans without it.
BLOCKED_VERB = {"EXCEEDS_CAPTURED": "refunded", **lifecycle.BLOCKED_VERB}
# The status the summary shows after the last operation, where Klarna's read predates it.
SUMMARY_STATUS = {OperationKind.CANCEL: "CANCELLED", OperationKind.RELEASE: "CAPTURED"}
