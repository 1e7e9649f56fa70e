"""Keep Saleor's books equal to Klarna's: the use case the sync calls after its Klarna operations.

Level-triggered, so it needs no ledger rows of its own: each run reads the transaction's events,
reports what is missing (Saleor deduplicates on pspReference and type, a replay comes back
``alreadyProcessed``), and a failed run is simply run again by the job's retry. It never calls
Klarna, so it can never repeat or undo a Klarna operation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from plugin.domain.books import (
    Conflict,
    EventReport,
    TransactionDraft,
    failure_report,
    missing_reports,
    request_psp_map,
    transaction_draft,
)
from plugin.domain.model import KlarnaOrder
from plugin.domain.requests import OpenRequest, RequestState
from plugin.domain.transactions import (
    ActionKind,
    OrderBooks,
    PaymentSource,
    ReportOutcome,
    SaleorTransaction,
    SourceKind,
)


class SaleorBooks(Protocol):
    """The part of the Saleor port this use case needs (SaleorClient implements it)."""

    def get_books(self, order_id: str, metadata_key: str) -> OrderBooks | None: ...

    def create_transaction(self, order_id: str, draft: TransactionDraft) -> SaleorTransaction: ...

    def report_event(self, transaction_id: str, report: EventReport, currency: str) -> ReportOutcome: ...


@dataclass(frozen=True)
class BooksResult:
    transaction: SaleorTransaction | None = None
    created: bool = False
    reported: tuple[EventReport, ...] = ()
    conflicts: tuple[Conflict, ...] = ()  # Saleor holds another amount under Klarna's id: tell the admin
    refused: tuple[tuple[EventReport, ReportOutcome], ...] = ()
    settled: tuple[int, ...] = field(default_factory=tuple)  # request ids Saleor now has the outcome of


def keep_books(
    saleor: SaleorBooks,
    *,
    order_id: str,
    source: PaymentSource,
    klarna: KlarnaOrder,
    portal_url: str = "",
    requests: Sequence[OpenRequest] = (),
) -> BooksResult:
    """Create the Klarna transaction when the source says so, then report what Saleor lacks.

    ``requests`` are the order's open dashboard requests: a capture, refund or cancel made for one
    is reported under its pspReference (closing it in Saleor); one Klarna refused is reported as the
    matching *_FAILURE. Returns which requests are settled so the caller marks them REPORTED.
    """
    if not source.books:
        return BooksResult()
    created = False
    tx = source.transaction
    if source.kind is SourceKind.CREATE or tx is None:
        tx = saleor.create_transaction(order_id, transaction_draft(klarna, portal_url))
        created = True
    mine = [r for r in requests if r.transaction_id == tx.id]
    answered = [r for r in mine if r.state is not RequestState.FAILED]
    mapping = request_psp_map(klarna, [(r.action, r.psp_reference, r.reference) for r in answered])
    cancels = [r.psp_reference for r in answered if r.action is ActionKind.CANCEL]
    plan = missing_reports(klarna, tx, portal_url=portal_url, request_psp=mapping, cancel_requests=cancels)
    result = _report(saleor, tx, (*plan.reports, *_failures(tx, mine, portal_url)), mine, klarna.currency)
    return replace(result, created=created, conflicts=plan.conflicts)


def report_failures(
    saleor: SaleorBooks, transaction: SaleorTransaction, requests: Sequence[OpenRequest], portal_url: str = ""
) -> BooksResult:
    """Close the requests that failed (state FAILED) with their *_FAILURE, once; nothing else.

    For a run that must not book Klarna's state (the Klarna order is not this order's, Klarna cannot
    be read, no credentials): the dashboard's requests still get their answer.
    """
    mine = [r for r in requests if r.transaction_id == transaction.id]
    currency = mine[0].currency if mine else transaction.currency
    return _report(saleor, transaction, _failures(transaction, mine, portal_url), mine, currency)


def _closed(transaction: SaleorTransaction) -> set[str]:
    return {e.psp_reference for e in transaction.events if e.type.endswith(("_SUCCESS", "_FAILURE"))}


def _failures(transaction: SaleorTransaction, mine: Sequence[OpenRequest], portal_url: str) -> list[EventReport]:
    closed = _closed(transaction)
    return [
        failure_report(r.action, r.psp_reference, r.amount, r.currency, r.reason or "refused", portal_url)
        for r in mine
        if r.state is RequestState.FAILED and r.psp_reference not in closed
    ]


def _report(
    saleor: SaleorBooks,
    transaction: SaleorTransaction,
    reports: Sequence[EventReport],
    mine: Sequence[OpenRequest],
    currency: str,
) -> BooksResult:
    closed = _closed(transaction)
    reported: list[EventReport] = []
    refused: list[tuple[EventReport, ReportOutcome]] = []
    for report in reports:
        outcome = saleor.report_event(transaction.id, report, currency)
        if outcome.ok:
            reported.append(report)
            closed.add(report.psp_reference)
        else:
            refused.append((report, outcome))
    settled = tuple(r.id for r in mine if r.psp_reference in closed)
    return BooksResult(transaction, reported=tuple(reported), refused=tuple(refused), settled=settled)
