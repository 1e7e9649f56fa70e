"""Errors raised by the Klarna Order Management client.

The error tree::

    KlarnaError                      base; .retryable, .log
    ├── KlarnaTransportError         no HTTP response (connect/read failure)   retryable
    │                                .maybe_performed: Klarna may have acted
    └── KlarnaAPIError               Klarna answered non-2xx                   final
        │                            .http_status .error_code .error_messages .correlation_id
        ├── KlarnaAuthError          401                                       final
        ├── KlarnaNotAllowedError    403  (CAPTURE_NOT_ALLOWED, NOT_ALLOWED…)  final
        ├── KlarnaNotFoundError      404  (NO_SUCH_ORDER, NO_SUCH_CAPTURE…)    final
        ├── KlarnaBadRequestError    400, 413, 422                             final
        ├── KlarnaConflictError      409                                       retryable
        ├── KlarnaRateLimitError     429  .retry_after                         retryable
        └── KlarnaServerError        5xx                                       retryable

A bare ``KlarnaAPIError`` stands for any other non-2xx status (3xx, 405, …) and is final.

``error_from_response`` is the only place that maps a response to a class, so "retry or not?"
is answered by ``err.retryable`` everywhere else. Retrying a POST is only safe with the same
``Klarna-Idempotency-Key`` (klarna-om.md §1.5).
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, ClassVar

__all__ = [
    "KlarnaAPIError",
    "KlarnaAuthError",
    "KlarnaBadRequestError",
    "KlarnaConflictError",
    "KlarnaError",
    "KlarnaNotAllowedError",
    "KlarnaNotFoundError",
    "KlarnaRateLimitError",
    "KlarnaServerError",
    "KlarnaTransportError",
    "error_from_response",
]

_MAX_MESSAGE_CHARS = 300


class KlarnaError(Exception):
    """Base of every error raised while talking to Klarna."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, log: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.log = log


class KlarnaTransportError(KlarnaError):
    """No HTTP response was received (connection refused, timeout, connection dropped).

    ``maybe_performed`` is True when the request may have reached Klarna (read timeout,
    connection dropped after sending): re-send with the same idempotency key, or re-read the order.
    """

    retryable: ClassVar[bool] = True

    def __init__(self, message: str, *, maybe_performed: bool, log: dict[str, Any] | None = None) -> None:
        super().__init__(message, log=log)
        self.maybe_performed = maybe_performed

    def __str__(self) -> str:
        performed = "may have been performed" if self.maybe_performed else "was not performed"
        return f"Klarna transport error: {self.args[0]} (request {performed})"


class KlarnaAPIError(KlarnaError):
    """Klarna answered with a non-2xx status."""

    def __init__(
        self,
        http_status: int,
        error_code: str | None,
        error_messages: list[str],
        correlation_id: str | None,
        *,
        log: dict[str, Any] | None = None,
    ) -> None:
        self.http_status = http_status
        self.error_code = error_code
        self.error_messages = list(error_messages)
        self.correlation_id = correlation_id
        super().__init__(self._render(), log=log)

    def _render(self) -> str:
        text = f"Klarna {self.http_status}"
        if self.error_code:
            text += f" {self.error_code}"
        if self.error_messages:
            text += ": " + "; ".join(self.error_messages)
        if self.correlation_id:
            text += f" (correlation_id {self.correlation_id})"
        return text

    def __str__(self) -> str:
        return self._render()


class KlarnaAuthError(KlarnaAPIError):
    """401: missing, wrong or wrong-region credentials."""


class KlarnaNotAllowedError(KlarnaAPIError):
    """403: the order's state forbids the operation (``*_NOT_ALLOWED``)."""


class KlarnaNotFoundError(KlarnaAPIError):
    """404: no such order, capture or refund (or wrong region/environment)."""


class KlarnaBadRequestError(KlarnaAPIError):
    """400, 413 or 422: the request itself is invalid; fix it, do not retry."""


class KlarnaConflictError(KlarnaAPIError):
    """409: conflicts with the order's current state; re-read, then decide."""

    retryable: ClassVar[bool] = True


