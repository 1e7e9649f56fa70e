"""The Saleor port over :class:`SaleorClient`: every failure becomes :class:`SaleorUnavailable`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from plugin.domain.books import EventReport, TransactionDraft
from plugin.domain.model import ShopOrder
from plugin.domain.transactions import OrderBooks, ReportOutcome, SaleorTransaction
from plugin.saleor.client import SaleorClient, SaleorError
from plugin.services.ports import BooksUnavailable, SaleorUnavailable, Written


def _unavailable(exc: SaleorError, what: str) -> Exception:
    """Saleor's PermissionDenied (no HANDLE_PAYMENTS) is not an outage: the books are not ours to keep."""
    text = str(exc)
    if "PermissionDenied" in text or "HANDLE_PAYMENTS" in text:
        return BooksUnavailable(f"{what}: the app lacks HANDLE_PAYMENTS")
    return SaleorUnavailable(f"{what}: {exc}")


class SaleorOrders:
    """Implements :class:`plugin.services.ports.SaleorPort`."""

    def __init__(self, client: SaleorClient) -> None:
        self.client = client

    def get_order(self, order_id: str, metadata_key: str) -> ShopOrder | None:
        try:
            return self.client.get_order(order_id, metadata_key)
        except SaleorError as exc:
            raise SaleorUnavailable(f"Saleor: {exc}") from None

    def get_order_and_books(self, order_id: str, metadata_key: str) -> tuple[ShopOrder | None, OrderBooks | None]:
        try:
            return self.client.get_order_and_books(order_id, metadata_key)
        except SaleorError as exc:
            raise _unavailable(exc, "Saleor's order and books not read") from None

    def write_order(self, order_id: str, notes: Sequence[str], private_metadata: Mapping[str, str] | None) -> Written:
        try:
            taken, metadata = self.client.write_order(order_id, notes, private_metadata)
        except SaleorError as exc:
            raise SaleorUnavailable(f"order not written: {exc}") from None
        return Written(taken, metadata)

    def get_books(self, order_id: str, metadata_key: str) -> OrderBooks | None:
        try:
            return self.client.get_books(order_id, metadata_key)
        except SaleorError as exc:
            raise _unavailable(exc, "Saleor's books not read") from None

    def create_transaction(self, order_id: str, draft: TransactionDraft) -> SaleorTransaction:
        try:
            return self.client.create_transaction(order_id, draft)
        except SaleorError as exc:
            raise _unavailable(exc, "transaction not created") from None

    def report_event(self, transaction_id: str, report: EventReport, currency: str) -> ReportOutcome:
        try:
            return self.client.report_event(transaction_id, report, currency)
        except SaleorError as exc:
            raise _unavailable(exc, "event not reported") from None
