"""A dashboard request (TRANSACTION_*_REQUESTED) as the worker sees it: recorded, performed, reported.

The table and its queries are in :mod:`plugin.services.payment_requests`; these values cross the
ledger port, so the use case needs no database code to read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from plugin.domain.transactions import ActionKind


class RequestState(StrEnum):
    RECORDED = "recorded"  # answered with its pspReference; the worker has not finished it
    PERFORMED = "performed"  # Klarna did it; the report is still due
    REPORTED = "reported"  # Saleor has the *_SUCCESS or *_FAILURE under the pspReference
    FAILED = "failed"  # Klarna refused; the *_FAILURE report is still due


@dataclass(frozen=True)
class OpenRequest:
    id: int
    order_id: str
    transaction_id: str
    klarna_order_id: str
    action: ActionKind
    amount: int
    currency: str
    psp_reference: str
    details: dict[str, object]
    state: RequestState
    reason: str | None = None  # why Klarna refused it (state FAILED)
    # The Klarna reference of the operation made for it, where not the pspReference: a charge that
    # asked for exactly a shipment's value is captured with its lines under the shipment's id.
    klarna_reference: str | None = None

    @property
    def reference(self) -> str:
        """The Klarna ``reference`` of the capture or refund made for this request."""
        return self.klarna_reference or self.psp_reference
