"""A fake Saleor 3.23 that speaks the real protocol on the surface this app touches.

What it reproduces (saleor-app-protocol.md, DESIGN.md §7, the captured samples of 3.23.28):

* the install handshake: manifest GET, manifest checks, token POST (§1, §2);
* webhooks: the payload is made by *executing the app's own subscription query* against the
  Saleor schema copy and a small order model, serialized with ``json.dumps`` defaults, signed
  with a detached RS256 JWS, sent with Saleor's headers (§3, §4);
* ``/graphql/`` (validated against the schema, app-token auth, Saleor's error shapes) and
  ``/.well-known/jwks.json`` (one key, ``kid`` = RFC 7638 thumbprint);
* dashboard JWTs (§6.4) and APP_DELETED (§7).

Choices where the real Saleor was not observed (keep them in mind when a test fails):

* Payloads are generated when the event is emitted (the mutation's end), not later in a worker.
* Order status after a return follows Saleor's ``update_order_status``: RETURNED when the
  returned quantity equals the order's whole quantity, else PARTIALLY_RETURNED.
* ``requestedQueryCost`` is 1 for queries and 0 for mutations, not Saleor's cost map.
* Validation errors are ``{"errors": [{message, locations, extensions.exception.code
  "GraphQLError"}], "extensions": {...}}`` with status 400 and no ``data``; the messages are
  graphql-core 3's (``Cannot query field 'x' on type 'Y'.``), Saleor's legacy core uses ``"x"``.
* ``orderNoteAdd`` on an unknown order answers ``errors[{field "order", code GRAPHQL_ERROR}]``.
* A transaction from ``create_order`` is created by the app installed at that moment, else by
  another app ("Klarna payments", ``QXBwOjk5OQ==``, identifier ``com.example.klarna-payments``).
  Only its creator, or an app with the same identifier, may report events on it
  (``transactionEventReport``, needs HANDLE_PAYMENTS).
* Transactions (protocol §5.3-§5.4, samples 27-76): amounts are recomputed from the events the way
  the samples show (a request answered with a pspReference is pending until a SUCCESS or FAILURE
  with that pspReference); :meth:`FakeSaleor.request_action` stands for transactionRequestAction /
  transactionRequestRefundForGrantedRefund by staff and sends the sync webhook *at once*, whatever
  ``auto_deliver`` says (Saleor sends it from Celery right after the mutation), retrying a 5xx five
  times with an empty body without sleeping. Transaction actions are kept in the order answered,
  while Saleor's come back in set order.
* A staff JWT from :meth:`FakeSaleor.mint_token` also authenticates GraphQL calls, as a User
  with the token's ``permissions``.
* With ``auto_deliver`` the webhooks caused by the app's own mutation are POSTed to the app
  *before* the GraphQL response goes back (real Saleor sends them later, from Celery).
* Before :meth:`FakeSaleor.start` the fake calls itself ``saleor.test`` (``api_url``
  ``http://saleor.test/graphql/``); ``handle_graphql`` and ``wsgi_app`` work without a socket.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, cast

import graphql
import jwt
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from graphql.language import OperationType
from werkzeug.wrappers import Request, Response

from plugin.testing.loopback import LoopbackServer

__all__ = [
    "SCHEMA_PATH",
    "STAFF_USER",
    "Delivery",
    "FakeSaleor",
    "InstallResult",
    "get_schema",
    "requests_transport",
    "wsgi_transport",
]

SCHEMA_PATH = Path(__file__).resolve().parent / "data" / "saleor-schema.graphql"
SALEOR_VERSION = "3.23.28"
SCHEMA_VERSION = "3.23"
USER_AGENT = f"Saleor/{SCHEMA_VERSION}"
STAFF_USER = {"__typename": "User", "id": "VXNlcjoyMQ==", "email": "admin@example.com"}
OTHER_APP = {
    "__typename": "App", "id": "QXBwOjk5OQ==", "name": "Klarna payments", "identifier": "com.example.klarna-payments"
}  # fmt: skip
FAILED_DELIVERY = "Failed to delivery request."  # Saleor's message, sic
SYNC_RETRY_DELAYS = (10, 20, 40, 80, 160)  # seconds; recorded, not slept
ACTION_WEBHOOKS = {
    "CHARGE": ("TRANSACTION_CHARGE_REQUESTED", "TransactionChargeRequested"),
    "REFUND": ("TRANSACTION_REFUND_REQUESTED", "TransactionRefundRequested"),
    "CANCEL": ("TRANSACTION_CANCELATION_REQUESTED", "TransactionCancelationRequested"),
}
# 3.23.28 wraps a missing granted refund: its non-null amount resolves to null, so the payload gets
# "grantedRefund": null plus a top-level "errors" list (samples 49, 60).
_NO_GRANT: dict[str, Any] = {
    "__typename": "OrderGrantedRefund",
    "id": "",
    "amount": None,
    "lines": [],
    "status": "NONE",
}
# TransactionEventTypeEnum values matched as duplicates on (transaction, pspReference, type).
_NOT_DEDUPLICATED = ("INFO", "AUTHORIZATION_ACTION_REQUIRED", "CHARGE_ACTION_REQUIRED")
# transactionEventReport without an amount (transaction_event_report.py::clean_amount_value): only
# these may omit it; a *_FAILURE takes the amount of its kind's SUCCESS or REQUEST under the same
# pspReference (payment/utils.py::get_transaction_event_amount), INFO is 0; any other is REQUIRED.
_AMOUNT_FROM = {
    "CHARGE_FAILURE": ("CHARGE_SUCCESS", "CHARGE_REQUEST", "AUTHORIZATION_SUCCESS", "AUTHORIZATION_REQUEST"),
    "REFUND_FAILURE": ("REFUND_SUCCESS", "REFUND_REQUEST", "CHARGE_SUCCESS", "CHARGE_REQUEST"),
    "CANCEL_FAILURE": ("CANCEL_SUCCESS", "CANCEL_REQUEST", "AUTHORIZATION_SUCCESS", "AUTHORIZATION_REQUEST"),
    "AUTHORIZATION_FAILURE": ("AUTHORIZATION_SUCCESS", "AUTHORIZATION_REQUEST"),
    "REFUND_REVERSE": ("REFUND_SUCCESS",),
    "CHARGE_BACK": ("CHARGE_SUCCESS",),
    "INFO": (),
}
# requests' default headers, in the order they appear in the captured requests.
BASE_HEADERS = {
    "User-Agent": USER_AGENT,
    "Accept-Encoding": "gzip, deflate",
    "Accept": "*/*",
    "Connection": "keep-alive",
}
PLACEHOLDER_DOMAIN = "saleor.test"  # until start() binds a port
ACTIVE_FULFILLMENT = ("FULFILLED", "WAITING_FOR_APPROVAL")
PERMISSION_NAMES = {"MANAGE_ORDERS": "Manage orders.", "HANDLE_PAYMENTS": "Handle payments"}
CURRENCY_DIGITS = {"JPY": 0, "KRW": 0, "ISK": 0, "BHD": 3, "JOD": 3, "KWD": 3, "OMR": 3, "TND": 3}
TOKEN_ALPHABET = string.ascii_letters + string.digits


@cache
def get_schema() -> graphql.GraphQLSchema:
    return graphql.build_schema(SCHEMA_PATH.read_text(encoding="utf-8"))


def __getattr__(name: str) -> Any:  # module attribute SCHEMA, built on first use
    if name == "SCHEMA":
        return get_schema()
    raise AttributeError(name)


@dataclass
class Delivery:
    event: str  # upper case, e.g. "ORDER_UPDATED"
    target_url: str
    headers: dict[str, Any]
    body: bytes


@dataclass
class InstallResult:
    ok: bool
    status: int
    app_id: str
    token: str
    message: str | None = None


class PermissionDenied(Exception):
    """Saleor's exception class; its name becomes ``extensions.exception.code``."""

    def __init__(self, *permissions: str) -> None:
        super().__init__(f"To access this path, you need one of the following permissions: {', '.join(permissions)}")


class _WithoutOrderNoteAdd(graphql.ValidationRule):
    """Saleor before 3.15 has no Mutation.orderNoteAdd."""

    def enter_field(self, node: graphql.FieldNode, *_args: Any) -> None:
        parent = self.context.get_parent_type()
        if parent is not None and parent.name == "Mutation" and node.name.value == "orderNoteAdd":
            self.report_error(
                graphql.GraphQLError(
                    'Cannot query field "orderNoteAdd" on type "Mutation". Did you mean "orderAddNote"?', node
                )
            )


# ---------------------------------------------------------------------------------------------
# small helpers


def gid(type_name: str, pk: object) -> str:
    return base64.b64encode(f"{type_name}:{pk}".encode()).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _dec(value: object) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _money(amount: Decimal, currency: str) -> dict[str, Any]:
    digits = CURRENCY_DIGITS.get(currency, 2)
    return {
        "amount": float(amount),
        "currency": currency,
        "fractionDigits": digits,
        "fractionalAmount": int((amount * 10**digits).to_integral_value()),
    }


def _taxed(gross: Decimal, net: Decimal, currency: str) -> dict[str, Any]:
    return {
        "currency": currency,
        "gross": _money(gross, currency),
        "net": _money(net, currency),
        "tax": _money(gross - net, currency),
    }


def _meta_fields(public: dict[str, Any], private: dict[str, Any]) -> dict[str, Any]:
    """metadata/privateMetadata lists (PostgreSQL jsonb key order) and the metafield resolvers."""
    public, private = dict(public), dict(private)  # a snapshot

    def as_list(meta: dict[str, Any]) -> list[Any]:
        return [{"key": k, "value": meta[k]} for k in sorted(meta, key=lambda k: (len(k.encode()), k.encode()))]

    def pick(meta: dict[str, Any], keys: list[Any] | None) -> dict[str, Any]:
        return {k: v for k, v in meta.items() if keys is None or k in keys}

    return {
        "metadata": as_list(public),
        "privateMetadata": as_list(private),
        "metafield": lambda _info, key: public.get(key),
        "privateMetafield": lambda _info, key: private.get(key),
        "metafields": lambda _info, keys=None: pick(public, keys),
        "privateMetafields": lambda _info, keys=None: pick(private, keys),
    }


