"""HTTP client for Klarna Order Management v1 (klarna-om.md §1, §2).

The client owns transport, auth, timeouts, idempotency headers and error translation. It never
retries or sleeps on an error: every failure becomes a ``KlarnaError`` whose ``retryable`` flag
tells the worker what to do (errors.py). The only wait inside the client is the optional
client-side ``RateLimiter``.
"""

from __future__ import annotations

import base64
import functools
import importlib.metadata
import json
import logging
import platform
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Protocol, TypeAlias
from urllib.parse import quote

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

from plugin.http import BoundedAdapter, Bounds
from plugin.klarna.errors import KlarnaTransportError, error_from_response
from plugin.metrics import KLARNA_CALLS, KLARNA_LATENCY

__all__ = [
    "BASE_URLS",
    "KlarnaOrdersClient",
    "KlarnaResponse",
    "Limiter",
    "RateLimiter",
    "base_url",
    "default_user_agent",
]


logger = logging.getLogger(__name__)

BASE_URLS: Final[Mapping[tuple[str, str], str]] = {
    ("EU", "live"): "https://api.klarna.com",
    ("EU", "playground"): "https://api.playground.klarna.com",
    ("NA", "live"): "https://api-na.klarna.com",
    ("NA", "playground"): "https://api-na.playground.klarna.com",
    ("OC", "live"): "https://api-oc.klarna.com",
    ("OC", "playground"): "https://api-oc.playground.klarna.com",
}

_ORDERS_PATH: Final = "/ordermanagement/v1/orders"
_LOG_BODY_LIMIT: Final = 10 * 1024
_REDACTED: Final = "[REDACTED]"
_SECRET_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})
_PACKAGE: Final = "klarna-om-saleor"

JSONValue: TypeAlias = dict[str, Any] | list[Any] | None


def base_url(region: str, environment: str, override: str | None = None) -> str:
    """Return the Klarna API base URL for a region (EU, NA, OC) and environment (live, playground).

    A non-empty ``override`` wins (tests and local trials point it at a fake).
    Raises ``ValueError`` for an unknown region or environment.
    """
    if override:
        return override.rstrip("/")
    try:
        return BASE_URLS[(region.strip().upper(), environment.strip().lower())]
    except KeyError:
        raise ValueError(
            f"unknown Klarna region/environment {region!r}/{environment!r}; "
            "expected region EU, NA or OC and environment live or playground"
        ) from None


def default_user_agent() -> str:
    """Klarna's SDK-style User-Agent: ``Library/… Language/Python_… Module/…``."""
    try:
        version = importlib.metadata.version(_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "0.0.0"
    return f"Library/{_PACKAGE}_{version} Language/Python_{platform.python_version()} Module/{_PACKAGE}_{version}"


class Limiter(Protocol):
    """What the client waits on before each call: a token of the merchant's rate."""

    def acquire(self) -> None: ...


class RateLimiter:
    """Thread-safe token bucket: ``burst`` calls at once, then ``rate_per_second`` on average.

    Klarna counts limits per merchant id, so share one limiter per merchant (klarna-om.md §1.4).
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self._rate = float(rate_per_second)
        self._burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Take one token, blocking until it is available."""
        with self._lock:
            now = self._clock()
            elapsed = max(now - self._updated, 0.0)
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._updated = now
            # Reserve the token now, even if that makes the balance negative: each caller then
            # sleeps exactly until its own token matures, in arrival order, outside the lock.
            self._tokens -= 1.0
            wait = -self._tokens / self._rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)


@dataclass(frozen=True)
class KlarnaResponse:
    """A 2xx answer from Klarna.

    ``resource_id`` is the ``Capture-Id`` / ``Refund-Id`` of a 201, else None.
    ``log`` is the redacted exchange log (see ``KlarnaOrdersClient``).
    """

    status: int
    json: JSONValue
    resource_id: str | None
    log: dict[str, Any]


