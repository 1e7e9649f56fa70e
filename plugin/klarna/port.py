"""The Klarna port over :class:`KlarnaOrdersClient`: domain values in and out, :class:`KlarnaFailure` for errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from plugin.domain.model import KlarnaOrder
from plugin.klarna.client import KlarnaOrdersClient, KlarnaResponse
from plugin.klarna.errors import KlarnaAPIError, KlarnaError, KlarnaNotFoundError, KlarnaRateLimitError
from plugin.klarna.orders import parse_order
from plugin.services.ports import KlarnaFailure, OperationResult


def failure(exc: KlarnaError) -> KlarnaFailure:
    """The client's error as the domain's: retryable or not, Klarna's code, messages and correlation id."""
    api = exc if isinstance(exc, KlarnaAPIError) else None
    return KlarnaFailure(
        str(exc),
        retryable=exc.retryable,
        code=(api.error_code if api else None) or exc.__class__.__name__,
        messages=tuple(api.error_messages) if api else (),
        correlation_id=api.correlation_id if api else None,
        retry_after=exc.retry_after if isinstance(exc, KlarnaRateLimitError) else None,
        not_found=isinstance(exc, KlarnaNotFoundError),
        log=exc.log,
    )


class KlarnaOrders:
    """Implements :class:`plugin.services.ports.KlarnaPort`."""

    def __init__(self, client: KlarnaOrdersClient) -> None:
        self.client = client

    def _call(self, call: Callable[[], KlarnaResponse]) -> KlarnaResponse:
        try:
            return call()
        except KlarnaError as exc:
            raise failure(exc) from None

    def _done(self, call: Callable[[], KlarnaResponse]) -> OperationResult:
        response = self._call(call)
        return OperationResult(response.resource_id, response.log)

    def get_order(self, order_id: str) -> KlarnaOrder:
        raw = self._call(lambda: self.client.get_order(order_id)).json
        if not isinstance(raw, dict):
            raise KlarnaFailure("Klarna answered the order read without an order", retryable=True, code="BAD_ANSWER")
        return parse_order(raw)

    def capture(self, order_id: str, body: Mapping[str, Any], idempotency_key: str) -> OperationResult:
        return self._done(lambda: self.client.capture(order_id, body, idempotency_key))

    def refund(self, order_id: str, body: Mapping[str, Any], idempotency_key: str) -> OperationResult:
        return self._done(lambda: self.client.refund(order_id, body, idempotency_key))

    def cancel(self, order_id: str, idempotency_key: str) -> OperationResult:
        return self._done(lambda: self.client.cancel(order_id, idempotency_key))

    def release_remaining_authorization(self, order_id: str, idempotency_key: str) -> OperationResult:
        return self._done(lambda: self.client.release_remaining_authorization(order_id, idempotency_key))

    # -- the authorization's life (issue 10) ---------------------------------------------------

    def extend_authorization_time(self, order_id: str, idempotency_key: str) -> OperationResult:
        return self._done(lambda: self.client.extend_authorization_time(order_id, idempotency_key))

    def update_authorization(self, order_id: str, body: Mapping[str, Any], idempotency_key: str) -> OperationResult:
        return self._done(lambda: self.client.update_authorization(order_id, body, idempotency_key))
