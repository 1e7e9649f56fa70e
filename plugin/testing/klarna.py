"""A stateful, strict fake of Klarna's Order Management API v1 (klarna-om.md §1-§5).

The fake is meant to catch client bugs, so it rejects whatever the real API is documented to
reject. Request bodies are validated against the OpenAPI copy in ``data/`` and the rules
the schema cannot express (line arithmetic, tax tolerance, line sums) are checked on top.

Choices where Klarna's behaviour is not documented (keep them in mind when a test fails):

* 401 carries an ErrorMessageDto (``error_code`` ``UNAUTHORIZED``) plus ``WWW-Authenticate``.
* A body that is not ``application/json`` gets 415 ``UNSUPPORTED_MEDIA_TYPE``; broken JSON,
  schema violations and arithmetic errors get 400 ``BAD_VALUE``. An unknown order id that is
  not a UUID gets 400 ``INVALID_ORDER_ID``; an unknown UUID gets 404 ``NO_SUCH_ORDER``.
* Spec ``pattern``s are anchored (Klarna validates with Java's full-match semantics), integers
  must be JSON integers (``1.0`` and ``"1"`` are rejected), ``null`` is only allowed where
  the spec says ``nullable``. Unknown properties are allowed, as in the spec.
* ``order_lines: []`` counts as "no lines". Captures and refunds of 0 are 400 ``BAD_VALUE``
  (a stored Capture has ``captured_amount >= 1`` in the spec).
* Idempotency: the first response after authentication (2xx and 4xx alike) is stored per
  (username, key) for 24 h of the fake clock and replayed byte for byte for any later
  POST/PATCH with that key, whatever its path or body. Injected faults, random faults and
  rate-limit 429s happen before that and are never stored.
* Refunds are allocated to captures first-in first-out (Capture.refunded_amount).
* An expired PART_CAPTURED order keeps its status, but its remainder lapses to 0.
* Cancel on a cancelled or expired order is 403 CANCEL_NOT_ALLOWED.
* ``drop_after`` shuts the client's socket down (``environ["werkzeug.socket"]``) after the
  operation and its idempotency record are committed, so the client sees a connection error.
  Without a socket (e.g. a Flask/werkzeug test client) it sleeps ``seconds`` instead and then
  answers normally.
* ``extend-authorization-time`` sets ``expires_at`` to ``min(now + 28 days, created_at + 180 days)``;
  an order already at that 180-day limit gets 403 ``NOT_ALLOWED`` (D-EXT: no authorization past 180 days).
* ``PATCH /authorization`` (D-UPD): refused (403 ``NOT_ALLOWED``) on cancelled, expired and fully captured
  orders and below the captured amount; a decrease is accepted; an increase only when the order's
  ``initial_payment_method`` allows one (INVOICE, B2B_INVOICE, BASE_ACCOUNT, DIRECT_DEBIT, FIXED_AMOUNT)
  and the order's risk check passes (``refuse_increases`` makes it fail). The lines sent replace all
  lines; none sent deletes them.
* Merchant-portal actions (``portal_capture``, ``portal_refund``, ``portal_release``, ``portal_cancel``)
  follow the same rules as the API and are not recorded as requests; ``set_fraud_status`` moves a
  PENDING decision to ACCEPTED, REJECTED or STOPPED (and ACCEPTED to STOPPED).
* ``FakeClock`` is a controllable clock: pass it as ``now`` and ``advance`` it to expire authorizations.
* Only the operations below exist; any other path is 404 NOT_FOUND, a known path with the
  wrong method is 405 METHOD_NOT_ALLOWED.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from werkzeug.wrappers import Request, Response

from plugin.testing.loopback import LoopbackServer

__all__ = ["ROUTES", "SPEC_PATH", "FakeClock", "FakeKlarna", "FakeKlarnaServer", "RecordedRequest", "spec_validator"]

SPEC_PATH = Path(__file__).resolve().parent / "data" / "klarna-orders.openapi.json"
ORDERS = "/ordermanagement/v1/orders/{order_id}"
AUTH_WINDOW = timedelta(days=28)
MAX_AUTH_AGE = timedelta(days=180)
IDEMPOTENCY_WINDOW = timedelta(hours=24)
# Payment methods whose authorization Klarna may raise (D-UPD); others refuse any increase.
INCREASABLE_METHODS = frozenset(
    {"INVOICE", "INVOICE_BUSINESS", "B2B_INVOICE", "BASE_ACCOUNT", "DIRECT_DEBIT", "FIXED_AMOUNT"}
)
FRAUD_DECISIONS = {"PENDING": {"ACCEPTED", "REJECTED", "STOPPED"}, "ACCEPTED": {"STOPPED"}}
PLAYGROUND_RATE_LIMIT = 50  # shown in X-Ratelimit-* when no limit is enforced (§1.4)
FAULTS = {"500", "503", "429", "latency", "drop_after"}
_FAULT_ERRORS = {
    "500": (500, "INTERNAL_SERVER_ERROR", "An internal error occurred."),
    "503": (503, "TEMPORARILY_UNAVAILABLE", "The service is temporarily unavailable."),
    "429": (429, "TOO_MANY_REQUESTS", "Too many requests."),
}

# (method, spec path template, handler name); the request schema comes from the spec.
ROUTES: list[tuple[str, str, str]] = [
    ("GET", ORDERS, "_get_order"),
    ("GET", ORDERS + "/captures", "_get_captures"),
    ("POST", ORDERS + "/captures", "_capture"),
    ("GET", ORDERS + "/captures/{capture_id}", "_get_capture"),
    ("POST", ORDERS + "/captures/{capture_id}/shipping-info", "_capture_shipping_info"),
    ("POST", ORDERS + "/refunds", "_refund"),
    ("GET", ORDERS + "/refunds/{refund_id}", "_get_refund"),
    ("POST", ORDERS + "/cancel", "_cancel"),
    ("POST", ORDERS + "/release-remaining-authorization", "_release"),
    ("POST", ORDERS + "/extend-authorization-time", "_extend"),
    ("PATCH", ORDERS + "/authorization", "_update_authorization"),
    ("POST", ORDERS + "/shipping-info", "_order_shipping_info"),
]
_ROUTE_RES = [(m, re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", t) + "$"), t, h) for m, t, h in ROUTES]


# --------------------------------------------------------------------------- OpenAPI -> JSON Schema


@cache
def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return spec


def _resolve(ref: str) -> dict[str, Any]:
    node: Any = load_spec()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    resolved: dict[str, Any] = node
    return resolved


_DROPPED_KEYS = {
    "description",
    "example",
    "examples",
    "format",
    "xml",
    "externalDocs",
    "discriminator",
    "deprecated",
    "readOnly",
    "writeOnly",
    "nullable",
}


def _to_json_schema(node: Any, *, request: bool, closed: bool, seen: tuple[str, ...] = ()) -> Any:
    """Inline $refs and translate OpenAPI 3.0 schema objects into Draft 4 JSON Schema."""
    if isinstance(node, list):
        return [_to_json_schema(n, request=request, closed=closed, seen=seen) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        if node["$ref"] in seen:  # recursive schema: accept anything below this point
            return {}
        return _to_json_schema(_resolve(node["$ref"]), request=request, closed=closed, seen=(*seen, node["$ref"]))

    def conv(n: Any) -> Any:
        return _to_json_schema(n, request=request, closed=closed, seen=seen)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or key.startswith("x-"):
            continue
        if key == "properties":
            out[key] = {name: conv(sub) for name, sub in value.items()}
        elif (key in ("items", "additionalProperties", "not") and isinstance(value, dict)) or key in (
            "allOf",
            "anyOf",
            "oneOf",
        ):
            out[key] = conv(value)
        elif key == "pattern":
            out[key] = f"^(?:{value})$"
        else:
            out[key] = value
    # readOnly properties are not required in requests, writeOnly ones not in responses.
    hidden = "readOnly" if request else "writeOnly"
    props = node.get("properties", {})
    required = [r for r in node.get("required", []) if not _resolve_shallow(props.get(r, {})).get(hidden)]
    out.pop("required", None)
    if required:
        out["required"] = required
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if closed and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _resolve_shallow(node: dict[str, Any]) -> dict[str, Any]:
    return _resolve(node["$ref"]) if "$ref" in node else node


@cache
def spec_validator(component: str, *, request: bool = False, closed: bool = False) -> jsonschema.Draft4Validator:
    """Validator for ``#/components/schemas/<component>``.

    ``request`` applies request-side readOnly rules; ``closed`` forbids properties the spec
    does not declare (useful to check that the fake's own responses invent nothing).
    """
    schema = _to_json_schema({"$ref": f"#/components/schemas/{component}"}, request=request, closed=closed)
    return jsonschema.Draft4Validator(schema)


@cache
def _request_validator(method: str, template: str) -> jsonschema.Draft4Validator | None:
    body = load_spec()["paths"][template][method.lower()].get("requestBody")
    if body is None:
        return None
    schema = _resolve_shallow(body)["content"]["application/json"]["schema"]
    return jsonschema.Draft4Validator(_to_json_schema(schema, request=True, closed=False))


def _field(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --------------------------------------------------------------------------- the fake


_Answer = tuple[int, list[tuple[str, str]], Any]


class FakeClock:
    """A clock tests move by hand: ``FakeKlarna(now=clock)``, then ``clock.advance(days=29)``."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move forward by ``delta`` or by ``timedelta(**kwargs)``; returns the new time."""
        step = delta if delta is not None else timedelta(**kwargs)
        if step < timedelta(0):
            raise ValueError("the clock does not go backwards")
        with self._lock:
            self._now += step
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when


class KlarnaError(Exception):
    def __init__(self, status: int, code: str, *messages: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(code, *messages)
        self.status, self.code, self.messages, self.headers = status, code, list(messages), headers


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    idempotency_key: str | None
    body: bytes = b""


@dataclass
class _Fault:
    kind: str
    times: int
    path_contains: str
    method: str | None
    seconds: float


@dataclass
class _Stored:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    at: datetime


def _iso(dt: datetime) -> str:
    dt = dt.astimezone(UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond // 1000:03d}Z"


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


_LOCALES = {
    "US": "en-US",
    "GB": "en-GB",
    "DE": "de-DE",
    "SE": "sv-SE",
    "NO": "nb-NO",
    "FI": "fi-FI",
    "DK": "da-DK",
    "NL": "nl-NL",
    "AT": "de-AT",
    "FR": "fr-FR",
    "AU": "en-AU",
    "CA": "en-CA",
}


class FakeKlarna:
    """In-memory Klarna OM: orders are seeded with ``create_order`` and driven over HTTP."""

    def __init__(
        self,
        username: str = "PK_test",
        password: str = "secret",
        *,
        now: Callable[[], datetime] | None = None,
        seed: int = 0,
    ):
        self.username, self.password = username, password
        self.now = now or (lambda: datetime.now(UTC))
        self.requests: list[RecordedRequest] = []
        self.fault_rate = 0.0
        self.latency = 0.0
        self.rate_limit_per_second: int | None = None
        self.rng = random.Random(seed)
        self._lock = threading.RLock()
        self._orders: dict[str, dict[str, Any]] = {}
        self._faults: list[_Fault] = []
        self._idempotency: dict[
            tuple[str, str | None], _Stored
        ] = {}  # (username, Idempotency-Key); only requests that sent a key are stored
        self._counts: Counter[str] = Counter()
        self._window: deque[float] = deque()

    # ------------------------------------------------------------------ test-side API

    def create_order(
        self,
        *,
        order_amount: int,
        currency: str = "USD",
        order_lines: list[dict[str, Any]] | None = None,
        fraud_status: str = "ACCEPTED",
        expires_at: datetime | None = None,
        order_id: str | None = None,
        purchase_country: str = "US",
        payment_method: str = "INVOICE",
    ) -> str:
        if order_lines is None:
            order_lines = [
                {
                    "type": "physical",
                    "reference": "SKU-1",
                    "name": "Item",
                    "quantity": 1,
                    "unit_price": order_amount,
                    "tax_rate": 0,
                    "total_amount": order_amount,
                    "total_discount_amount": 0,
                    "total_tax_amount": 0,
                }
            ]
        for line in order_lines:
            spec_validator("order_line", request=True).validate(line)
        try:
            _check_lines({"order_lines": order_lines}, "order_amount", order_amount)
        except KlarnaError as exc:
            raise ValueError("; ".join(exc.messages)) from None
        created = self.now()
        order_id = order_id or str(uuid.uuid4())
        with self._lock:
            if order_id in self._orders:
                raise ValueError(f"order {order_id} exists")
            self._orders[order_id] = {
                "order_id": order_id,
                "status": "AUTHORIZED",
                "fraud_status": fraud_status,
                "order_amount": order_amount,
                "original_order_amount": order_amount,
                "captured_amount": 0,
                "refunded_amount": 0,
                "remaining_authorized_amount": order_amount,
                "purchase_currency": currency.upper(),
                "purchase_country": purchase_country.upper(),
                "locale": _LOCALES.get(purchase_country.upper(), f"en-{purchase_country.upper()}"),
                "klarna_reference": uuid.uuid4().hex[:7].upper(),
                "created_at": created,
                "expires_at": expires_at or created + AUTH_WINDOW,
                "order_lines": copy.deepcopy(order_lines),
                "initial_payment_method": {"type": payment_method, "description": payment_method.title()},
                "increase_ok": True,
                "captures": [],
                "refunds": [],
                "shipping_info": [],
            }
        return order_id

    def order(self, order_id: str) -> dict[str, Any]:
        with self._lock:
            return self._order_view(self._load(order_id, raw=True))

    def set_fraud_status(self, order_id: str, fraud_status: str) -> None:
        """Klarna's fraud decision: PENDING -> ACCEPTED, REJECTED or STOPPED; ACCEPTED -> STOPPED."""
        with self._lock:
            order = self._orders[order_id]
            if fraud_status not in FRAUD_DECISIONS.get(order["fraud_status"], set()):
                raise ValueError(f"fraud status cannot go from {order['fraud_status']} to {fraud_status}")
            order["fraud_status"] = fraud_status

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move the fake's clock (it must be a :class:`FakeClock`)."""
        if not isinstance(self.now, FakeClock):
            raise TypeError("FakeKlarna.advance needs FakeKlarna(now=FakeClock(...))")
        return self.now.advance(delta, **kwargs)

    def refuse_increases(self, order_id: str) -> None:
        """The risk check of any later authorization increase on this order fails."""
        with self._lock:
            self._orders[order_id]["increase_ok"] = False

    # -- the merchant portal: the same rules as the API, outside the app ---------------------

    def portal_capture(
        self, order_id: str, amount: int, order_lines: list[dict[str, Any]] | None = None, reference: str | None = None
    ) -> str:
        """Capture in Klarna's merchant portal; returns the capture id. Raises ``KlarnaError`` as the API would."""
        body: dict[str, Any] = {"captured_amount": amount}
        if order_lines:
            body["order_lines"] = order_lines
        if reference is not None:
            body["reference"] = reference
        _check_lines(body, "captured_amount", amount)
        with self._lock:
            return self._do_capture(self._load(order_id), body)

    def portal_refund(self, order_id: str, amount: int, order_lines: list[dict[str, Any]] | None = None) -> str:
        """Refund in the merchant portal; returns the refund id."""
        body: dict[str, Any] = {"refunded_amount": amount}
        if order_lines:
            body["order_lines"] = order_lines
        _check_lines(body, "refunded_amount", amount)
        with self._lock:
            return self._do_refund(self._load(order_id), body)

    def portal_release(self, order_id: str) -> None:
        with self._lock:
            self._release(self._load(order_id), None, {}, None)

    def portal_cancel(self, order_id: str) -> None:
        with self._lock:
            self._cancel(self._load(order_id), None, {}, None)

    def inject(
        self, fault: str, *, times: int = 1, path_contains: str = "", method: str | None = None, seconds: float = 0.0
    ) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        with self._lock:
            self._faults.append(_Fault(fault, times, path_contains, method and method.upper(), seconds))

    def counts(self) -> dict[str, int]:
        with self._lock:
            keys = (
                "captures",
                "refunds",
                "cancels",
                "releases",
                "extensions",
                "shipping_infos",
                "authorization_updates",
            )
            return {k: self._counts[k] for k in keys}

    # ------------------------------------------------------------------ WSGI

    def wsgi_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        raw = request.get_data(cache=True)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        key = request.headers.get("Klarna-Idempotency-Key")
        with self._lock:
            self.requests.append(RecordedRequest(request.method, request.path, dict(request.headers), parsed, key, raw))
            limited, rate_headers = self._rate_limit()
            fault = self._take_fault(request.method, request.path)
            if fault is None and self.fault_rate and self.rng.random() < self.fault_rate:
                fault = _Fault(self.rng.choice(["500", "503", "429"]), 1, "", None, 0.0)
        delay = self.latency + (fault.seconds if fault and fault.kind == "latency" else 0.0)
        if limited:
            status, headers, body = _error(KlarnaError(*_FAULT_ERRORS["429"]))
        else:
            if delay:
                time.sleep(delay)
            if fault and fault.kind in _FAULT_ERRORS:
                status, headers, body = _error(KlarnaError(*_FAULT_ERRORS[fault.kind]))
            else:
                with self._lock:
                    status, headers, body = self._handle(request, raw, key)
                if fault and fault.kind == "drop_after":
                    self._drop(environ, fault.seconds)
        response = Response(body, status=status, headers=[*headers, *rate_headers])
        if not body:
            response.headers.pop("Content-Type", None)
        return response(environ, start_response)

    def _rate_limit(self) -> tuple[bool, list[tuple[str, str]]]:
        tick = time.monotonic()
        self._window.append(tick)
        while self._window and self._window[0] <= tick - 1.0:
            self._window.popleft()
        limit = self.rate_limit_per_second or PLAYGROUND_RATE_LIMIT
        headers = [
            ("X-Ratelimit-Limit", f"{limit}, {limit};w=1"),
            ("X-Ratelimit-Remaining", str(max(0, limit - len(self._window)))),
            ("X-Ratelimit-Reset", "1"),
        ]
        return self.rate_limit_per_second is not None and len(self._window) > limit, headers

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.times > 0 and fault.path_contains in path and fault.method in (None, method):
                fault.times -= 1
                return fault
        return None

    @staticmethod
    def _drop(environ: dict[str, Any], seconds: float) -> None:
        sock = environ.get("werkzeug.socket")
        if sock is None:
            time.sleep(seconds)
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _handle(self, request: Request, raw: bytes, key: str | None) -> tuple[int, list[tuple[str, str]], bytes]:
        try:
            username = self._authenticate(request.headers.get("Authorization", ""))
            method, match, template, handler = self._route(request.method, request.path)
        except KlarnaError as exc:
            return _error(exc)
        idempotent = key is not None and method in ("POST", "PATCH")
        if idempotent:
            stored = self._idempotency.get((username, key))
            if stored and self.now() - stored.at < IDEMPOTENCY_WINDOW:
                return stored.status, list(stored.headers), stored.body
        try:
            body = self._parse_body(request, raw, method, template)
            order = self._load(match["order_id"])
            status, headers, payload = getattr(self, handler)(order, body, match, request)
            result = (status, headers, b"" if payload is None else json.dumps(payload).encode())
            if payload is not None:
                result[1].append(("Content-Type", "application/json"))
        except KlarnaError as exc:
            result = _error(exc)
        if idempotent:
            self._idempotency[(username, key)] = _Stored(*result, at=self.now())
        return result

    def _authenticate(self, header: str) -> str:
        scheme, _, token = header.partition(" ")
        try:
            user, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if scheme.lower() != "basic" or not sep or (user, password) != (self.username, self.password):
            raise KlarnaError(
                401,
                "UNAUTHORIZED",
                "Unauthorized. Check the API credentials.",
                headers=(("WWW-Authenticate", 'Basic realm="Klarna API"'),),
            )
        return user

    @staticmethod
    def _route(method: str, path: str) -> tuple[str, dict[str, str], str, str]:
        allowed = []
        for route_method, pattern, template, handler in _ROUTE_RES:
            match = pattern.match(path)
            if match and route_method == method:
                return method, match.groupdict(), template, handler
            if match:
                allowed.append(route_method)
        if allowed:
            raise KlarnaError(
                405,
                "METHOD_NOT_ALLOWED",
                f"Method {method} is not allowed on {path}.",
                headers=(("Allow", ", ".join(allowed)),),
            )
        raise KlarnaError(404, "NOT_FOUND", f"No such resource: {path}")

    @staticmethod
    def _parse_body(request: Request, raw: bytes, method: str, template: str) -> Any:
        validator = _request_validator(method, template) if method != "GET" else None
        if raw.strip() and request.mimetype != "application/json":
            raise KlarnaError(415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json.")
        if validator is None:
            return None  # endpoints without a body ignore whatever was sent
        if not raw.strip():
            raise KlarnaError(400, "BAD_VALUE", "Bad value: request body is required")
        try:
            body = json.loads(raw)
        except ValueError:
            raise KlarnaError(400, "BAD_VALUE", "Bad value: request body is not valid JSON") from None
        errors = sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))
        if errors:
            messages = []
            for err in errors:
                path = list(err.absolute_path)
                if err.validator == "required" and isinstance(err.instance, dict):
                    path += [r for r in err.validator_value if r not in err.instance][:1]
                messages.append(f"Bad value: {_field(path) or 'body'}: {err.message}")
            raise KlarnaError(400, "BAD_VALUE", *messages)
        if "captured_amount" in body:
            _check_lines(body, "captured_amount", body["captured_amount"])
        if "refunded_amount" in body:
            _check_lines(body, "refunded_amount", body["refunded_amount"])
        return body

    def _load(self, order_id: str, *, raw: bool = False) -> dict[str, Any]:
        order = self._orders.get(order_id)
        if order is None:
            if raw:
                raise KeyError(order_id)
            if _uuid_or_none(order_id) is None:
                raise KlarnaError(400, "INVALID_ORDER_ID", "Order ID must be a valid UUID.")
            raise KlarnaError(404, "NO_SUCH_ORDER", f"Order {order_id} not found.")
        if self.now() >= order["expires_at"] and order["status"] in ("AUTHORIZED", "PART_CAPTURED"):
            order["remaining_authorized_amount"] = 0
            if order["status"] == "AUTHORIZED":
                order["status"] = "EXPIRED"
        return order

    def _expired(self, order: dict[str, Any]) -> bool:
        expired: bool = order["status"] == "EXPIRED" or (
            order["status"] == "PART_CAPTURED" and self.now() >= order["expires_at"]
        )
        return expired

    # ------------------------------------------------------------------ views

    def _order_view(self, o: dict[str, Any]) -> dict[str, Any]:
        view = {
            k: o[k]
            for k in (
                "order_id",
                "status",
                "fraud_status",
                "order_amount",
                "original_order_amount",
                "captured_amount",
                "refunded_amount",
                "remaining_authorized_amount",
                "purchase_currency",
                "purchase_country",
                "locale",
                "klarna_reference",
            )
        }
        view |= {
            "created_at": _iso(o["created_at"]),
            "expires_at": _iso(o["expires_at"]),
            "order_lines": o["order_lines"],
            "initial_payment_method": o["initial_payment_method"],
            "captures": o["captures"],
            "refunds": o["refunds"],
            "shipping_info": o["shipping_info"],
        }
        return copy.deepcopy(view)

    @staticmethod
    def _find(items: list[dict[str, Any]], key: str, value: str, code: str, what: str) -> dict[str, Any]:
        for item in items:
            if item[key] == value:
                return item
        raise KlarnaError(404, code, f"{what} {value} not found.")

    # ------------------------------------------------------------------ operations

    def _get_order(self, o: dict[str, Any], body: Any, match: dict[str, str], request: Request | None) -> _Answer:
        return 200, [], self._order_view(o)

    def _get_captures(self, o: dict[str, Any], body: Any, match: dict[str, str], request: Request | None) -> _Answer:
        return 200, [], copy.deepcopy(o["captures"])

    def _get_capture(self, o: dict[str, Any], body: Any, match: dict[str, str], request: Request | None) -> _Answer:
        return (
            200,
            [],
            copy.deepcopy(self._find(o["captures"], "capture_id", match["capture_id"], "NO_SUCH_CAPTURE", "Capture")),
        )

    def _get_refund(self, o: dict[str, Any], body: Any, match: dict[str, str], request: Request | None) -> _Answer:
        return 200, [], copy.deepcopy(self._find(o["refunds"], "refund_id", match["refund_id"], "NOT_FOUND", "Refund"))

    def _capture(self, o: dict[str, Any], body: Any, match: dict[str, str], request: Request) -> _Answer:
        capture_id = self._do_capture(o, body)
        location = f"{request.host_url.rstrip('/')}{request.path}/{capture_id}"
        return 201, [("Capture-Id", capture_id), ("Location", location)], None

    def _do_capture(self, o: dict[str, Any], body: dict[str, Any]) -> str:
        amount = body["captured_amount"]

        def deny(msg: str) -> KlarnaError:
            return KlarnaError(403, "CAPTURE_NOT_ALLOWED", msg)

        if o["status"] == "CANCELLED":
            raise deny("Order is cancelled. Capture not possible.")
        if self._expired(o):
            raise deny(f"Order {o['order_id']} is expired. Capture not possible.")
        if o["fraud_status"] != "ACCEPTED":
            raise deny(f"Order has fraud status {o['fraud_status']}. Capture not possible.")
        if amount > o["remaining_authorized_amount"]:
            raise deny("Captured amount is higher than the remaining authorized amount. Capture not possible.")
        capture_id = str(uuid.uuid4())
        capture: dict[str, Any] = {
            "capture_id": capture_id,
            "klarna_reference": f"{o['klarna_reference']}-{len(o['captures']) + 1}",
            "captured_amount": amount,
            "captured_at": _iso(self.now()),
            **{k: body[k] for k in ("description", "reference") if k in body},
            "order_lines": copy.deepcopy(body.get("order_lines", [])),
            "refunded_amount": 0,
            "shipping_info": copy.deepcopy(body.get("shipping_info", [])),
        }
        o["captures"].append(capture)
        o["captured_amount"] += amount
        o["remaining_authorized_amount"] -= amount
        o["status"] = "CAPTURED" if o["remaining_authorized_amount"] == 0 else "PART_CAPTURED"
        self._counts["captures"] += 1
        return capture_id

    def _capture_shipping_info(
        self, o: dict[str, Any], body: Any, match: dict[str, str], request: Request | None
    ) -> _Answer:
        capture = self._find(o["captures"], "capture_id", match["capture_id"], "NO_SUCH_CAPTURE", "Capture")
        capture["shipping_info"].extend(copy.deepcopy(body["shipping_info"]))
        self._counts["shipping_infos"] += 1
        return 204, [], None

    def _order_shipping_info(
        self, o: dict[str, Any], body: Any, match: dict[str, str], request: Request | None
    ) -> _Answer:
        o["shipping_info"].extend(copy.deepcopy(body["shipping_info"]))
        self._counts["shipping_infos"] += 1
        return 204, [], None

    def _refund(self, o: dict[str, Any], body: Any, match: dict[str, str], request: Request) -> _Answer:
        refund_id = self._do_refund(o, body)
        location = f"{request.host_url.rstrip('/')}{request.path}/{refund_id}"
        return 201, [("Refund-Id", refund_id), ("Location", location)], None

    def _do_refund(self, o: dict[str, Any], body: dict[str, Any]) -> str:
        amount = body["refunded_amount"]
        if o["captured_amount"] == 0:
            raise KlarnaError(403, "REFUND_NOT_ALLOWED", "Order has no captures. Refund not possible.")
        if amount > o["captured_amount"] - o["refunded_amount"]:
            raise KlarnaError(
                403,
                "REFUND_NOT_ALLOWED",
                "Refunded amount is higher than the captured amount not yet refunded. Refund not possible.",
            )
        left = amount
        for capture in o["captures"]:  # FIFO allocation onto captures
            part = min(left, capture["captured_amount"] - capture["refunded_amount"])
            capture["refunded_amount"] += part
            left -= part
        refund_id = str(uuid.uuid4())
        refund: dict[str, Any] = {
            "refund_id": refund_id,
            "refunded_amount": amount,
            "refunded_at": _iso(self.now()),
            **{k: body[k] for k in ("description", "reference") if k in body},
            "order_lines": copy.deepcopy(body.get("order_lines", [])),
        }
        o["refunds"].append(refund)
        o["refunded_amount"] += amount
        self._counts["refunds"] += 1
        return refund_id

    def _cancel(self, o: dict[str, Any], body: Any, match: dict[str, str], request: Request | None) -> _Answer:
        def deny(msg: str) -> KlarnaError:
            return KlarnaError(403, "CANCEL_NOT_ALLOWED", msg)

        if o["status"] == "CANCELLED":
            raise deny("Order is already cancelled. Cancel not possible.")
        if o["captured_amount"] > 0:
            raise deny("Order has previous captures. Cancel not possible.")
        if self._expired(o):
            raise deny(f"Order {o['order_id']} is expired. Cancel not possible.")
        o["status"], o["remaining_authorized_amount"] = "CANCELLED", 0
        self._counts["cancels"] += 1
        return 204, [], None

    def _release(self, o: dict[str, Any], body: Any, match: dict[str, str], request: Request | None) -> _Answer:
        def deny(msg: str) -> KlarnaError:
            return KlarnaError(403, "NOT_ALLOWED", msg)

        if o["status"] == "CANCELLED":
            raise deny("Order is cancelled. Remaining authorization cannot be released.")
        if not o["captures"]:
            raise deny("Order has no captures. Remaining authorization cannot be released.")
        if o["status"] == "CAPTURED":
            raise deny("Order is fully captured. Remaining authorization cannot be released.")
        if self._expired(o):
            raise deny(f"Order {o['order_id']} is expired. Remaining authorization cannot be released.")
        o["status"], o["remaining_authorized_amount"] = "CAPTURED", 0
        self._counts["releases"] += 1
        return 204, [], None

    def _extend(self, o: dict[str, Any], body: Any, match: dict[str, str], request: Request | None) -> _Answer:
        if o["status"] == "CANCELLED" or self._expired(o):
            raise KlarnaError(
                403, "NOT_ALLOWED", "Order is expired or cancelled. Authorization time cannot be extended."
            )
        limit = o["created_at"] + MAX_AUTH_AGE
        if o["expires_at"] >= limit:
            raise KlarnaError(
                403,
                "NOT_ALLOWED",
                "Authorization time cannot be extended beyond 180 days after the purchase.",
            )
        o["expires_at"] = max(o["expires_at"], min(self.now() + AUTH_WINDOW, limit))
        self._counts["extensions"] += 1
        return 204, [], None

    def _update_authorization(
        self, o: dict[str, Any], body: Any, match: dict[str, str], request: Request | None
    ) -> _Answer:
        amount, captured = body["order_amount"], o["captured_amount"]

        def deny(msg: str) -> KlarnaError:
            return KlarnaError(403, "NOT_ALLOWED", msg)

        if o["status"] == "CANCELLED":
            raise deny("Order is cancelled. Authorization cannot be updated.")
        if self._expired(o):
            raise deny(f"Order {o['order_id']} is expired. Authorization cannot be updated.")
        if o["status"] == "CAPTURED":
            raise deny("Order is fully captured. Authorization cannot be updated.")
        if amount < captured:
            raise deny(f"Resulting authorization amount {amount} cannot be less than the captured amount {captured}.")
        if amount > o["order_amount"] and (
            o["initial_payment_method"]["type"] not in INCREASABLE_METHODS or not o["increase_ok"]
        ):
            raise deny("The order amount cannot be increased: the new amount was not approved.")
        _check_lines(body, "order_amount", amount)
        o["order_amount"] = amount
        o["remaining_authorized_amount"] = amount - captured
        o["order_lines"] = copy.deepcopy(body.get("order_lines") or [])
        if amount == captured and captured > 0:
            o["status"] = "CAPTURED"
        self._counts["authorization_updates"] += 1
        return 204, [], None


def _error(exc: KlarnaError) -> tuple[int, list[tuple[str, str]], bytes]:
    body = {"error_code": exc.code, "error_messages": exc.messages, "correlation_id": str(uuid.uuid4())}
    return exc.status, [*exc.headers, ("Content-Type", "application/json")], json.dumps(body).encode()


def _check_lines(body: dict[str, Any], amount_field: str, amount: int) -> None:
    """Rules the spec states in prose: line arithmetic, tax tolerance ±1, lines sum to the amount."""
    if amount <= 0 and amount_field != "order_amount":
        raise KlarnaError(400, "BAD_VALUE", f"Bad value: {amount_field} must be greater than 0")
    lines = body.get("order_lines") or []
    messages = []
    for i, line in enumerate(lines):
        expected = line["quantity"] * line["unit_price"] - line.get("total_discount_amount", 0)
        if line["total_amount"] != expected:
            messages.append(f"Bad value: order_lines[{i}].total_amount differs from the calculated value [{expected}]")
        rate, tax = line.get("tax_rate"), line.get("total_tax_amount")
        if rate is not None and tax is not None:
            total = line["total_amount"]
            calculated = total - Fraction(total * 10000, 10000 + rate)
            if abs(tax - calculated) > 1:
                messages.append(
                    f"Bad value: order_lines[{i}].total_tax_amount differs from the calculated "
                    f"value [{round(calculated)}] by more than [1]"
                )
    if lines and not messages and sum(line["total_amount"] for line in lines) != amount:
        messages.append(
            f"Bad value: order_lines: the sum of total_amount [{sum(ln['total_amount'] for ln in lines)}]"
            f" does not match {amount_field} [{amount}]"
        )
    if messages:
        raise KlarnaError(400, "BAD_VALUE", *messages)


# --------------------------------------------------------------------------- server


class FakeKlarnaServer:
    """Serves a FakeKlarna on 127.0.0.1:<free port> from a background thread."""

    def __init__(self, fake: FakeKlarna | None = None):
        self.fake = fake or FakeKlarna()
        self.base_url = ""
        self._server: LoopbackServer | None = None

    def start(self) -> FakeKlarnaServer:
        self._server = LoopbackServer(self.fake.wsgi_app, "fake-klarna")
        self.base_url = f"http://127.0.0.1:{self._server.port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> FakeKlarnaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
