"""Process exceptions: retry (a fresh idempotency key, the order queued again) and dismiss."""

from __future__ import annotations

from sqlalchemy.orm import Session

from plugin.db.models import Operation, ProcessException, utcnow
from plugin.domain.model import PlannedOperation
from plugin.services import queue
from plugin.services.sync import idempotency_key


class ExceptionNotOpen(LookupError):
    """No such exception, or it was already retried, dismissed or resolved."""


def retry_exception(session: Session, exception_id: int) -> str:
    """Reopen the failed operation under a new key generation and enqueue its order.

    A new key because Klarna replays the first answer for a key it has seen: the same key would
    only repeat the failure.
    """
    exc = session.get(ProcessException, exception_id)
    if exc is None:
        raise ExceptionNotOpen(f"no exception #{exception_id}")
    if exc.state != "open":
        raise ExceptionNotOpen(f"exception #{exception_id} is {exc.state}")
    if exc.operation_id is not None:
        op = session.get(Operation, exc.operation_id)
        if op is not None and op.state == "failed":
            op.generation += 1
            op.state = "pending"
            planned = PlannedOperation(op.kind, op.reference, op.amount)
            op.idempotency_key = idempotency_key(
                op.saleor_api_url, op.order_id, op.klarna_order_id, planned, op.generation
            )
    exc.state = "retried"
    exc.resolved_at = utcnow()
    queue.enqueue(session, exc.saleor_api_url, exc.order_id)
    return f"exception #{exception_id} retried; order {exc.order_id} queued"