def _plain(value: Any) -> Any:
    """A copy without the resolver callables."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not callable(v)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _snake_upper(type_name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type_name).upper()


def _event_typename(event: str) -> str:
    return "".join(part.capitalize() for part in event.split("_"))


def _enum_names(type_name: str) -> set[str]:
    enum = cast(graphql.GraphQLEnumType, get_schema().get_type(type_name))
    return set(enum.values)


def _format_error(error: graphql.GraphQLError) -> dict[str, Any]:
    formatted = dict(error.formatted)
    original = error.original_error
    # graphql-core wraps a null in a non-null field around a TypeError; Saleor reports it as a GraphQLError (49-*).
    null_field = error.message.startswith("Cannot return null for non-nullable field")
    code = type(original).__name__ if original and not null_field else "GraphQLError"
    formatted["extensions"] = {"exception": {"code": code}}
    return formatted


def requests_transport(
    method: str, url: str, headers: dict[str, Any], body: bytes | None
) -> tuple[int, dict[str, Any], bytes]:
    """Real HTTP like Saleor: (2 s, 18 s) timeout, no redirects."""
    with requests.Session() as session:
        response = session.request(method, url, headers=headers, data=body, timeout=(2, 18), allow_redirects=False)
        return response.status_code, dict(response.headers), response.content


def wsgi_transport(
    wsgi_app: Callable[..., Any],
) -> Callable[[str, str, dict[str, Any], bytes | None], tuple[int, dict[str, Any], bytes]]:
    """An ``app_transport`` that calls a WSGI app (e.g. ``flask_app.wsgi_app``) in-process."""
    from urllib.parse import urlsplit

    from werkzeug.test import Client

    client = Client(wsgi_app)

    def transport(
        method: str, url: str, headers: dict[str, Any], body: bytes | None
    ) -> tuple[int, dict[str, Any], bytes]:
        parts = urlsplit(url)
        response = client.open(
            parts.path,
            method=method,
            query_string=parts.query,
            headers=headers,
            data=body,
            base_url=f"{parts.scheme}://{parts.netloc}",
        )
        return response.status_code, dict(response.headers), response.get_data()

    return transport


def check_subscription(query: str) -> tuple[graphql.DocumentNode, str, list[str]]:
    """Saleor's SubscriptionQuery checks. Returns (document, top field, events named in the query)."""
    try:
        document = graphql.parse(query)
    except graphql.GraphQLError as error:
        raise ValueError(error.message) from None
    errors = graphql.validate(get_schema(), document)
    if errors:
        raise ValueError(errors[0].message)
    subscriptions = [
        d
        for d in document.definitions
        if isinstance(d, graphql.OperationDefinitionNode) and d.operation == OperationType.SUBSCRIPTION
    ]
    if not subscriptions:
        raise ValueError("Subscription operation can't be found.")
    selections = subscriptions[0].selection_set.selections
    if len(selections) != 1 or not isinstance(selections[0], graphql.FieldNode):
        raise ValueError("Subscription must select only one top field.")
    top = selections[0].name.value
    if top != "event":
        return document, top, [_snake_upper(top[0].upper() + top[1:])]
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, graphql.FragmentDefinitionNode)}
    names: list[str] = []

    def walk(selection_set: graphql.SelectionSetNode | None) -> None:
        for sel in selection_set.selections if selection_set else ():
            if isinstance(sel, graphql.InlineFragmentNode):
                if sel.type_condition:
                    names.append(sel.type_condition.name.value)
                walk(sel.selection_set)
            elif isinstance(sel, graphql.FragmentSpreadNode) and sel.name.value in fragments:
                names.append(fragments[sel.name.value].type_condition.name.value)

    walk(selections[0].selection_set)
    known = _enum_names("WebhookEventTypeAsyncEnum") | _enum_names("WebhookEventTypeSyncEnum")
    events = [_snake_upper(n) for n in names if _snake_upper(n) in known]  # sync ones inferred too (gql-92)
    if not events:
        raise ValueError("Can't find a single event.")
    return document, top, events


# ---------------------------------------------------------------------------------------------


