"""Process exceptions: retry (a fresh idempotency key, the order queued again) and dismiss."""

from __future__ import annotations

from sqlalchemy.orm import Session

from plugin.db.models import Operation, ProcessException, utcnow
from plugin.domain.model import PlannedOperation
from plugin.domain.states import ExceptionState, OperationKind, OperationState, transition
from plugin.services import queue
from plugin.services.sync import idempotency_key


class ExceptionNotOpen(LookupError):
    """No such exception, or it was already retried, dismissed or resolved."""


def retry_exception(session: Session, exception_id: int) -> str:
    """Reopen the failed operation under a new key generation and enqueue its order.

    A new key because Klarna replays the first answer for a key it has seen: the same key would
    only repeat the failure. The exception waits as *retried*: the next sync resolves it when it
    does what the exception is about, or reopens it with the new reason and a fresh note.
    """
    exc = session.get(ProcessException, exception_id)
    if exc is None:
        raise ExceptionNotOpen(f"no exception #{exception_id}")
    if exc.state != ExceptionState.OPEN:
        raise ExceptionNotOpen(f"exception #{exception_id} is {exc.state}")
    if exc.operation_id is not None:
        op = session.get(Operation, exc.operation_id)
        if op is not None and op.state == OperationState.FAILED:
            op.generation += 1
            op.state = transition(OperationState.FAILED, OperationState.PENDING).value
            planned = PlannedOperation(OperationKind(op.kind), op.reference, op.amount)
            op.idempotency_key = idempotency_key(
                op.saleor_api_url, op.order_id, op.klarna_order_id, planned, op.generation
            )
    exc.state = transition(ExceptionState.OPEN, ExceptionState.RETRIED).value
    exc.resolved_at = utcnow()
    queue.enqueue(session, exc.saleor_api_url, exc.order_id)
    queue.run_now(session, exc.saleor_api_url, exc.order_id)
    return f"exception #{exception_id} retried; order {exc.order_id} queued"
