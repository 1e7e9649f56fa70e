"""What the ledger holds for one order, as the use case sees it: operations, queued notes, exceptions.

Rows are immutable values; a change is a new value (``dataclasses.replace``) handed back to the
repository in a :class:`Changes` batch, which it writes in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .model import MerchantSettings
from .requests import OpenRequest
from .states import ExceptionState, OperationKind, OperationState
from .transactions import Mismatch


@dataclass(frozen=True)
class ClaimedJob:
    """A sync-order job leased by ``owner``; ``attempts`` counts the failed runs before this one."""

    id: int
    saleor_api_url: str
    order_id: str
    attempts: int
    owner: str
    leased_at: float = 0.0  # time.monotonic() just before the lease was taken (0: unknown, renew before writing)


@dataclass(frozen=True)
class LedgerOperation:
    id: int
    kind: OperationKind
    reference: str
    amount: int
    currency: str
    klarna_order_id: str
    idempotency_key: str
    generation: int
    state: OperationState
    request_body: Mapping[str, Any] | None = None
    klarna_resource_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    correlation_id: str | None = None
    attempts: int = 0


@dataclass(frozen=True)
class NewOperation:
    """An operation to write to the ledger (with its key) before Klarna is called."""

    kind: OperationKind
    reference: str
    amount: int
    currency: str
    klarna_order_id: str
    idempotency_key: str
    request_body: Mapping[str, Any] | None
    state: OperationState = OperationState.PENDING


@dataclass(frozen=True)
class OperationUpdate:
    """A new state (or the same, with error details) for a ledger row; ``log`` is appended."""

    operation: LedgerOperation
    log: Mapping[str, Any] | None = None
    attempted: bool = False  # one more call was sent


@dataclass(frozen=True)
class QueuedNote:
    id: int
    message: str


@dataclass(frozen=True)
class NoteDraft:
    """A note to queue; ``dedupe`` names what it is about, so it is queued once."""

    dedupe: str
    message: str


@dataclass(frozen=True)
class OpenException:
    """An exception on the order that is open, or retried and waiting to see whether that worked."""

    id: int
    subject: str  # what it is about: "op:<id>", "blocked:<code>:<reference>", "sync", "config", "read"
    code: str
    state: ExceptionState
    operation_id: int | None = None
    reopened: int = 0  # times a retry was blocked again


@dataclass(frozen=True)
class ExceptionDraft:
    """Open an exception (with its note), or reopen ``reopen`` with the new reason.

    A new one is opened only if its note is new: an exception the admin dismissed does not come
    back on the next sync for the same reason.
    """

    subject: str
    code: str
    message: str
    note: NoteDraft
    operation_id: int | None = None
    correlation_id: str | None = None
    log: tuple[Mapping[str, Any], ...] = ()
    reopen: int | None = None


@dataclass(frozen=True)
class Finish:
    """The claimed request is done; ``again_in`` asks for one more run later (fraud review, a note to deliver)."""

    again_in: float | None = None


@dataclass(frozen=True)
class RetryLater:
    """Release the lease and run again after ``delay``; ``failed`` counts it against the attempt budget."""

    delay: float
    error: str
    failed: bool = True


@dataclass
class Changes:
    """Everything one step writes, in one transaction (with the lease renewed, or nothing at all)."""

    new_operation: NewOperation | None = None
    operations: list[OperationUpdate] = field(default_factory=list)
    notes: list[NoteDraft] = field(default_factory=list)
    notes_written: list[int] = field(default_factory=list)
    notes_skipped: list[int] = field(default_factory=list)
    note_failures: list[int] = field(default_factory=list)
    skip_notes: bool = False  # the channel writes no notes: the ones queued here are stored skipped
    exceptions: list[ExceptionDraft] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    job: Finish | RetryLater | None = None
    # Bind this Klarna order id to the job's order first; on a mismatch ``new_operation`` is not written.
    bind: str | None = None
    # (request id, Klarna reference): the dashboard request the operation sent next is made for,
    # stored before Klarna is called so a run after a crash knows which capture answers it.
    request_reference: tuple[int, str] | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.new_operation
            or self.operations
            or self.notes
            or self.notes_written
            or self.notes_skipped
            or self.note_failures
            or self.exceptions
            or self.resolved
            or self.job
            or self.request_reference
        )


@dataclass(frozen=True)
class Committed:
    """What the repository tells back: the new operation's id and the notes it newly queued."""

    operation_id: int | None = None
    queued_notes: tuple[QueuedNote, ...] = ()
    mismatch: Mismatch | None = None  # the Klarna order belongs to another order (``Changes.bind``)


@dataclass(frozen=True)
class JobSnapshot:
    """Everything a job needs from the database, read once: credentials, settings, the order's ledger."""

    token: str
    app_id: str
    channels: Mapping[str, MerchantSettings]
    operations: tuple[LedgerOperation, ...]
    pending_notes: tuple[QueuedNote, ...]
    exceptions: tuple[OpenException, ...]
    requests: tuple[OpenRequest, ...] = ()  # the dashboard's requests of the order, reported ones too