class KlarnaOrdersClient:
    """Client for the Order Management endpoints of one merchant's credentials.

    Every POST/PATCH requires an ``idempotency_key`` (sent as ``Klarna-Idempotency-Key``); re-send
    the same key when retrying. Non-2xx answers raise ``KlarnaAPIError`` subclasses; connection
    failures and timeouts raise ``KlarnaTransportError``. Each call returns or raises with an
    exchange ``log`` dict: method, url, request_headers (secrets redacted), request_body, status,
    response_headers, response_body (≤ 10 kB), elapsed_ms, idempotency_key, correlation_id.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = (3.05, 20.0),
        user_agent: str | None = None,
        rate_limiter: Limiter | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._orders_url = f"{self._base_url}{_ORDERS_PATH}/"
        self._owns_session = session is None
        self._session = session if session is not None else _new_session()
        self._timeout = timeout
        self._user_agent = user_agent or default_user_agent()
        self._rate_limiter = rate_limiter
        # Built once: the headers every call sends (credentials as UTF-8; requests would encode str
        # credentials as Latin-1 and fail on anything else), and their redacted copy for the log.
        self._headers: dict[str, str] = {
            "User-Agent": self._user_agent,
            "Accept": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii"),
        }
        self._log_headers = _redact(self._headers)
        # A malformed base URL is reported by the first call, as requests would report it.
        self._url_error: requests.RequestException | None = None
        try:
            requests.PreparedRequest().prepare_url(self._orders_url, None)
        except requests.RequestException as exc:
            self._url_error = exc
        self._adapter: BaseAdapter | None = None
        self._env_settings: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"KlarnaOrdersClient(base_url={self._base_url!r})"

    def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> KlarnaOrdersClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- endpoints ---------------------------------------------------------------------------

    def get_order(self, order_id: str) -> KlarnaResponse:
        """GET the order (200 with the Order object)."""
        return self._call("get_order", "GET", order_id, "")

    def capture(self, order_id: str, body: Mapping[str, Any], idempotency_key: str) -> KlarnaResponse:
        """POST /captures (201); ``resource_id`` is the ``Capture-Id``."""
        return self._call(
            "capture",
            "POST",
            order_id,
            "/captures",
            body=body,
            idempotency_key=idempotency_key,
            id_header="Capture-Id",
        )

    def refund(self, order_id: str, body: Mapping[str, Any], idempotency_key: str) -> KlarnaResponse:
        """POST /refunds (201); ``resource_id`` is the ``Refund-Id``."""
        return self._call(
            "refund",
            "POST",
            order_id,
            "/refunds",
            body=body,
            idempotency_key=idempotency_key,
            id_header="Refund-Id",
        )

    def cancel(self, order_id: str, idempotency_key: str) -> KlarnaResponse:
        """POST /cancel (204); only allowed before any capture."""
        return self._call("cancel", "POST", order_id, "/cancel", idempotency_key=idempotency_key)

    def release_remaining_authorization(self, order_id: str, idempotency_key: str) -> KlarnaResponse:
        """POST /release-remaining-authorization (204); needs at least one capture."""
        return self._call(
            "release_remaining_authorization",
            "POST",
            order_id,
            "/release-remaining-authorization",
            idempotency_key=idempotency_key,
        )

    def extend_authorization_time(self, order_id: str, idempotency_key: str) -> KlarnaResponse:
        """POST /extend-authorization-time (204)."""
        return self._call(
            "extend_authorization_time",
            "POST",
            order_id,
            "/extend-authorization-time",
            idempotency_key=idempotency_key,
        )

    def add_shipping_info(
        self,
        order_id: str,
        capture_id: str,
        body: Mapping[str, Any],
        idempotency_key: str,
    ) -> KlarnaResponse:
        """POST /captures/{capture_id}/shipping-info (204)."""
        return self._call(
            "add_shipping_info",
            "POST",
            order_id,
            f"/captures/{_segment(capture_id)}/shipping-info",
            body=body,
            idempotency_key=idempotency_key,
        )

    # -- transport ---------------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        method: str,
        order_id: str,
        suffix: str,
        *,
        body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        id_header: str | None = None,
    ) -> KlarnaResponse:
        if method != "GET" and not idempotency_key:
            raise ValueError(f"{operation} requires a non-empty idempotency_key")
        if self._url_error is not None:
            raise self._url_error
        url = f"{self._orders_url}{_segment(order_id)}{suffix}"
        # The request is built here rather than by Session.prepare_request, which would merge session
        # settings, re-parse the URL, re-encode the auth and look up ~/.netrc on every call: the URL is
        # checked once (__init__) and its path segments are quoted; headers and auth are built once.
        headers = dict(self._headers)
        log_headers = dict(self._log_headers)
        data: bytes | None = None
        request_body: Any = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            request_body = json.loads(data)  # a detached copy of exactly what was sent
            headers["Content-Type"] = log_headers["Content-Type"] = "application/json"
            headers["Content-Length"] = log_headers["Content-Length"] = str(len(data))
        elif method != "GET":
            headers["Content-Length"] = log_headers["Content-Length"] = "0"
        if idempotency_key:
            headers["Klarna-Idempotency-Key"] = log_headers["Klarna-Idempotency-Key"] = idempotency_key
        prepared = requests.PreparedRequest()
        prepared.method, prepared.url, prepared.body = method, url, data
        prepared.headers = CaseInsensitiveDict(headers)
        log: dict[str, Any] = {
            "method": method,
            "url": url,
            "request_headers": log_headers,
            "request_body": request_body,
            "status": None,
            "response_headers": None,
            "response_body": None,
            "elapsed_ms": None,
            "idempotency_key": idempotency_key,
            "correlation_id": None,
        }
        if self._rate_limiter is not None:
            self._rate_limiter.acquire()

        adapter, settings = self._transport(url)
        started = time.monotonic()
        try:
            # The adapter directly: no cookie jar, hooks or redirect logic (redirects are never followed).
            response = adapter.send(prepared, timeout=self._timeout, **settings)
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ) as exc:
            log["elapsed_ms"] = _elapsed_ms(started)
            self._log_call(operation, order_id, log, outcome="transport_error")
            raise KlarnaTransportError(
                f"{method} {url}: {type(exc).__name__}: {exc}",
                maybe_performed=_maybe_performed(exc),
                log=log,
            ) from exc

        content = response.content
        log["elapsed_ms"] = _elapsed_ms(started)
        log["status"] = response.status_code
        log["response_headers"] = _redact(response.headers)
        parsed, log["response_body"] = _parse_body(content)
        if not 200 <= response.status_code < 300:
            error = error_from_response(response.status_code, content, response.headers, log)
            log["correlation_id"] = error.correlation_id
            self._log_call(
                operation,
                order_id,
                log,
                outcome="api_error",
                error_code=error.error_code,
            )
            raise error

        # Success bodies carry no correlation_id; use the header if Klarna sends one (verify).
        log["correlation_id"] = response.headers.get("Klarna-Correlation-Id")
        self._log_call(operation, order_id, log, outcome="ok")
        resource_id = None
        if id_header is not None:
            resource_id = response.headers.get(id_header) or _location_tail(response.headers)
        return KlarnaResponse(
            status=response.status_code,
            json=parsed if isinstance(parsed, dict | list) else None,
            resource_id=resource_id,
            log=log,
        )

    def _transport(self, url: str) -> tuple[BaseAdapter, dict[str, Any]]:
        """The session's adapter and the proxy and CA settings from the environment, looked up once per
        client (requests re-reads ``os.environ`` on every call otherwise)."""
        if self._adapter is None:
            settings = self._session.merge_environment_settings(url, {}, None, None, None)
            self._env_settings = {key: settings[key] for key in ("proxies", "verify", "cert")}
            self._adapter = self._session.get_adapter(url)
        return self._adapter, self._env_settings

    @staticmethod
    def _log_call(
        operation: str,
        order_id: str,
        log: Mapping[str, Any],
        *,
        outcome: str,
        error_code: str | None = None,
    ) -> None:
        _calls_counter(operation, outcome).inc()
        if log["elapsed_ms"] is not None:
            _latency_histogram(operation).observe(log["elapsed_ms"] / 1000)
        if not logger.isEnabledFor(logging.INFO):
            return
        logger.info(
            "Klarna call finished",
            extra={
                "klarna_order_id": order_id,
                "operation": operation,
                "outcome": outcome,
                "status": log["status"],
                "error_code": error_code,
                "correlation_id": log["correlation_id"],
                "elapsed_ms": log["elapsed_ms"],
            },
        )

    # -- the authorization's life (issue 10) ---------------------------------------------------

    def update_authorization(self, order_id: str, body: Mapping[str, Any], idempotency_key: str) -> KlarnaResponse:
        """PATCH /authorization (204): a new ``order_amount`` and ``order_lines``, which replace all lines.

        Klarna refuses (403 ``NOT_ALLOWED``) a captured, cancelled or expired order, an amount below
        what was captured, and an increase its risk check or the payment method does not allow.
        """
        return self._call(
            "update_authorization",
            "PATCH",
            order_id,
            "/authorization",
            body=body,
            idempotency_key=idempotency_key,
        )


@functools.cache
def _calls_counter(operation: str, outcome: str) -> Any:
    """The labelled child, looked up once (``labels()`` takes a lock and builds a key per call)."""
    return KLARNA_CALLS.labels(operation, outcome)


@functools.cache
def _latency_histogram(operation: str) -> Any:
    return KLARNA_LATENCY.labels(operation)


def _new_session() -> requests.Session:
    session = requests.Session()
    # max_retries=0: urllib3 must not retry on its own; the worker decides (STYLE H8).
    adapter = BoundedAdapter(Bounds(), pool_connections=4, pool_maxsize=64, max_retries=0)  # plugin/http.py
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _segment(value: str) -> str:
    if not value:
        raise ValueError("Klarna ids must be non-empty")
    return quote(value, safe="")


def _redact(headers: Mapping[str, str | bytes]) -> dict[str, str]:
    return {
        key: _REDACTED
        if key.lower() in _SECRET_HEADERS
        else value.decode("latin-1")
        if isinstance(value, bytes)
        else value
        for key, value in headers.items()
    }


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _parse_body(content: bytes) -> tuple[Any, Any]:
    """The body parsed as JSON (None when it is not JSON), and the body for the log (≤ 10 kB).

    Parsed once: a small JSON body is logged as the same (read-only) value the caller gets.
    """
    if not content:
        return None, None
    try:
        value = json.loads(content)
    except ValueError:
        value = None
    else:
        if len(content) <= _LOG_BODY_LIMIT:
            return value, value
    text = content[:_LOG_BODY_LIMIT].decode("utf-8", errors="replace")
    return value, (text + "…[truncated]" if len(content) > _LOG_BODY_LIMIT else text)


def _location_tail(headers: Mapping[str, str]) -> str | None:
    location = headers.get("Location")
    if not location:
        return None
    return location.rstrip("/").rsplit("/", 1)[-1] or None


def _maybe_performed(exc: requests.RequestException) -> bool:
    """Return False only when the request certainly never reached Klarna (no connection)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return False
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    # NewConnectionError (refused, unreachable) and NameResolutionError subclass
    # ConnectTimeoutError: nothing was sent. Anything else, e.g. ProtocolError("Connection
    # aborted.", RemoteDisconnected), may come after the request was sent: assume "maybe".
    return not isinstance(reason, ConnectTimeoutError)
