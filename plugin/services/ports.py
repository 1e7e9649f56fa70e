"""The ports the use cases work through, and the errors that cross them.

Each port takes and returns domain types. Adapters implement them at the edge (``plugin/klarna/port.py``,
``plugin/saleor/port.py``, ``plugin/db/repository.py``); in-memory twins live in
``plugin/testing/memory.py`` and mypy checks them against these Protocols.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from plugin.domain.books import EventReport, TransactionDraft
from plugin.domain.ledger import Changes, ClaimedJob, Committed, JobSnapshot
from plugin.domain.model import KlarnaOrder, ShopOrder
from plugin.domain.requests import RequestState
from plugin.domain.transactions import Mismatch, OrderBooks, ReportOutcome, SaleorTransaction

# -- errors ------------------------------------------------------------------------------------


class KlarnaFailure(Exception):
    """Klarna did not do what was asked. ``retryable``: the same call (same key) may work later."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        code: str,
        messages: tuple[str, ...] = (),
        correlation_id: str | None = None,
        retry_after: float | None = None,
        not_found: bool = False,
        log: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code
        self.messages = messages
        self.correlation_id = correlation_id
        self.retry_after = retry_after
        self.not_found = not_found
        self.log = log

    @property
    def reason(self) -> str:
        """Klarna's own words, once: its messages, else ours; never the correlation id (shown apart)."""
        return "; ".join(self.messages) if self.messages else str(self)


class SaleorUnavailable(Exception):
    """Saleor could not be read or written now; worth another try later."""


class Transient(Exception):
    """Worth another run later (Klarna 5xx/429/timeouts, Saleor unreachable)."""

    def __init__(self, message: str, retry_after: float | None = None, *, progressed: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.progressed = progressed


class BooksUnavailable(Exception):
    """Saleor refuses this app its books (an installation without HANDLE_PAYMENTS): act as before,
    with notes and metadata only."""


class LeaseLost(Exception):
    """Another worker took the job over; stop without touching anything."""


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    """What Saleor took of one :meth:`SaleorPort.write_order`: each note (in the order given), and the metadata."""

    notes: tuple[bool, ...] = ()
    metadata: bool = False


@dataclass(frozen=True)
class OperationResult:
    """Klarna accepted the operation; ``resource_id`` is the capture or refund id where it makes one."""

    resource_id: str | None = None
    log: Mapping[str, Any] = field(default_factory=dict)


# -- ports -------------------------------------------------------------------------------------


class KlarnaPort(Protocol):
    """Klarna's Order Management API for one merchant. Every call raises :class:`KlarnaFailure`."""

    def get_order(self, order_id: str) -> KlarnaOrder: ...
    def capture(self, order_id: str, body: Mapping[str, Any], idempotency_key: str) -> OperationResult: ...
    def refund(self, order_id: str, body: Mapping[str, Any], idempotency_key: str) -> OperationResult: ...
    def cancel(self, order_id: str, idempotency_key: str) -> OperationResult: ...
    def release_remaining_authorization(self, order_id: str, idempotency_key: str) -> OperationResult: ...
    # The authorization's life (issue 10).
    def extend_authorization_time(self, order_id: str, idempotency_key: str) -> OperationResult: ...
    def update_authorization(self, order_id: str, body: Mapping[str, Any], idempotency_key: str) -> OperationResult: ...


class SaleorPort(Protocol):
    """One installation's Saleor, with the app's token. Every call raises :class:`SaleorUnavailable`."""

    def get_order(self, order_id: str, metadata_key: str) -> ShopOrder | None: ...
    def get_order_and_books(self, order_id: str, metadata_key: str) -> tuple[ShopOrder | None, OrderBooks | None]:
        """The order and its books in one read, (None, None) for an unknown order; raises
        :class:`BooksUnavailable` where Saleor refuses the books (then :meth:`get_order` reads the order)."""
        ...

    def write_order(self, order_id: str, notes: Sequence[str], private_metadata: Mapping[str, str] | None) -> Written:
        """The notes (in order), then the private metadata, in one request. Raises :class:`SaleorUnavailable`
        when the request failed as a whole (what Saleor took of it is unknown)."""
        ...

    # Saleor's books (issue 9). Each raises :class:`BooksUnavailable` without HANDLE_PAYMENTS.
    def get_books(self, order_id: str, metadata_key: str) -> OrderBooks | None: ...
    def create_transaction(self, order_id: str, draft: TransactionDraft) -> SaleorTransaction: ...
    def report_event(self, transaction_id: str, report: EventReport, currency: str) -> ReportOutcome: ...


class LedgerRepository(Protocol):
    """The job queue's lease and one order's ledger, notes outbox and exceptions."""

    def claim(self, owner: str, *, lease_seconds: int, limit: int) -> list[ClaimedJob]:
        """Lease up to ``limit`` due jobs (one transaction)."""
        ...

    def load(self, job: ClaimedJob) -> JobSnapshot | None:
        """Credentials, channel settings and the order's ledger in one read; None if the installation is gone."""
        ...

    def commit(self, job: ClaimedJob, changes: Changes, *, lease_seconds: int) -> Committed:
        """Write ``changes`` in one transaction, renewing the lease; raises :class:`LeaseLost` (nothing written)
        when another worker holds the job."""
        ...

    # -- the dashboard's requests and the Klarna binding (issue 9, issue 11 item 1) ---------------

    def mark_request(self, job: ClaimedJob, request_id: int, state: RequestState, reason: str | None = None) -> None:
        """Move one request on (PERFORMED, FAILED with Klarna's reason, REPORTED); its own transaction."""
        ...

    def bind(self, job: ClaimedJob, klarna_order_id: str) -> Mismatch | None:
        """Bind the Klarna order to the job's order, or say which other order it already belongs to."""
        ...
