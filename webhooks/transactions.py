"""The dashboard's Capture, Refund and Cancel buttons: TRANSACTION_*_REQUESTED (protocol §5.4).

Saleor calls this synchronously and applies whatever JSON body comes back, even on a 4xx; it
retries a 5xx five times with an *empty* body that no longer names the request, and never retries
a timeout. So this endpoint verifies, records the request with a pspReference it chooses, enqueues
the order's sync and answers at once with ``{"pspReference": …}`` (Saleor then counts the request
as pending until the worker reports the outcome under that pspReference). It never answers 5xx,
and never puts a success body on a 4xx:

    situation                                      status  body
    recorded (or an identical delivery again)       200    {"pspReference"}
    impossible (beyond the authorization, …)        200    {"result": "<ACTION>_FAILURE", "message"}
    the database or JWKS refetch is unavailable     200    {"result": "<ACTION>_FAILURE", "message"}
    empty body (Saleor's retry after a 5xx)         400    {"result": "<ACTION>_FAILURE", "message"}
    unauthenticated, malformed, wrong recipient     4xx    {"error": {"type", "message"}}
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from flask import Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import insert
from sqlalchemy.exc import SQLAlchemyError

from plugin.db.models import Delivery, utcnow
from plugin.domain.transactions import ACTION_EVENTS, FAILURE_EVENT, ActionKind, AppRef, refuse_reason
from plugin.metrics import WEBHOOKS_RECEIVED
from plugin.services import payment_requests, queue
from webhooks import _verified, _webhook_error, bp, static_manifest
from webhooks.payloads import PayloadError, parse_transaction_action

logger = logging.getLogger(__name__)

TRANSACTION_ACTIONS_PATH = "/api/webhooks/transaction-actions"
TRANSACTION_EVENTS = tuple(name.upper() for name in ACTION_EVENTS)


def _failure(action: ActionKind, message: str, status: int = 200) -> tuple[Response, int]:
    """A result Saleor stores as the request's *_FAILURE event (pspReference is optional there)."""
    return jsonify(result=FAILURE_EVENT[action].value, message=message[:512]), status


@functools.cache
def _identifier() -> str | None:
    """The manifest ``id``: Saleor's ``app_identifier``, kept across reinstalls."""
    identifier = static_manifest().get("id")
    return identifier if isinstance(identifier, str) else None


def _me(app_id: str) -> AppRef:
    return AppRef(app_id, _identifier())


@bp.post(TRANSACTION_ACTIONS_PATH)
def transaction_actions() -> ResponseReturnValue:
    action = ACTION_EVENTS.get(request.headers.get("Saleor-Event", "").lower())
    try:
        return _handle(action)
    except Exception:
        logger.exception("transaction request failed")
        if action is None:
            raise
        return _failure(action, "The app failed to take the request; nothing was done. Try again.")


def _handle(action: ActionKind | None) -> ResponseReturnValue:
    if action is not None and not request.get_data(cache=True):
        # Saleor's retry after a 5xx: the body is gone, so the request cannot be told apart. Nothing
        # is recorded; the failure tells the merchant to press the button again.
        return _failure(action, "The request arrived without its body (a retry); nothing was done.", 400)
    try:
        verified, error = _verified(TRANSACTION_EVENTS)
    except SQLAlchemyError:
        verified, error = None, _webhook_error(503, "DATABASE_UNAVAILABLE", "The database is unavailable")
    if error is not None:
        if action is not None and error[1] >= 500:
            # Saleor would retry with an empty body that no longer names the request: say it failed.
            return _failure(action, "The app could not check the request just now; nothing was done. Try again.")
        return error
    assert verified is not None  # _verified gives either the values or the error
    installation, raw, event = verified
    try:
        parsed = parse_transaction_action(raw, event)
    except PayloadError as exc:
        return _webhook_error(400, "MALFORMED_PAYLOAD", str(exc))
    if parsed.recipient_id != installation.app_id:
        return _webhook_error(403, "WRONG_RECIPIENT", "The event is addressed to another app")
    reason = refuse_reason(parsed, _me(installation.app_id))
    services: Any = current_app.extensions["klarna_om"]
    try:
        with services.db.engine.begin() as conn:
            delivery: dict[str, Any] = {
                "saleor_api_url": installation.saleor_api_url, "event": event, "order_id": parsed.order_id,
                "principal": parsed.request_event.created_by_app if parsed.request_event else None,
                "enqueued": reason is None, "received_at": utcnow(),
            }  # fmt: skip
            conn.execute(insert(Delivery), delivery)
            if reason is None:
                key = payment_requests.request_key(parsed, raw)
                recorded = payment_requests.record(conn, installation.saleor_api_url, parsed, key)
                queue.enqueue(conn, installation.saleor_api_url, parsed.order_id)
    except SQLAlchemyError:
        logger.exception("transaction request not recorded", extra={"event": event})
        return _failure(parsed.action, "The app could not record the request; nothing was done. Try again.")
    WEBHOOKS_RECEIVED.labels(event).inc()
    if reason is not None:
        logger.info("transaction request refused", extra={"event": event, "reason": reason})
        return _failure(parsed.action, f"Klarna Order Management: {reason}")
    worker = current_app.extensions.get("klarna_om_worker")
    if worker is not None:
        worker.wake()
    return jsonify(pspReference=recorded.psp_reference)


__all__ = ["TRANSACTION_ACTIONS_PATH", "TRANSACTION_EVENTS"]