class FakeSaleor:
    has_order_note_add: bool = True  # False: behave like Saleor < 3.15 (orderAddNote only)
    fulfillment_allow_unpaid: bool = True  # shop.fulfillmentAllowUnpaid (DESIGN §7)
    channels: tuple[dict[str, Any], ...] = (
        {"slug": "default-channel", "name": "Default Channel", "currencyCode": "USD"},
    )

    def __init__(
        self,
        *,
        app_transport: Callable[[str, str, dict[str, Any], bytes | None], tuple[int, dict[str, Any], bytes]]
        | None = None,
    ):
        self.app_transport = app_transport or requests_transport
        self.auto_deliver = True
        self.outbox: list[Delivery] = []
        self.delivered: list[tuple[Delivery, int]] = []
        self.graphql_requests: list[dict[str, Any]] = []
        self.app_id: str | None = None
        self.app_token: str | None = None
        self.manifest: dict[str, Any] | None = None
        self.manifest_url: str | None = None
        self.app_permissions: list[str] = []
        self.app_metadata: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        self._active_token: str | None = None
        self._other_apps: dict[str, dict[str, str]] = {}  # token -> {"id", "name"}: other apps installed here
        self._installed = False
        self._webhooks: list[dict[str, Any]] = []  # manifest webhooks + parsed document, top field, events
        self._extension_ids: list[str] = []
        self._orders: dict[str, dict[str, Any]] = {}
        self._counters: dict[str, int] = {}
        self._user_token_key = "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(12))
        self._lock = threading.RLock()
        self._server: LoopbackServer | None = None
        self.port: int | None = None
        self.rotate_key()

    # -- server ------------------------------------------------------------------------------

    @property
    def domain(self) -> str:
        return f"127.0.0.1:{self.port}" if self.port else PLACEHOLDER_DOMAIN

    @property
    def api_url(self) -> str:
        return f"http://{self.domain}/graphql/"

    def start(self) -> FakeSaleor:
        self._server = LoopbackServer(self.wsgi_app, "fake-saleor")
        self.port = self._server.port
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> FakeSaleor:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def wsgi_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        if request.path == "/graphql/":
            if request.method != "POST":
                response = Response(status=405, headers={"Allow": "OPTIONS, POST"})
            else:
                status, body = self.handle_graphql(request.get_data(), dict(request.headers))
                response = Response(body, status=status, content_type="application/json")
        elif request.path == "/.well-known/jwks.json" and request.method == "GET":
            response = Response(json.dumps(self.jwks), content_type="application/json")
        else:
            response = Response("Not Found", status=404)
        return response(environ, start_response)

    # -- keys and signatures -----------------------------------------------------------------

    def rotate_key(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = key.public_key().public_numbers()
        n = b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"))
        e = b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big"))
        thumbprint_input = json.dumps({"e": e, "kty": "RSA", "n": n}, separators=(",", ":"), sort_keys=True)
        kid = b64url(hashlib.sha256(thumbprint_input.encode()).digest())
        with self._lock:
            self._private_key, self.kid = key, kid
            self.jwks = {
                "keys": [
                    {"kty": "RSA", "key_ops": ["verify"], "n": n, "e": e, "use": "sig", "kid": kid, "alg": "RS256"}
                ]
            }

    def sign(self, body: bytes) -> str:
        header = {"alg": "RS256", "b64": False, "crit": ["b64"], "kid": self.kid, "typ": "JWT"}
        header_b64 = b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())
        signature = self._private_key.sign(header_b64.encode() + b"." + body, padding.PKCS1v15(), hashes.SHA256())
        return f"{header_b64}..{b64url(signature)}"

    def mint_token(
        self,
        *,
        permissions: Iterable[str] = ("MANAGE_ORDERS",),
        user_permissions: Iterable[str] = ("MANAGE_ORDERS",),
        ttl: int = 300,
        app_id: str | None = None,
        app_extension: str | None = None,
        email: str = "admin@example.com",
        now: float | datetime | None = None,
    ) -> str:
        if isinstance(now, datetime):
            now = now.timestamp()
        iat = int(time.time() if now is None else now)
        claims = {
            "iat": iat,
            "owner": "saleor",
            "iss": self.api_url,
            "exp": iat + ttl,
            "token": self._user_token_key,
            "email": email,
            "type": "thirdparty",
            "user_id": STAFF_USER["id"],
            "is_staff": True,
            "app": app_id or self.app_id,
            "permissions": list(permissions),
            "user_permissions": list(user_permissions),
        }
        if app_extension:
            claims["app_extension"] = app_extension
        return jwt.encode(claims, self._private_key, algorithm="RS256", headers={"kid": self.kid})

    # -- install / uninstall -----------------------------------------------------------------

    def install(self, manifest_url: str, *, permissions: Iterable[str] = ("MANAGE_ORDERS",)) -> InstallResult:
        def failed(status: int, message: str | None, app_id: str = "", token: str = "") -> InstallResult:
            return InstallResult(False, status, app_id, token, message)

        if self._installed:
            return failed(0, f"App with the same identifier is already installed: {(self.manifest or {}).get('name')}")
        headers = {**BASE_HEADERS, "Saleor-Schema-Version": SCHEMA_VERSION}
        try:
            status, _, body = self.app_transport("GET", manifest_url, headers, None)
        except requests.RequestException as error:
            return failed(0, f"Unable to fetch manifest: {error}")
        if status >= 400:
            return failed(status, f"Unable to fetch manifest: HTTP {status}")
        try:
            manifest = json.loads(body)
        except ValueError:
            return failed(status, "Incorrect structure of manifest.")
        try:
            webhooks = self._check_manifest(manifest, list(permissions))
        except ValueError as error:
            return failed(status, str(error))

        with self._lock:
            app_id = gid("App", self._next("App"))
            self.app_id, self.manifest, self.manifest_url = app_id, manifest, manifest_url
            self.app_permissions = sorted(permissions)
            self.app_metadata = ({}, {})
            self._webhooks = webhooks
            self._extension_ids = [
                gid("AppExtension", self._next("AppExtension")) for _ in manifest.get("extensions") or ()
            ]
            token = "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(30)) if manifest.get("tokenTargetUrl") else ""
            self.app_token = token or None
            self._active_token = token or None  # the app may call Saleor while handling the POST
        if not token:
            self._installed = True
            return InstallResult(True, status, app_id, "", None)

        headers = {
            **BASE_HEADERS,
            "Content-Type": "application/json",
            "X-Saleor-Domain": self.domain,
            "Saleor-Domain": self.domain,
            "Saleor-Api-Url": self.api_url,
            "Saleor-Schema-Version": SCHEMA_VERSION,
        }
        try:
            status, _, body = self.app_transport(
                "POST", manifest["tokenTargetUrl"], headers, json.dumps({"auth_token": token}).encode()
            )
        except requests.RequestException as error:
            self._remove_app()
            return failed(0, str(error), app_id, token)
        if status >= 400:
            self._remove_app()
            try:
                message = json.loads(body)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = None
            return failed(status, message, app_id, token)
        self._installed = True
        return InstallResult(True, status, app_id, token, None)

    def install_other_app(self, name: str = "Another app") -> tuple[str, str]:
        """Another app installed in this Saleor (a theme, a CMS sync…): (its app id, its token).

        Its token is a valid app token of this Saleor, for that app only: ``{ app { id } }``
        answers that app's id, and nothing of the Klarna app is reachable with it.
        """
        with self._lock:
            app_id = gid("App", self._next("App"))
            token = "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(30))
            self._other_apps[token] = {"id": app_id, "name": name}
        return app_id, token

    def _remove_app(self) -> None:
        with self._lock:
            self._installed = False
            self._active_token = None
            self.app_id = self.app_token = self.manifest = None
            self._webhooks = []

    def _check_manifest(self, manifest: object, permissions: list[str]) -> list[dict[str, Any]]:
        """A rough copy of Saleor's clean_manifest_data; raises ValueError with Saleor's message."""
        if not isinstance(manifest, dict):
            raise ValueError("Incorrect structure of manifest.")
        missing = [f for f in ("id", "name", "version") if not isinstance(manifest.get(f), str)]
        if missing:
            raise ValueError(f"Field required: {', '.join(missing)}")
        known = _enum_names("PermissionEnum")
        app_permissions = manifest.get("permissions") or []
        if not set(app_permissions) <= known or not set(permissions) <= known:
            raise ValueError("Given permissions don't exist.")
        target = manifest.get("tokenTargetUrl")
        if target is not None and not re.match(r"^https?://[^/\s]+", str(target)):
            raise ValueError("Incorrect value for field: tokenTargetUrl.")
        if "author" in manifest and not str(manifest["author"] or "").strip():
            raise ValueError("Incorrect value for field: author")
        for ext in manifest.get("extensions") or ():
            if not all(ext.get(f) for f in ("label", "url", "mount")):
                raise ValueError("Incorrect structure of extension: label, url and mount are required.")
            if not set(ext.get("permissions") or ()) <= set(app_permissions):
                raise ValueError("Extension permission must be listed in App's permissions.")
            if str(ext["url"]).startswith("/") and not manifest.get("appUrl"):
                raise ValueError("Incorrect value for field: url.")
        webhooks = []
        async_events, sync_events = _enum_names("WebhookEventTypeAsyncEnum"), _enum_names("WebhookEventTypeSyncEnum")
        for hook in manifest.get("webhooks") or ():
            if not all(hook.get(f) for f in ("name", "targetUrl", "query")):
                raise ValueError("Incorrect structure of webhook: name, targetUrl and query are required.")
            if not set(hook.get("asyncEvents") or ()) <= async_events:
                raise ValueError("Invalid asynchronous event.")
            if not set(hook.get("syncEvents") or ()) <= sync_events:
                raise ValueError("Invalid synchronous event.")
            try:
                document, top, named = check_subscription(hook["query"])
            except ValueError as error:
                raise ValueError(f"Subscription query is not valid: {error}") from None
            events = list(hook.get("asyncEvents") or ()) + list(hook.get("syncEvents") or ()) or named
            webhooks.append({**hook, "document": document, "top": top, "events": events})
        return webhooks

    def uninstall(self) -> list[Delivery]:
        """appDelete: the token stops working at once, then APP_DELETED goes to the app."""
        with self._lock:
            if not self._installed:
                raise RuntimeError("no app installed")
            self._installed = False
            self._active_token = None
            app = self._app_view()
            event = {
                "__typename": "AppDeleted",
                "issuedAt": now_iso(),
                "version": SALEOR_VERSION,
                "issuingPrincipal": STAFF_USER,
                "recipient": app,
                "app": app,
            }
            deliveries = self._deliveries("APP_DELETED", event, self._webhooks)
        self._dispatch(deliveries)
        return deliveries

    # -- webhook delivery --------------------------------------------------------------------

    def deliver(self, delivery: Delivery) -> tuple[int, bytes]:
        try:
            status, _, body = self.app_transport("POST", delivery.target_url, dict(delivery.headers), delivery.body)
        except requests.RequestException:
            status, body = 0, b""  # connection error or timeout; Saleor would retry
        self.delivered.append((delivery, status))
        return status, body

    def _dispatch(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            if self.auto_deliver:
                self.deliver(delivery)
            else:
                self.outbox.append(delivery)

    def _deliveries(self, event: str, event_obj: dict[str, Any], webhooks: list[dict[str, Any]]) -> list[Delivery]:
        result = []
        for hook in webhooks:
            if event not in hook["events"] or not hook.get("isActive", True):
                continue
            executed = graphql.execute_sync(get_schema(), hook["document"], root_value={hook["top"]: event_obj})
            data = executed.data or {}
            payload = data.get("event") if hook["top"] == "event" else {"data": data}
            if executed.errors:
                payload = {**(payload or {}), "errors": [_format_error(e) for e in executed.errors]}
            body = json.dumps(payload).encode()
            signature = self.sign(body)
            headers = {
                **BASE_HEADERS,
                "Content-Type": "application/json",
                "X-Saleor-Event": event.lower(),
                "X-Saleor-Domain": self.domain,
                "X-Saleor-Signature": signature,
                "Saleor-Event": event.lower(),
                "Saleor-Domain": self.domain,
                "Saleor-Signature": signature,
                "Saleor-Api-Url": self.api_url,
            }
            result.append(Delivery(event, hook["targetUrl"], headers, body))
        return result

    def _emit(
        self, order: dict[str, Any], event: str, principal: dict[str, Any] | None, **fields: Any
    ) -> list[Delivery]:
        """Build the deliveries of one order event (call with the lock held)."""
        if not self._installed:
            return []
        event_obj = {
            "__typename": _event_typename(event),
            "issuedAt": now_iso(),
            "version": SALEOR_VERSION,
            "issuingPrincipal": principal,
            "recipient": self._app_view(),
            "order": self._order_view(order),
            **fields,
        }
        return self._deliveries(event, event_obj, self._webhooks)

    # -- orders (staff actions) --------------------------------------------------------------

    def _next(self, kind: str) -> int:
        self._counters[kind] = self._counters.get(kind, 0) + 1
        return self._counters[kind]

    def _get(self, order_id: str) -> dict[str, Any]:
        try:
            return self._orders[order_id]
        except KeyError:
            raise KeyError(f"unknown order {order_id}") from None

    def create_order(
        self,
        *,
        lines: list[dict[str, Any]],
        currency: str = "USD",
        shipping_gross: str = "0.00",
        shipping_net: str | None = None,
        klarna_order_id: str | None = None,
        klarna_via: str = "transaction",
        channel_slug: str = "default-channel",
        number: int | str | None = None,
        total_gross: str | None = None,
        user_email: str = "customer@example.com",
        status: str = "UNFULFILLED",
    ) -> str:
        """A completed order (draftOrderComplete): UNFULFILLED; ORDER_CREATED and ORDER_CONFIRMED.
        ``status="UNCONFIRMED"``: a channel that does not confirm orders automatically (lines editable)."""
        if klarna_via not in ("transaction", "metadata", "payment", "none"):
            raise ValueError(f"klarna_via {klarna_via!r}")
        with self._lock:
            order_lines = [
                {
                    "id": gid("OrderLine", uuid.uuid4()),
                    "product_name": line["name"],
                    "variant_name": line.get("variant_name", ""),
                    "sku": line.get("sku"),
                    "quantity": int(line["quantity"]),
                    "quantity_fulfilled": 0,
                    "unit_gross": _dec(line["unit_gross"]),
                    "unit_net": _dec(line.get("unit_net", line["unit_gross"])),
                    "tax_rate": _dec(line.get("tax_rate", "0.00")),
                }
                for line in lines
            ]
            ship_gross = _dec(shipping_gross)
            ship_net = _dec(shipping_net if shipping_net is not None else shipping_gross)
            gross = sum((ln["unit_gross"] * ln["quantity"] for ln in order_lines), Decimal(0)) + ship_gross
            net = sum((ln["unit_net"] * ln["quantity"] for ln in order_lines), Decimal(0)) + ship_net
            if total_gross is not None:  # an order-level discount: same tax, lower gross
                net, gross = _dec(total_gross) - (gross - net), _dec(total_gross)
            created = now_iso()
            order: dict[str, Any] = {
                "id": gid("Order", uuid.uuid4()),
                "number": str(number if number is not None else self._next("Order")),
                "status": status,
                "created": created,
                "updated_at": created,
                "user_email": user_email,
                "currency": currency,
                "channel_slug": channel_slug,
                "lines": order_lines,
                "shipping_gross": ship_gross,
                "shipping_net": ship_net,
                "total_gross": gross,
                "total_net": net,
                "fulfillments": [],
                "fulfillment_order": 0,
                "transactions": [],
                "payments": [],
                "granted_refunds": [],
                "metadata": {},
                "private_metadata": {},
                "events": [],
            }
            psp = klarna_order_id or str(uuid.uuid4())
            if klarna_via == "transaction":
                creator = self._principal_app() if self._installed else OTHER_APP
                token = str(uuid.uuid4())
                order["transactions"].append(
                    {
                        "id": gid("TransactionItem", token),
                        "token": token,
                        "name": "Klarna",
                        "psp_reference": psp,
                        "created_at": created,
                        "modified_at": created,
                        "actions": ["CHARGE", "CANCEL", "REFUND"],
                        "authorized": gross,
                        "charged": Decimal(0),
                        "refunded": Decimal(0),
                        "canceled": Decimal(0),
                        "created_by": creator,
                        "events": [  # oldest first; the view lists newest first
                            self._tx_event(
                                "AUTHORIZATION_SUCCESS", "", gross, "Manual adjustment of the transaction.", creator
                            ),
                            self._tx_event("INFO", psp, Decimal(0), "Klarna order authorized", creator),
                        ],
                    }
                )
            elif klarna_via == "metadata":
                order["private_metadata"]["klarna_order_id"] = psp
            elif klarna_via == "payment":
                order["payments"].append(
                    {
                        "id": gid("Payment", self._next("Payment")),
                        "gateway": "klarna",
                        "psp_reference": psp,
                        "charge_status": "NOT_CHARGED",
                        "total": gross,
                        "captured": Decimal(0),
                        "created": created,
                    }
                )
            self._orders[order["id"]] = order
            deliveries = self._emit(order, "ORDER_CREATED", STAFF_USER)
            if status != "UNCONFIRMED":  # confirmed later by orderConfirm
                deliveries += self._emit(order, "ORDER_CONFIRMED", STAFF_USER)
        self._dispatch(deliveries)
        return str(order["id"])

    def _tx_event(
        self, type_: str, psp: str, amount: Decimal, message: str, created_by: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "id": gid("TransactionEvent", self._next("TransactionEvent")),
            "type": type_,
            "psp_reference": psp,
            "amount": amount,
            "created_at": now_iso(),
            "message": message,
            "created_by": created_by,
        }

    def _new_fulfillment(
        self, order: dict[str, Any], status: str, tracking: str, lines: list[tuple[str, int]]
    ) -> dict[str, Any]:
        order["fulfillment_order"] += 1
        fulfillment = {
            "id": gid("Fulfillment", self._next("Fulfillment")),
            "fulfillment_order": order["fulfillment_order"],
            "status": status,
            "tracking_number": tracking,
            "created": now_iso(),
            "metadata": {},
            "private_metadata": {},
            "lines": [
                {"id": gid("FulfillmentLine", self._next("FulfillmentLine")), "line_id": line_id, "quantity": qty}
                for line_id, qty in lines
            ],
        }
        order["fulfillments"].append(fulfillment)
        return fulfillment

    @staticmethod
    def _update_status(order: dict[str, Any]) -> None:
        """saleor.order.utils.update_order_status."""
        total = sum(ln["quantity"] for ln in order["lines"])
        fulfilled = sum(ln["quantity_fulfilled"] for ln in order["lines"])
        returned = sum(
            fl["quantity"]
            for f in order["fulfillments"]
            if f["status"] in ("RETURNED", "REFUNDED_AND_RETURNED")
            for fl in f["lines"]
        )
        waiting = any(f["status"] == "WAITING_FOR_APPROVAL" for f in order["fulfillments"])
        if fulfilled <= 0:
            order["status"] = "UNFULFILLED"
        elif 0 < returned < total:
            order["status"] = "PARTIALLY_RETURNED"
        elif returned == total:
            order["status"] = "RETURNED"
        elif fulfilled < total or waiting:
            order["status"] = "PARTIALLY_FULFILLED"
        else:
            order["status"] = "FULFILLED"
        order["updated_at"] = now_iso()

    def _fulfillment(self, order: dict[str, Any], fulfillment_id: str) -> dict[str, Any]:
        fulfillment: dict[str, Any]
        for fulfillment in order["fulfillments"]:
            if fulfillment["id"] == fulfillment_id:
                return fulfillment
        raise KeyError(f"unknown fulfillment {fulfillment_id}")

    def fulfill(
        self, order_id: str, lines: dict[str, int], *, tracking_number: str = "", notify_customer: bool = True
    ) -> str:
        """orderFulfill by staff: one FULFILLED fulfillment with the given {order line id: quantity}."""
        with self._lock:
            order = self._get(order_id)
            if order["status"] in ("DRAFT", "UNCONFIRMED", "CANCELED", "EXPIRED"):
                raise ValueError(f"Cannot fulfill {order['status']} order.")
            if not self.fulfillment_allow_unpaid and not self._order_view(order)["isPaid"]:
                raise ValueError("Cannot fulfill unpaid order.")  # CANNOT_FULFILL_UNPAID_ORDER
            by_id = {ln["id"]: ln for ln in order["lines"]}
            for line_id, qty in lines.items():
                line = by_id[line_id]
                if not 0 < qty <= line["quantity"] - line["quantity_fulfilled"]:
                    raise ValueError(
                        f"Only {line['quantity'] - line['quantity_fulfilled']} items remaining to fulfill."
                    )
            for line_id, qty in lines.items():
                by_id[line_id]["quantity_fulfilled"] += qty
            fulfillment = self._new_fulfillment(order, "FULFILLED", tracking_number or "", list(lines.items()))
            self._update_status(order)
            fields = {"fulfillment": self._fulfillment_view(order, fulfillment), "notifyCustomer": notify_customer}
            deliveries = self._emit(order, "FULFILLMENT_CREATED", STAFF_USER, **fields)
            if order["status"] == "FULFILLED":
                deliveries += self._emit(order, "FULFILLMENT_APPROVED", STAFF_USER, **fields)
                deliveries += self._emit(order, "ORDER_UPDATED", STAFF_USER)
                deliveries += self._emit(order, "ORDER_FULFILLED", STAFF_USER)
            else:
                deliveries += self._emit(order, "ORDER_UPDATED", STAFF_USER)
        self._dispatch(deliveries)
        return str(fulfillment["id"])

    def return_products(self, order_id: str, fulfillment_id: str, lines: dict[str, int]) -> str:
        """orderFulfillmentReturnProducts (refund false). Keys: order line ids or fulfillment line ids."""
        with self._lock:
            order = self._get(order_id)
            source = self._fulfillment(order, fulfillment_id)
            if source["status"] not in ("FULFILLED", "REFUNDED"):
                raise ValueError(f"Cannot return products of a {source['status']} fulfillment.")
            moved = []
            for key, qty in lines.items():
                fline = next((fl for fl in source["lines"] if key in (fl["id"], fl["line_id"])), None)
                if fline is None or not 0 < qty <= fline["quantity"]:
                    raise ValueError(f"Cannot return {qty} of {key} from {fulfillment_id}.")
                fline["quantity"] -= qty
                moved.append((fline["line_id"], qty))
            source["lines"] = [fl for fl in source["lines"] if fl["quantity"] > 0]
            if not source["lines"]:
                order["fulfillments"].remove(source)
            returned = self._new_fulfillment(order, "RETURNED", "", moved)
            self._update_status(order)
            deliveries = self._emit(order, "ORDER_UPDATED", STAFF_USER)
        self._dispatch(deliveries)
        return str(returned["id"])

    def cancel_fulfillment(self, order_id: str, fulfillment_id: str) -> None:
        with self._lock:
            order = self._get(order_id)
            fulfillment = self._fulfillment(order, fulfillment_id)
            if fulfillment["status"] not in ACTIVE_FULFILLMENT:
                raise ValueError(f"Cannot cancel a {fulfillment['status']} fulfillment.")
            fulfillment["status"] = "CANCELED"
            by_id = {ln["id"]: ln for ln in order["lines"]}
            for fline in fulfillment["lines"]:
                by_id[fline["line_id"]]["quantity_fulfilled"] -= fline["quantity"]
            self._update_status(order)
            deliveries = self._emit(
                order, "FULFILLMENT_CANCELED", STAFF_USER, fulfillment=self._fulfillment_view(order, fulfillment)
            )
            deliveries += self._emit(order, "ORDER_UPDATED", STAFF_USER)
        self._dispatch(deliveries)

    def confirm_order(self, order_id: str) -> None:
        """orderConfirm: an UNCONFIRMED order becomes UNFULFILLED (its lines no longer editable)."""
        with self._lock:
            order = self._get(order_id)
            if order["status"] != "UNCONFIRMED":
                raise ValueError("Provided order id belongs to an order that is not unconfirmed.")
            order["status"] = "UNFULFILLED"
            order["updated_at"] = now_iso()
            deliveries = self._emit(order, "ORDER_CONFIRMED", STAFF_USER) + self._emit(
                order, "ORDER_UPDATED", STAFF_USER
            )
        self._dispatch(deliveries)

    def cancel_order(self, order_id: str) -> None:
        with self._lock:
            order = self._get(order_id)
            if order["status"] in ("CANCELED", "DRAFT", "EXPIRED") or any(
                f["status"] in ACTIVE_FULFILLMENT for f in order["fulfillments"]
            ):
                raise ValueError("This order can't be canceled.")
            order["status"] = "CANCELED"
            order["updated_at"] = now_iso()
            deliveries = self._emit(order, "ORDER_CANCELLED", STAFF_USER) + self._emit(
                order, "ORDER_UPDATED", STAFF_USER
            )
        self._dispatch(deliveries)

    def order(self, order_id: str) -> dict[str, Any]:
        """The order as GraphQL shows it (camelCase keys, float amounts), without resolver callables."""
        with self._lock:
            plain: dict[str, Any] = _plain(self._order_view(self._get(order_id)))
            return plain

    def notes(self, order_id: str) -> list[str]:
        with self._lock:
            return [e["message"] for e in self._get(order_id)["events"] if e["type"] == "NOTE_ADDED"]

    def private_metadata(self, order_id: str) -> dict[str, str]:
        with self._lock:
            return dict(self._get(order_id)["private_metadata"])

    # -- transactions (protocol §5.3-§5.4, samples 27-76) -----------------------------------

    def add_transaction(
        self,
        order_id: str,
        *,
        owner: dict[str, Any] | None = None,
        name: str = "Klarna",
        psp_reference: str = "",
        authorized: Decimal | str = "0",
        charged: Decimal | str = "0",
        actions: list[str] | tuple[str, ...] = ("CHARGE", "CANCEL", "REFUND"),
        external_url: str = "",
        info: dict[str, Any] | None = None,
        emit: bool = True,
    ) -> dict[str, Any]:
        """A transaction on the order (transactionCreate), owned by ``owner`` (default another app)."""
        with self._lock:
            order = self._get(order_id)
            owner = owner or OTHER_APP
            before = self._order_view(order)
            token, now = str(uuid.uuid4()), now_iso()
            tx: dict[str, Any] = {
                "id": gid("TransactionItem", token), "token": token, "name": name, "psp_reference": psp_reference,
                "created_at": now, "modified_at": now, "actions": list(actions), "external_url": external_url,
                "authorized": Decimal(0), "charged": Decimal(0), "refunded": Decimal(0), "canceled": Decimal(0),
                "created_by": owner, "events": [],
            }  # fmt: skip
            for kind, amount in (("AUTHORIZATION_SUCCESS", _dec(authorized)), ("CHARGE_SUCCESS", _dec(charged))):
                if amount > 0:
                    tx["events"].append(
                        self._tx_event(kind, "", amount, "Manual adjustment of the transaction.", owner)
                    )
            if info is not None:
                tx["events"].append(
                    self._tx_event("INFO", info.get("pspReference") or "", Decimal(0), info.get("message") or "", owner)
                )
            self._recompute(tx)
            order["transactions"].append(tx)
            order["updated_at"] = now
            deliveries = self._money_events(order, before, owner) if emit else []
        if emit:
            self._dispatch(deliveries)
        return tx

    def _find_transaction(self, tx_id: str | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
        return next(((o, t) for o in self._orders.values() for t in o["transactions"] if t["id"] == tx_id), None)

    def _may_report(self, caller: dict[str, Any] | None, tx: dict[str, Any]) -> bool:
        """check_if_requestor_has_access: the owning app, or an app with the same identifier."""
        if caller is None or caller["kind"] != "app":
            return False
        owner = tx["created_by"] or {}
        identifier = (self.manifest or {}).get("id")
        return owner.get("id") == self.app_id or (bool(identifier) and owner.get("identifier") == identifier)

    @staticmethod
    def _recompute(tx: dict[str, Any]) -> None:
        """saleor.payment.utils.recalculate_transaction_amounts, as the samples show it.

        A request answered with a pspReference is pending until a SUCCESS or FAILURE of its kind
        arrives with that pspReference (gql-51...54, gql-93...96).
        """
        total: dict[str, Decimal] = {}
        closed = {
            (e["type"].split("_")[0], e["psp_reference"])
            for e in tx["events"]
            if e["type"].endswith(("_SUCCESS", "_FAILURE"))
        }
        pending = {"CHARGE": Decimal(0), "REFUND": Decimal(0), "CANCEL": Decimal(0)}
        for e in tx["events"]:
            total[e["type"]] = total.get(e["type"], Decimal(0)) + e["amount"]
            kind = e["type"].split("_")[0]
            if e["type"].endswith("_REQUEST") and e["psp_reference"] and (kind, e["psp_reference"]) not in closed:
                pending[kind] = pending.get(kind, Decimal(0)) + e["amount"]

        def got(t: str) -> Decimal:
            return total.get(t, Decimal(0))

        authorized = got("AUTHORIZATION_SUCCESS") + got("AUTHORIZATION_ADJUSTMENT")
        charged, refunded, canceled = got("CHARGE_SUCCESS"), got("REFUND_SUCCESS"), got("CANCEL_SUCCESS")
        tx["authorized"] = max(authorized - charged - canceled - pending["CHARGE"] - pending["CANCEL"], Decimal(0))
        tx["charged"] = charged - refunded - pending["REFUND"]
        tx["refunded"], tx["canceled"] = refunded, canceled
        tx["charge_pending"], tx["refund_pending"], tx["cancel_pending"] = (
            pending["CHARGE"],
            pending["REFUND"],
            pending["CANCEL"],
        )

    def _money_events(
        self, order: dict[str, Any], before: dict[str, Any], principal: dict[str, Any] | None
    ) -> list[Delivery]:
        """order_transaction_updated / order_charged / order_refunded: which ORDER_* webhooks a change fires."""
        after = self._order_view(order)

        def amount(view: dict[str, Any], key: str) -> Decimal:
            return _dec(view[key]["amount"])

        deliveries: list[Delivery] = []
        if amount(after, "totalCharged") > amount(before, "totalCharged"):
            deliveries += self._emit(order, "ORDER_PAID", principal)
            if after["chargeStatus"] in ("FULL", "OVERCHARGED"):
                deliveries += self._emit(order, "ORDER_FULLY_PAID", principal)
        if amount(after, "totalRefunded") > amount(before, "totalRefunded"):
            deliveries += self._emit(order, "ORDER_REFUNDED", principal)
            if amount(after, "totalRefunded") >= order["total_gross"]:
                deliveries += self._emit(order, "ORDER_FULLY_REFUNDED", principal)
        changed = any(
            amount(after, k) != amount(before, k) for k in ("totalCharged", "totalAuthorized", "totalRefunded")
        )
        if changed:
            deliveries += self._emit(order, "ORDER_UPDATED", principal)
        return deliveries

    def request_action(
        self, tx_id: str, action: str, amount: str | Decimal | None = None, *, by: dict[str, Any] | None = None,
        granted_refund: dict[str, Any] | None = None, reason: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        """transactionRequestAction (or ...RefundForGrantedRefund) by staff: the REQUEST event, then the
        sync webhook to the owner, then its answer applied as Saleor does (protocol §5.4).

        ``reason`` is a plain refund's refundReason (it becomes the request event's message).
        Returns ``{"status", "body", "attempts", "event"}``: the app's last HTTP answer and the event
        Saleor stored for it (the *_SUCCESS/*_FAILURE, or the request event made pending).
        """
        event_name, typename = ACTION_WEBHOOKS[action]
        with self._lock:
            found = self._find_transaction(tx_id)
            if found is None:
                raise KeyError(f"unknown transaction {tx_id}")
            order, tx = found
            default = {"CHARGE": tx["authorized"], "REFUND": tx["charged"], "CANCEL": tx["authorized"]}[action]
            if granted_refund is not None:  # orderGrantRefundCreate, then transactionRequestRefundForGrantedRefund
                granted_refund = self._grant(order, tx, granted_refund)
            value = _dec(amount) if amount is not None else (granted_refund or {}).get("amount", default)
            requester = by or STAFF_USER
            request_event = self._tx_event(
                f"{action}_REQUEST", "", _dec(value), reason,
                None if granted_refund else requester,
            )  # fmt: skip
            tx["events"].append(request_event)
            owner_is_app = self._installed and (tx["created_by"] or {}).get("id") == self.app_id
            hooks = [h for h in self._webhooks if event_name in h["events"]][:1] if owner_is_app else []
            if not hooks:  # gql-32
                message = "No app or plugin is configured to handle payment action requests."
                tx["events"].append(self._tx_event(f"{action}_FAILURE", "", _dec(value), message, None))
                raise ValueError(f"MISSING_TRANSACTION_ACTION_REQUEST_WEBHOOK: {message}")
            event_obj = {
                "__typename": typename, "issuedAt": now_iso(), "version": SALEOR_VERSION, "issuingPrincipal": None,
                "recipient": self._app_view(), "action": {"actionType": action, "amount": float(value),
                "currency": order["currency"]}, "transaction": self._transaction_view(order, tx),
                "grantedRefund": self._granted_refund_view(order, granted_refund) if granted_refund else _NO_GRANT,
            }  # fmt: skip
            (delivery,) = self._deliveries(event_name, event_obj, hooks)
        status, body = self.deliver(delivery)
        attempts = 1
        for _delay in SYNC_RETRY_DELAYS:
            if status < 500:
                break
            empty = Delivery(event_name, delivery.target_url, {**delivery.headers}, b"")  # the payload is gone
            signature = self.sign(b"")
            empty.headers.update({"Saleor-Signature": signature, "X-Saleor-Signature": signature})
            status, body = self.deliver(empty)
            attempts += 1
        with self._lock:
            before = self._order_view(order)
            stored = self._apply_answer(tx, request_event, action, _dec(value), status, body)
            if granted_refund is not None and request_event["psp_reference"]:
                granted_refund["psp"] = request_event["psp_reference"]
            tx["modified_at"] = order["updated_at"] = now_iso()
            self._recompute(tx)
            deliveries = self._money_events(order, before, None)
        self._dispatch(deliveries)
        return {"status": status, "body": body, "attempts": attempts, "event": dict(stored)}

    def _apply_answer(
        self, tx: dict[str, Any], request: dict[str, Any], action: str, value: Decimal, status: int, body: bytes
    ) -> dict[str, Any]:
        """saleor.payment.utils: parse the body of any answer below 500 against the response schema."""
        app = self._principal_app()

        def failure(message: str, psp: str = "", by: dict[str, Any] | None = None) -> dict[str, Any]:
            event = self._tx_event(f"{action}_FAILURE", psp, value, message[:512], by)
            tx["events"].append(event)
            return event

        if status == 0 or status >= 500:
            return failure(FAILED_DELIVERY)
        try:
            answer = json.loads(body)
        except ValueError:
            return failure(FAILED_DELIVERY)
        if not isinstance(answer, dict):
            return failure(f"Incorrect value for field: root. Input: {answer}.")
        psp, result = answer.get("pspReference"), answer.get("result")
        if result is not None and result not in (f"{action}_SUCCESS", f"{action}_FAILURE"):
            return failure(f"Incorrect value ({result}) for field: result. Input: {answer}.")
        if psp is not None and not isinstance(psp, str):
            return failure(f"Incorrect value for field: pspReference. Input: {answer}.")
        if not psp and result != f"{action}_FAILURE":
            return failure(f"Missing value for field: pspReference. Input: {answer}.")
        if isinstance(answer.get("actions"), list):
            tx["actions"] = [a for a in answer["actions"] if a in ("CHARGE", "REFUND", "CANCEL")]
        if psp:
            request["psp_reference"] = psp  # copied onto the request event
        message = str(answer.get("message") or "")
        amount = _dec(answer["amount"]) if answer.get("amount") is not None else value
        if result is None:
            return request  # async: pending until reported under that pspReference
        if result.endswith("_FAILURE"):
            return failure(message, psp or "", app)
        event = self._tx_event(result, psp or "", amount, message[:512], app)
        tx["events"].append(event)
        return event

    def _grant(self, order: dict[str, Any], tx: dict[str, Any], refund: dict[str, Any]) -> dict[str, Any]:
        """Keys: amount, lines {order line id: quantity}, shipping, reason, line_reason."""
        if "pk" in refund:
            return refund
        granted = {
            "pk": self._next("OrderGrantedRefund"), "amount": _dec(refund["amount"]), "reason": refund.get("reason", ""),
            "shipping": bool(refund.get("shipping")), "line_reason": refund.get("line_reason", ""),
            "lines": [(line_id, qty, self._next("OrderGrantedRefundLine")) for line_id, qty in (refund.get("lines") or {}).items()],
            "transaction": tx, "psp": "",
        }  # fmt: skip
        order["granted_refunds"].append(granted)
        return granted

    def _granted_refund_view(self, order: dict[str, Any], refund: dict[str, Any]) -> dict[str, Any]:
        cur = order["currency"]
        lines = {ln["id"]: ln for ln in order["lines"]}
        tx = refund["transaction"]
        done = any(e["type"] == "REFUND_SUCCESS" and e["psp_reference"] == refund["psp"] for e in tx["events"])
        return {
            "__typename": "OrderGrantedRefund",
            "id": gid("OrderGrantedRefund", refund["pk"]),
            "amount": _money(refund["amount"], cur),
            "reason": refund["reason"],
            "shippingCostsIncluded": refund["shipping"],
            "status": "SUCCESS" if refund["psp"] and done else ("PENDING" if refund["psp"] else "NONE"),
            "lines": [
                {
                    "__typename": "OrderGrantedRefundLine",
                    "id": gid("OrderGrantedRefundLine", pk),
                    "quantity": qty,
                    "reason": refund["line_reason"],
                    "orderLine": self._line_view(order, lines[line_id]),
                }
                for line_id, qty, pk in refund["lines"]
            ],
            "transaction": self._transaction_view(order, tx),
        }

    # -- GraphQL shapes ----------------------------------------------------------------------

    def _principal_app(self) -> dict[str, Any]:
        manifest = self.manifest or {}
        return {"__typename": "App", "id": self.app_id, "name": manifest.get("name"), "identifier": manifest.get("id")}

    def _app_view(self) -> dict[str, Any]:
        manifest = self.manifest or {}

        def permission(code: str) -> dict[str, Any]:
            return {"code": code, "name": PERMISSION_NAMES.get(code, code.replace("_", " ").capitalize() + ".")}

        extensions = []
        for ext_id, ext in zip(self._extension_ids, manifest.get("extensions") or (), strict=False):
            ext_permissions = list(ext.get("permissions") or ())
            extensions.append(
                {
                    "__typename": "AppExtension",
                    "id": ext_id,
                    "identifier": ext.get("identifier"),
                    "label": ext["label"],
                    "url": ext["url"],
                    "mountName": str(ext["mount"]).upper(),
                    "targetName": str(ext.get("target", "POPUP")).upper(),
                    "settings": ext.get("options") or {},
                    "permissions": [permission(p) for p in ext_permissions],
                    "accessToken": lambda _info, _id=ext_id, _p=ext_permissions: self.mint_token(
                        permissions=_p, app_extension=_id
                    ),
                }
            )
        sync = _enum_names("WebhookEventTypeSyncEnum")
        webhooks = [
            {
                "__typename": "Webhook",
                "id": gid("Webhook", i),
                "name": hook["name"],
                "isActive": hook.get("isActive", True),
                "targetUrl": hook["targetUrl"],
                "subscriptionQuery": hook["query"],
                "syncEvents": [
                    {"eventType": e, "name": e.replace("_", " ").capitalize()} for e in hook["events"] if e in sync
                ],
                "asyncEvents": [
                    {"eventType": e, "name": e.replace("_", " ").capitalize()} for e in hook["events"] if e not in sync
                ],
            }
            for i, hook in enumerate(self._webhooks, 1)
        ]
        return {
            **self._principal_app(),
            "identifier": manifest.get("id"),
            "version": manifest.get("version"),
            "isActive": self._installed or self._active_token is not None,
            "type": "THIRDPARTY",
            "permissions": [permission(p) for p in self.app_permissions],
            "appUrl": manifest.get("appUrl"),
            "manifestUrl": self.manifest_url,
            "aboutApp": manifest.get("about"),
            "author": manifest.get("author"),
            "homepageUrl": manifest.get("homepageUrl"),
            "supportUrl": manifest.get("supportUrl"),
            "dataPrivacyUrl": manifest.get("dataPrivacyUrl"),
            "extensions": extensions,
            "webhooks": webhooks,
            "accessToken": lambda _info: self.mint_token(permissions=self.app_permissions),
            **_meta_fields(*self.app_metadata),
        }

    def _line_view(self, order: dict[str, Any], line: dict[str, Any]) -> dict[str, Any]:
        cur, qty = order["currency"], line["quantity"]
        unit = _taxed(line["unit_gross"], line["unit_net"], cur)
        total = _taxed(line["unit_gross"] * qty, line["unit_net"] * qty, cur)
        return {
            "__typename": "OrderLine",
            "id": line["id"],
            "productName": line["product_name"],
            "variantName": line["variant_name"],
            "translatedProductName": "",
            "translatedVariantName": "",
            "productSku": line["sku"],
            "productVariantId": None,
            "isShippingRequired": True,
            "isGift": False,
            "quantity": qty,
            "quantityFulfilled": line["quantity_fulfilled"],
            "quantityToFulfill": qty - line["quantity_fulfilled"],
            "taxRate": float(line["tax_rate"]),
            "unitPrice": unit,
            "undiscountedUnitPrice": unit,
            "totalPrice": total,
            "undiscountedTotalPrice": total,
            "unitDiscount": _money(Decimal(0), cur),
            "unitDiscountValue": 0.0,
            "unitDiscountType": None,
            "unitDiscountReason": None,
            "discounts": [],
            "variant": None,
            "allocations": [],
            **_meta_fields({}, {}),
        }

    def _fulfillment_view(self, order: dict[str, Any], fulfillment: dict[str, Any]) -> dict[str, Any]:
        lines = {ln["id"]: ln for ln in order["lines"]}
        return {
            "__typename": "Fulfillment",
            "id": fulfillment["id"],
            "fulfillmentOrder": fulfillment["fulfillment_order"],
            "status": fulfillment["status"],
            "trackingNumber": fulfillment["tracking_number"],
            "created": fulfillment["created"],
            "warehouse": None,
            "totalRefundedAmount": None,
            "shippingRefundedAmount": None,
            "lines": [
                {
                    "__typename": "FulfillmentLine",
                    "id": fl["id"],
                    "quantity": fl["quantity"],
                    "orderLine": self._line_view(order, lines[fl["line_id"]]),
                }
                for fl in fulfillment["lines"]
            ],
            **_meta_fields(fulfillment["metadata"], fulfillment["private_metadata"]),
        }

    def _transaction_view(self, order: dict[str, Any], tx: dict[str, Any]) -> dict[str, Any]:
        cur = order["currency"]
        return {
            "__typename": "TransactionItem",
            "id": tx["id"],
            "token": tx["id"] and tx.get("token", ""),
            "order": lambda _info: self._order_view(order),
            "checkout": None,
            "name": tx["name"],
            "pspReference": tx["psp_reference"],
            "createdAt": tx["created_at"],
            "modifiedAt": tx["modified_at"],
            "actions": list(tx["actions"]),
            "authorizedAmount": _money(tx["authorized"], cur),
            "chargedAmount": _money(tx["charged"], cur),
            "refundedAmount": _money(tx["refunded"], cur),
            "canceledAmount": _money(tx["canceled"], cur),
            "authorizePendingAmount": _money(Decimal(0), cur),
            "chargePendingAmount": _money(tx.get("charge_pending", Decimal(0)), cur),
            "refundPendingAmount": _money(tx.get("refund_pending", Decimal(0)), cur),
            "cancelPendingAmount": _money(tx.get("cancel_pending", Decimal(0)), cur),
            "externalUrl": tx.get("external_url", ""),
            "message": "",
            "createdBy": tx["created_by"],
            "events": [
                {
                    "__typename": "TransactionEvent",
                    "id": e["id"],
                    "type": e["type"],
                    "pspReference": e["psp_reference"],
                    "amount": _money(e["amount"], cur),
                    "createdAt": e["created_at"],
                    "message": e["message"],
                    "externalUrl": "",
                    "createdBy": e["created_by"],
                }
                for e in reversed(tx["events"])
            ],  # newest first
            **_meta_fields({}, {}),
        }

    def _order_view(self, order: dict[str, Any]) -> dict[str, Any]:
        cur = order["currency"]
        zero = Decimal(0)
        total = order["total_gross"]
        tx_authorized = sum((t["authorized"] for t in order["transactions"]), zero)
        pay_authorized = sum(
            (
                p["total"] - p["captured"]
                for p in order["payments"]
                if p["charge_status"] in ("NOT_CHARGED", "PARTIALLY_CHARGED")
            ),
            zero,
        )
        authorized = tx_authorized + pay_authorized
        charged = sum((t["charged"] for t in order["transactions"]), zero) + sum(
            (p["captured"] for p in order["payments"]), zero
        )
        refunded = sum((t["refunded"] for t in order["transactions"]), zero)
        granted = sum((g["amount"] for g in order["granted_refunds"]), zero)
        due = max(total - granted, zero)
        if charged == due:  # saleor.order.utils.update_order_charge_status / update_order_authorize_status
            charge_status = "FULL"
        elif charged <= 0:
            charge_status = "NONE"
        else:
            charge_status = "PARTIAL" if charged < due else "OVERCHARGED"
        covered = authorized + charged
        if covered == 0:
            authorize_status = "FULL" if total == 0 else "NONE"
        else:
            authorize_status = "FULL" if covered >= due else "PARTIAL"
        if order["payments"]:
            payment_status = order["payments"][-1]["charge_status"]
        else:
            payment_status = {"NONE": "NOT_CHARGED", "PARTIAL": "PARTIALLY_CHARGED"}.get(charge_status, "FULLY_CHARGED")
        sub_gross = sum((ln["unit_gross"] * ln["quantity"] for ln in order["lines"]), zero)
        sub_net = sum((ln["unit_net"] * ln["quantity"] for ln in order["lines"]), zero)
        channel_pk = 1 if order["channel_slug"] == "default-channel" else 2

        def m(amount: Decimal) -> dict[str, Any]:
            return _money(amount, cur)

        return {
            "__typename": "Order",
            "id": order["id"],
            "number": order["number"],
            "status": order["status"],
            "created": order["created"],
            "updatedAt": order["updated_at"],
            "userEmail": order["user_email"],
            "languageCodeEnum": "EN",
            "origin": "DRAFT",
            "original": None,
            "customerNote": "",
            "channel": {
                "__typename": "Channel",
                "id": gid("Channel", channel_pk),
                "slug": order["channel_slug"],
                "name": order["channel_slug"].replace("-", " ").title(),
                "currencyCode": cur,
                "isActive": True,
            },
            "total": _taxed(total, order["total_net"], cur),
            "undiscountedTotal": _taxed(total, order["total_net"], cur),
            "subtotal": _taxed(sub_gross, sub_net, cur),
            "shippingPrice": _taxed(order["shipping_gross"], order["shipping_net"], cur),
            "undiscountedShippingPrice": m(order["shipping_gross"]),
            "shippingMethodName": None,
            "totalCharged": m(charged),
            "totalCaptured": m(charged),
            "totalAuthorized": m(authorized),
            "totalRefunded": m(refunded),
            "totalBalance": m(charged - due),
            "totalGrantedRefund": m(granted),
            "totalRemainingGrant": m(max(granted - refunded, zero)),
            "totalCanceled": m(sum((t["canceled"] for t in order["transactions"]), zero)),
            "totalAuthorizePending": m(zero),
            "totalChargePending": m(sum((t.get("charge_pending", zero) for t in order["transactions"]), zero)),
            "totalRefundPending": m(sum((t.get("refund_pending", zero) for t in order["transactions"]), zero)),
            "totalCancelPending": m(sum((t.get("cancel_pending", zero) for t in order["transactions"]), zero)),
            "chargeStatus": charge_status,
            "authorizeStatus": authorize_status,
            "isPaid": charged >= total,
            "paymentStatus": payment_status,
            "isShippingRequired": True,
            "canFinalize": True,
            "lines": [self._line_view(order, ln) for ln in order["lines"]],
            "fulfillments": [self._fulfillment_view(order, f) for f in order["fulfillments"]],
            "transactions": [self._transaction_view(order, t) for t in order["transactions"]],
            "payments": [
                {
                    "__typename": "Payment",
                    "id": p["id"],
                    "gateway": p["gateway"],
                    "pspReference": p["psp_reference"],
                    "chargeStatus": p["charge_status"],
                    "total": m(p["total"]),
                    "capturedAmount": m(p["captured"]),
                    "isActive": True,
                    "created": p["created"],
                    "modified": p["created"],
                    "transactions": [],
                    "paymentMethodType": "",
                }
                for p in order["payments"]
            ],
            "grantedRefunds": [self._granted_refund_view(order, g) for g in order["granted_refunds"]],
            "events": [{"__typename": "OrderEvent", **e} for e in order["events"]],
            "discounts": [],
            "giftCards": [],
            "invoices": [],
            "errors": [],
            **_meta_fields(order["metadata"], order["private_metadata"]),
        }

    # -- GraphQL endpoint --------------------------------------------------------------------

    def _authenticate(self, headers: dict[str, Any]) -> dict[str, Any] | None:
        headers = {k.lower(): v for k, v in headers.items()}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = (
            token.strip() if scheme.lower() in ("bearer", "jwt") else headers.get("authorization-bearer", "").strip()
        )
        if not token:
            return None
        with self._lock:
            if self._active_token and len(token) == 30 and secrets.compare_digest(token, self._active_token):
                return {
                    "kind": "app",
                    "token": token,
                    "permissions": set(self.app_permissions),
                    "principal": {"__typename": "App", "id": self.app_id},
                }
            other = self._other_apps.get(token)
            if other is not None:
                return {
                    "kind": "other_app",
                    "token": token,
                    "permissions": set(),
                    "principal": {"__typename": "App", "id": other["id"]},
                    "app": other,
                }
            key = self._private_key.public_key()
        try:
            claims = jwt.decode(token, key, algorithms=["RS256"], options={"verify_aud": False})
        except jwt.PyJWTError:
            return None
        return {
            "kind": "user",
            "token": token,
            "permissions": set(claims.get("permissions") or ()),
            "principal": {"__typename": "User", "id": claims.get("user_id"), "email": claims.get("email")},
        }

    def handle_graphql(self, body: bytes, headers: dict[str, Any]) -> tuple[int, bytes]:
        """One POST /graphql/ (also usable without the HTTP server). Returns (status, JSON bytes)."""
        caller = self._authenticate(headers)
        result: dict[str, Any] | list[dict[str, Any]]
        try:
            data = json.loads(body or b"null")
        except ValueError:
            data = None
        if isinstance(data, list):
            answers = [self._graphql_one(item, caller) for item in data]
            status, result = max((s for s, _ in answers), default=200), [r for _, r in answers]
        elif isinstance(data, dict):
            status, result = self._graphql_one(data, caller)
        else:
            status, result = (
                400,
                {"errors": [{"message": "Unable to parse query.", "extensions": {"exception": {"code": "str"}}}]},
            )
        return status, json.dumps(result, separators=(",", ":")).encode()

    def _graphql_one(self, data: dict[str, Any], caller: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        query, variables, operation_name = data.get("query"), data.get("variables") or {}, data.get("operationName")
        self.graphql_requests.append(
            {
                "query": query,
                "variables": variables,
                "operation_name": operation_name,
                "token": caller and caller["token"],
                "caller": caller and caller["kind"],
            }
        )
        if not isinstance(query, str) or not query:
            return 400, {"errors": [_format_error(graphql.GraphQLError("Must provide a query string."))]}
        try:
            document = graphql.parse(query)
        except graphql.GraphQLError as error:
            return 400, {"errors": [_format_error(error)], "extensions": self._cost(0)}
        rules = list(graphql.specified_rules) + ([] if self.has_order_note_add else [_WithoutOrderNoteAdd])
        errors = graphql.validate(get_schema(), document, rules)
        if errors:
            return 400, {"errors": [_format_error(e) for e in errors], "extensions": self._cost(0)}
        is_mutation = any(
            isinstance(d, graphql.OperationDefinitionNode) and d.operation == OperationType.MUTATION
            for d in document.definitions
        )
        deliveries: list[Delivery] = []
        root = _Root(self, caller, deliveries)
        result = graphql.execute_sync(
            get_schema(), document, root_value=root, variable_values=variables, operation_name=operation_name
        )
        self._dispatch(deliveries)
        response: dict[str, Any] = {}
        if result.errors:
            response["errors"] = [_format_error(e) for e in result.errors]
        if result.data is None and result.errors:
            return 400, {**response, "extensions": self._cost(0)}
        response["data"] = result.data
        response["extensions"] = self._cost(0 if is_mutation else 1)
        return 200, response

    @staticmethod
    def _cost(cost: int) -> dict[str, Any]:
        return {"cost": {"requestedQueryCost": cost, "maximumAvailable": 50000}}


class _Root:
    """Query and Mutation root fields for one request; any other root field resolves to null."""

    def __init__(self, fake: FakeSaleor, caller: dict[str, Any] | None, deliveries: list[Delivery]):
        self.fake, self.caller, self.deliveries = fake, caller, deliveries

    def _require(self, *permissions: str) -> None:
        if self.caller is None or not self.caller["permissions"] & set(permissions):
            raise PermissionDenied(*permissions)

    @property
    def _known(self) -> dict[str, Any]:
        """The caller, where ``_require`` has already let it in."""
        if self.caller is None:
            raise PermissionDenied("AUTHENTICATED_STAFF_USER", "AUTHENTICATED_APP")
        return self.caller

    def _order(self, order_id: str) -> dict[str, Any] | None:
        return self.fake._orders.get(order_id)

    # Query

    def app(self, _info: Any, id: str | None = None) -> dict[str, Any] | None:  # noqa: A002 - GraphQL argument
        if self.caller is None:
            raise PermissionDenied("AUTHENTICATED_STAFF_USER", "AUTHENTICATED_APP")
        fake = self.fake
        with fake._lock:
            if self.caller["kind"] == "other_app":
                other = self.caller["app"]
                return (
                    {"__typename": "App", "id": other["id"], "name": other["name"]}
                    if id in (None, other["id"])
                    else None
                )
            if fake.app_id is None:
                return None
            if id is None:
                return fake._app_view() if self.caller["kind"] == "app" else None
            return fake._app_view() if id == fake.app_id and fake.app_id else None

    def channels(self, _info: Any) -> list[dict[str, Any]]:
        # Saleor lists channels to any authenticated app or staff user.
        if self.caller is None:
            raise PermissionDenied("AUTHENTICATED_STAFF_USER", "AUTHENTICATED_APP")
        return [dict(c) for c in self.fake.channels]

    def shop(self, _info: Any) -> dict[str, Any]:
        return {"fulfillmentAllowUnpaid": self.fake.fulfillment_allow_unpaid}

    def order(self, _info: Any, id: str | None = None, externalReference: str | None = None) -> dict[str, Any] | None:  # noqa: A002 - GraphQL argument
        self._require("MANAGE_ORDERS")
        with self.fake._lock:
            order = self._order(id) if id is not None else None
            return self.fake._order_view(order) if order else None

    def orders(
        self,
        _info: Any,
        first: int | None = None,
        filter: dict[str, Any] | None = None,  # noqa: A002 - GraphQL argument
        **_: Any,
    ) -> dict[str, Any]:
        """``orders(first:, filter: {ids:})``: what the dashboard needs to show order numbers (others ignored)."""
        self._require("MANAGE_ORDERS")
        if first is None or not 1 <= first <= 100:
            raise graphql.GraphQLError("You must provide a `first` value between 1 and 100.")
        ids = (filter or {}).get("ids")
        with self.fake._lock:
            found = [o for oid, o in self.fake._orders.items() if ids is None or oid in ids][:first]
            nodes = [self.fake._order_view(o) for o in found]
        return {"edges": [{"node": node, "cursor": node["id"]} for node in nodes], "totalCount": len(nodes),
                "pageInfo": {"hasNextPage": False, "hasPreviousPage": False}}  # fmt: skip

    # Mutation

    def _note(self, order_id: str, message: str, code_field: str) -> dict[str, Any]:
        self._require("MANAGE_ORDERS")
        fake = self.fake
        if not message.strip():
            return {
                "order": None,
                "event": None,
                code_field: [{"field": "message", "message": "Message can't be empty.", "code": "REQUIRED"}],
            }
        with fake._lock:
            order = self._order(order_id)
            if order is None:
                return {
                    "order": None,
                    "event": None,
                    code_field: [
                        {
                            "field": "order",
                            "message": f"Couldn't resolve to a node: {order_id}",
                            "code": "GRAPHQL_ERROR",
                        }
                    ],
                }
            by_app = self._known["kind"] == "app"
            event = {
                "id": gid("OrderEvent", fake._next("OrderEvent")),
                "date": now_iso(),
                "type": "NOTE_ADDED",
                "message": message,
                "user": None if by_app else {"__typename": "User", **self._known["principal"]},
                "app": fake._principal_app() if by_app else None,
            }
            order["events"].append(event)
            order["updated_at"] = now_iso()
            self.deliveries += fake._emit(order, "ORDER_UPDATED", self._principal())
            return {"order": fake._order_view(order), "event": {"__typename": "OrderEvent", **event}, code_field: []}

    def _principal(self) -> dict[str, Any]:
        principal: dict[str, Any] = self._known["principal"]
        return principal

    def orderNoteAdd(self, _info: Any, order: str, input: dict[str, Any]) -> dict[str, Any]:  # noqa: A002 - GraphQL argument
        return self._note(order, input["message"], "errors")

    def orderAddNote(self, _info: Any, order: str, input: dict[str, Any]) -> dict[str, Any]:  # noqa: A002 - GraphQL argument
        result = self._note(order, input["message"], "errors")
        return {**result, "orderErrors": result["errors"]}

    def _metadata(
        self, object_id: str, private: bool, update: dict[str, str] | None = None, delete: list[str] | None = None
    ) -> dict[str, Any]:
        fake = self.fake
        with fake._lock:
            order = self._order(object_id)
            if order is not None:
                self._require("MANAGE_ORDERS", "HANDLE_TAXES")
                meta, item = order["private_metadata" if private else "metadata"], order
            elif object_id == fake.app_id and self.caller is not None and self.caller["kind"] == "app":
                meta, item = fake.app_metadata[1 if private else 0], None
            else:
                self._require("MANAGE_ORDERS")
                return {
                    "item": None,
                    "errors": [
                        {"field": "id", "message": f"Couldn't resolve to a node: {object_id}", "code": "NOT_FOUND"}
                    ],
                }
            if update is not None and any(not key.strip() for key in update):
                return {
                    "item": None,
                    "errors": [{"field": "input", "message": "Metadata key cannot be empty.", "code": "REQUIRED"}],
                }
            meta.update(update or {})
            for key in delete or ():
                meta.pop(key, None)
            if item is None:
                return {"item": fake._app_view(), "errors": []}
            item["updated_at"] = now_iso()
            self.deliveries += fake._emit(item, "ORDER_METADATA_UPDATED", self._principal())
            return {"item": fake._order_view(item), "errors": []}

    def updatePrivateMetadata(self, _info: Any, id: str, input: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: A002 - GraphQL argument
        return self._metadata(id, True, update={i["key"]: i["value"] for i in input})

    def updateMetadata(self, _info: Any, id: str, input: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: A002 - GraphQL argument
        return self._metadata(id, False, update={i["key"]: i["value"] for i in input})

    def deletePrivateMetadata(self, _info: Any, id: str, keys: list[str]) -> dict[str, Any]:  # noqa: A002 - GraphQL argument
        return self._metadata(id, True, delete=keys)

    def deleteMetadata(self, _info: Any, id: str, keys: list[str]) -> dict[str, Any]:  # noqa: A002 - GraphQL argument
        return self._metadata(id, False, delete=keys)

    def transactionCreate(
        self,
        _info: Any,
        id: str,  # noqa: A002 - GraphQL argument
        transaction: dict[str, Any],
        transactionEvent: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """By an app with HANDLE_PAYMENTS; allowed beside another app's transaction (gql-86)."""
        self._require("HANDLE_PAYMENTS")
        fake = self.fake
        with fake._lock:
            order = self._order(id)
            if order is None:
                return {
                    "transaction": None,
                    "errors": [{"field": "id", "message": f"Couldn't resolve to a node: {id}", "code": "NOT_FOUND"}],
                }
            creator = fake._principal_app() if self._known["kind"] == "app" else self._principal()
            before = fake._order_view(order)
            tx = fake.add_transaction(
                id,
                owner=creator,
                name=transaction.get("name") or "",
                psp_reference=transaction.get("pspReference") or "",
                authorized=_dec((transaction.get("amountAuthorized") or {}).get("amount", 0)),
                charged=_dec((transaction.get("amountCharged") or {}).get("amount", 0)),
                actions=transaction.get("availableActions") or [],
                external_url=transaction.get("externalUrl") or "",
                info=transactionEvent,
                emit=False,
            )
            self.deliveries += fake._money_events(order, before, self._principal())
            return {"transaction": fake._transaction_view(order, tx), "errors": []}

    def transactionEventReport(
        self,
        _info: Any,
        type: str,  # noqa: A002 - the GraphQL argument is called type
        pspReference: str,
        id: str | None = None,  # noqa: A002 - GraphQL argument
        amount: Any = None,
        message: str | None = None,
        availableActions: list[str] | None = None,
        externalUrl: str | None = None,
        **_ignored: Any,
    ) -> dict[str, Any]:
        self._require("HANDLE_PAYMENTS")
        fake = self.fake
        with fake._lock:
            found = fake._find_transaction(id)
            if found is None:
                return {
                    "alreadyProcessed": None,
                    "transaction": None,
                    "transactionEvent": None,
                    "errors": [{"field": "id", "message": f"Couldn't resolve to a node: {id}", "code": "NOT_FOUND"}],
                }
            order, tx = found
            if not fake._may_report(self.caller, tx):
                raise PermissionDenied("OWNER", "HANDLE_PAYMENTS")  # gql-84
            if amount is None:
                kinds = _AMOUNT_FROM.get(type)
                source = next(
                    (e for k in kinds or () for e in tx["events"] if e["type"] == k and e["psp_reference"] == pspReference),
                    None,
                )  # fmt: skip
                if kinds is None or (source is None and type != "INFO"):
                    required = f"The `amount` field is required for {type} event."
                    return {
                        "alreadyProcessed": None,
                        "transaction": None,
                        "transactionEvent": None,
                        "errors": [{"field": "amount", "message": required, "code": "REQUIRED"}],
                    }
                amount = source["amount"] if source is not None else 0
            value = _dec(amount)
            same = None
            if type not in _NOT_DEDUPLICATED:
                same = next((e for e in tx["events"] if e["type"] == type and e["psp_reference"] == pspReference), None)
            if same is not None and same["amount"] == value:
                return {
                    "alreadyProcessed": True,
                    "transaction": fake._transaction_view(order, tx),
                    "transactionEvent": fake._transaction_view(order, {**tx, "events": [same]})["events"][0],
                    "errors": [],
                }
            if same is not None:  # gql-82: refused, and stored as a failure
                text = "The transaction with provided `pspReference` and `type` already exists with different amount."
                failure = type.split("_")[0] + "_FAILURE"
                tx["events"].append(fake._tx_event(failure, pspReference, value, text, fake._principal_app()))
                return {
                    "alreadyProcessed": False,
                    "transaction": None,
                    "transactionEvent": None,
                    "errors": [{"field": "pspReference", "message": text, "code": "INCORRECT_DETAILS"}],
                }
            before = fake._order_view(order)
            if availableActions is not None:
                tx["actions"] = list(availableActions)
            event = fake._tx_event(type, pspReference, value, (message or "")[:512], fake._principal_app())
            if externalUrl:
                event["external_url"] = externalUrl
            tx["events"].append(event)
            fake._recompute(tx)
            tx["modified_at"] = order["updated_at"] = now_iso()
            self.deliveries += fake._money_events(order, before, self._principal())
            tx_view = fake._transaction_view(order, tx)
            return {
                "alreadyProcessed": False,
                "transaction": tx_view,
                "transactionEvent": tx_view["events"][0],
                "errors": [],
            }