class KlarnaRateLimitError(KlarnaAPIError):
    """429: rate limited. ``retry_after`` is in seconds when Klarna said so."""

    retryable: ClassVar[bool] = True

    def __init__(
        self,
        http_status: int,
        error_code: str | None,
        error_messages: list[str],
        correlation_id: str | None,
        *,
        retry_after: float | None = None,
        log: dict[str, Any] | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(http_status, error_code, error_messages, correlation_id, log=log)


class KlarnaServerError(KlarnaAPIError):
    """5xx: Klarna failed or is unavailable."""

    retryable: ClassVar[bool] = True


_CLASS_BY_STATUS: Mapping[int, type[KlarnaAPIError]] = {
    400: KlarnaBadRequestError,
    401: KlarnaAuthError,
    403: KlarnaNotAllowedError,
    404: KlarnaNotFoundError,
    409: KlarnaConflictError,
    413: KlarnaBadRequestError,
    422: KlarnaBadRequestError,
    429: KlarnaRateLimitError,
}


def error_from_response(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    log: dict[str, Any] | None,
    *,
    now: Callable[[], float] = time.time,
) -> KlarnaAPIError:
    """Build the error for a non-2xx Klarna response; the one place that classifies statuses.

    :param status: the HTTP status code.
    :param body: the raw response body (Klarna's ``ErrorMessageDto`` JSON, or anything else).
    :param headers: the response headers (looked up case-insensitively).
    :param log: the exchange log to attach to the error.
    :param now: wall clock in epoch seconds, used for an HTTP-date ``Retry-After``.
    """
    error_code, messages, correlation_id = _parse_error_body(status, body)
    if correlation_id is None:
        correlation_id = _header(headers, "Klarna-Correlation-Id")
    if status == 429:
        return KlarnaRateLimitError(
            status,
            error_code,
            messages,
            correlation_id,
            retry_after=parse_retry_after(headers, now=now),
            log=log,
        )
    cls = _CLASS_BY_STATUS.get(status)
    if cls is None:
        cls = KlarnaServerError if 500 <= status <= 599 else KlarnaAPIError
    return cls(status, error_code, messages, correlation_id, log=log)


def parse_retry_after(headers: Mapping[str, str], *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP-date), else ``X-Ratelimit-Reset``."""
    retry_after = _header(headers, "Retry-After")
    if retry_after is not None:
        seconds = _parse_seconds(retry_after)
        if seconds is None:
            seconds = _parse_http_date_delay(retry_after, now())
        if seconds is not None:
            return seconds
    reset = _header(headers, "X-Ratelimit-Reset")
    if reset is not None:
        # Klarna documents "X-Ratelimit-Reset: 1"; tolerate the "1, 1;w=1" list form too.
        return _parse_seconds(reset.split(",")[0].split(";")[0])
    return None


def _parse_error_body(status: int, body: bytes) -> tuple[str | None, list[str], str | None]:
    try:
        data = json.loads(body)
    except ValueError:  # includes UnicodeDecodeError and JSONDecodeError
        data = None
    if isinstance(data, dict):
        code = data.get("error_code")
        raw_messages = data.get("error_messages")
        correlation_id = data.get("correlation_id")
        messages = [str(m) for m in raw_messages] if isinstance(raw_messages, list) else []
        if not messages and isinstance(data.get("error_message"), str):
            messages = [data["error_message"]]
        return (
            str(code) if code is not None else None,
            [_shorten(m) for m in messages],
            str(correlation_id) if correlation_id is not None else None,
        )
    # Not Klarna's error format (e.g. an HTML page from a proxy): keep a short snippet.
    text = " ".join(body.decode("utf-8", errors="replace").split())
    if not text:
        try:
            text = HTTPStatus(status).phrase
        except ValueError:
            text = ""
    return None, [_shorten(text)] if text else [], None


def _shorten(text: str) -> str:
    if len(text) <= _MAX_MESSAGE_CHARS:
        return text
    return text[: _MAX_MESSAGE_CHARS - 1] + "…"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _parse_seconds(value: str) -> float | None:
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _parse_http_date_delay(value: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.fromtimestamp(now, UTC)).total_seconds(), 0.0)
