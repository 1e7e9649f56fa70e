"""What the dashboard pages show and do: settings, operations log, exceptions, order widget, connection test.

No Flask here: ``dashboard_ext`` verifies the caller and turns these values into JSON. Every
function is scoped to one installation (``saleor_api_url``), so one Saleor never sees another's rows.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from plugin.db.models import ChannelSettings, Installation, Operation, ProcessException, utcnow
from plugin.domain.model import OPEN_STATUSES, ORDER_STATUSES, Action, KlarnaOrder, Options, ShopOrder
from plugin.domain.money import format_minor
from plugin.domain.states import ExceptionState, OperationState, transition
from plugin.domain.transactions import OrderBooks, PaymentSource, SourceKind
from plugin.klarna.client import BASE_URLS, base_url
from plugin.klarna.errors import KlarnaAuthError, KlarnaError, KlarnaNotFoundError, KlarnaTransportError
from plugin.klarna.orders import parse_order
from plugin.saleor.client import SaleorError
from plugin.services import booking
from plugin.services.exceptions import retry_exception
from plugin.services.merchant import (
    ANY_CHANNEL,
    ENVIRONMENTS,
    REGIONS,
    SENSIBLE,
    MerchantSettings,
    SettingsInvalid,
    SettingsStore,
)

logger = logging.getLogger(__name__)

OPERATION_STATES = tuple(state.value for state in OperationState)
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


class NoSuchException(LookupError):
    """No process exception with that id in this installation."""


class NotOpen(Exception):
    """The process exception was already retried or dismissed."""


@dataclass(frozen=True)
class Channel:
    slug: str
    name: str
    currency: str | None = None


class ShopReads(Protocol):
    """The part of ``SaleorClient`` these read models use."""

    def list_channels(self) -> list[dict[str, Any]]: ...
    def fulfillment_allow_unpaid(self) -> bool | None: ...
    def order_numbers(self, order_ids: list[str]) -> dict[str, str]: ...
    def app_permissions(self) -> list[str]: ...


ORDER_NUMBERS_PER_QUERY = 100  # Saleor's page size limit


def with_order_numbers(saleor: ShopReads, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row gets ``order_number`` (Saleor's #37), fetched in one query per 100 orders; None when unknown.

    The ledger keeps Saleor's ids only: numbers are Saleor's to show, and an order Saleor no longer
    shows (deleted, or Saleor not answering) keeps its id.
    """
    ids = list(dict.fromkeys(row["order_id"] for row in rows if row.get("order_id")))
    numbers: dict[str, str] = {}
    for start in range(0, len(ids), ORDER_NUMBERS_PER_QUERY):
        try:
            numbers.update(saleor.order_numbers(ids[start : start + ORDER_NUMBERS_PER_QUERY]))
        except SaleorError:
            break  # the page still shows, with ids
    return [{**row, "order_number": numbers.get(row.get("order_id") or "")} for row in rows]


def default_settings() -> dict[str, Any]:
    """The mapping and options a new installation starts with (the settings page's "Reset to defaults")."""
    public = MerchantSettings(channel=ANY_CHANNEL).public()
    return {"mapping": public["mapping"], "options": public["options"]}


def order_label(number: str | None) -> str:
    return f"order #{number}" if number else "the order"


# -- Saleor reads (app token) ------------------------------------------------------------------


def saleor_channels(saleor: ShopReads) -> list[Channel]:
    """The shop's channels. Raises ``SaleorError`` when Saleor cannot answer."""
    return [
        Channel(str(c["slug"]), str(c.get("name") or c["slug"]), c.get("currencyCode")) for c in saleor.list_channels()
    ]


def fulfillment_allow_unpaid(saleor: ShopReads) -> bool | None:
    """``shop.fulfillmentAllowUnpaid``, or None when Saleor does not say (capture on shipment needs True)."""
    try:
        return saleor.fulfillment_allow_unpaid()
    except Exception:  # noqa: BLE001 - a hint on the page, never a reason to fail it
        return None


def handles_payments(saleor: ShopReads) -> bool | None:
    """Whether the installation holds HANDLE_PAYMENTS (Saleor's books), None when Saleor does not say."""
    try:
        return "HANDLE_PAYMENTS" in saleor.app_permissions()
    except Exception:  # noqa: BLE001 - a hint on the page, never a reason to fail it
        return None


# -- settings -------------------------------------------------------------------------------


def settings_view(
    session: Session, store: SettingsStore, saleor_api_url: str, channels: list[Channel] | None
) -> dict[str, Any]:
    """Every channel (Saleor's, then stored ones Saleor no longer lists) with its effective settings.

    A channel without its own row shows what it inherits from ``*``; the password is never
    included, only ``password_set``.
    """
    stored = {m.channel: m for m in store.all(session, saleor_api_url)}
    rows = [Channel(ANY_CHANNEL, "All channels")]
    rows += [c for c in channels or [] if c.slug != ANY_CHANNEL]
    listed = {c.slug for c in rows}
    rows += [Channel(slug, slug) for slug in sorted(stored) if slug not in listed]
    in_saleor = {ANY_CHANNEL} | {c.slug for c in channels or []}
    fallback = stored.get(ANY_CHANNEL) or MerchantSettings(channel=ANY_CHANNEL)
    result = []
    for channel in rows:
        own = stored.get(channel.slug)
        effective = own or replace(fallback, channel=channel.slug)
        result.append({
            "slug": channel.slug, "name": channel.name, "currency": channel.currency,
            # None: Saleor did not answer, so whether it still has the channel is unknown.
            "in_saleor": None if channels is None else channel.slug in in_saleor,
            "own_settings": own is not None, "settings": effective.public(),
        })  # fmt: skip
    return {"channels": result, **settings_vocabulary()}


def settings_vocabulary() -> dict[str, Any]:
    """The choices the settings page offers (the page renders them too; the JSON is for scripts)."""
    return {
        "statuses": list(ORDER_STATUSES),
        "actions": [a.value for a in Action],
        "sensible": {status: sorted(a.value for a in allowed) for status, allowed in SENSIBLE.items()},
        "regions": list(REGIONS),
        "environments": list(ENVIRONMENTS),
    }


def settings_input(data: dict[str, Any], channel: str) -> dict[str, Any]:
    """The form's document as ``merchant.validate`` takes it: the URL names the channel, and an
    empty password means "keep the stored one"."""
    document = {k: v for k, v in data.items() if k not in ("channel", "password_set")}
    if document.get("password") in ("", None):
        document.pop("password", None)
    document["channel"] = channel
    return document


def drop_channel_settings(session: Session, saleor_api_url: str, channel: str) -> None:
    """Forget a channel's own settings: it inherits the ``*`` settings again."""
    session.execute(
        delete(ChannelSettings).where(
            ChannelSettings.saleor_api_url == saleor_api_url, ChannelSettings.channel_slug == channel
        )
    )


# -- operations log and exceptions ------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _redacted(value: Any) -> Any:
    """The stored exchange logs are redacted when written; redact header values again on the way out."""
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {
            k: ({h: "[REDACTED]" if h.lower() in _SECRET_HEADERS else v for h, v in val.items()}
                if k.endswith("headers") and isinstance(val, dict) else _redacted(val))
            for k, val in value.items()
        }  # fmt: skip
    return value


def _json(text: str | None, default: Any) -> Any:
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


def operation_json(op: Operation) -> dict[str, Any]:
    """One ledger row for the page, with its request body and redacted exchange log."""
    return {
        "id": op.id, "order_id": op.order_id, "klarna_order_id": op.klarna_order_id, "kind": op.kind,
        "reference": op.reference, "amount": op.amount, "currency": op.currency,
        "amount_display": format_minor(op.amount, op.currency), "state": op.state,
        "klarna_resource_id": op.klarna_resource_id, "error_code": op.error_code, "error_message": op.error_message,
        "correlation_id": op.correlation_id, "attempts": op.attempts,
        "created_at": _iso(op.created_at), "updated_at": _iso(op.updated_at),
        "request_body": _json(op.request_body, None), "log": _redacted(_json(op.log, [])),
    }  # fmt: skip


def operations(
    session: Session, saleor_api_url: str, *, state: str | None = None, order_id: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The latest ledger operations, newest first, optionally of one state or one order."""
    query = select(Operation).where(Operation.saleor_api_url == saleor_api_url)
    if state:
        query = query.where(Operation.state == state)
    if order_id:
        query = query.where(Operation.order_id == order_id)
    rows = session.scalars(query.order_by(Operation.id.desc()).limit(limit))
    return [operation_json(op) for op in rows]


def exception_json(exc: ProcessException) -> dict[str, Any]:
    return {
        "id": exc.id, "order_id": exc.order_id, "operation_id": exc.operation_id, "error_code": exc.error_code,
        "message": exc.message, "correlation_id": exc.correlation_id, "state": exc.state,
        "created_at": _iso(exc.created_at), "log": _redacted(_json(exc.log, [])),
    }  # fmt: skip


def open_exceptions(
    session: Session, saleor_api_url: str, *, order_id: str | None = None, limit: int = 100
) -> dict[str, Any]:
    """Open process exceptions, newest first, and how many are open in all."""
    where = [ProcessException.saleor_api_url == saleor_api_url, ProcessException.state == "open"]
    if order_id:
        where.append(ProcessException.order_id == order_id)
    count = session.scalar(select(func.count()).select_from(ProcessException).where(*where)) or 0
    rows = session.scalars(select(ProcessException).where(*where).order_by(ProcessException.id.desc()).limit(limit))
    return {"open_count": count, "exceptions": [exception_json(e) for e in rows]}


def open_exception(session: Session, saleor_api_url: str, exception_id: int) -> ProcessException:
    """The installation's open exception ``exception_id``; raises NoSuchException or NotOpen."""
    exc = session.get(ProcessException, exception_id)
    # Another installation's exception is "not found", so ids reveal nothing across Saleors.
    if exc is None or exc.saleor_api_url != saleor_api_url:
        raise NoSuchException(exception_id)
    if exc.state != "open":
        raise NotOpen(exc.state)
    return exc


def dismiss_exception(session: Session, saleor_api_url: str, exception_id: int) -> str:
    """Close the exception without acting: the admin handled it elsewhere."""
    exc = open_exception(session, saleor_api_url, exception_id)
    exc.state = transition(ExceptionState(exc.state), ExceptionState.DISMISSED).value
    exc.resolved_at = utcnow()
    return f"exception #{exception_id} dismissed"


def retry_open_exception(session: Session, saleor_api_url: str, exception_id: int) -> str:
    """Reopen the failed operation (a fresh idempotency key) and queue the order, as ``klarna-om ops retry``."""
    open_exception(session, saleor_api_url, exception_id)
    return retry_exception(session, exception_id)


# -- the order widget -------------------------------------------------------------------------


def klarna_json(order: KlarnaOrder) -> dict[str, Any]:
    """Klarna's view of the order: amounts in minor units and formatted, captures and refunds by id."""
    cur = order.currency

    def money(amount: int) -> dict[str, Any]:
        return {"amount": amount, "display": format_minor(amount, cur) if cur else str(amount)}

    return {
        "order_id": order.id, "status": order.status, "fraud_status": order.fraud_status, "currency": cur,
        "authorized": money(order.order_amount), "captured": money(order.captured),
        "refunded": money(order.refunded), "remaining": money(order.remaining),
        "expires_at": _iso(order.expires_at),
        "captures": [{"id": c.capture_id, "reference": c.reference, **money(c.amount)} for c in order.captures],
        "refunds": [{"id": r.refund_id, "reference": r.reference, **money(r.amount)} for r in order.refunds],
    }  # fmt: skip


EXPIRY_NEAR_DAYS = 7  # the widget warns this close to the authorization's expiry (or the channel's margin)


def order_badge(
    shop_status: str | None, klarna: KlarnaOrder | None, open_count: int, options: Options, now: datetime
) -> dict[str, Any]:
    """What the widget's badge warns about (issue 10 §7), and whether the expiry means anything still."""
    open_in_klarna = klarna is not None and klarna.status in OPEN_STATUSES and klarna.remaining > 0
    warnings: list[dict[str, str]] = []
    if klarna is not None and shop_status == "FULFILLED" and klarna.status not in ("CAPTURED", "CANCELLED"):
        warnings.append({"code": "NOT_CAPTURED", "text": "Fulfilled, but not fully captured in Klarna"})
    if open_count:
        warnings.append({"code": "EXCEPTION_OPEN", "text": f"{open_count} open exception(s) need a look"})
    near = timedelta(days=max(EXPIRY_NEAR_DAYS, options.extension_margin_days))
    if open_in_klarna and klarna is not None and klarna.expires_at is not None and klarna.expires_at - now <= near:
        warnings.append(
            {"code": "EXPIRY_NEAR", "text": f"Authorization expires {klarna.expires_at:%Y-%m-%d %H:%M} UTC"}
        )
    return {"warnings": warnings, "show_expiry": open_in_klarna}


@dataclass(frozen=True)
class OrderSources:
    """Where the widget's data comes from; each callable may raise, which the widget reports."""

    db_transaction: Callable[[], AbstractContextManager[Session]]
    store: SettingsStore
    saleor: Any  # SaleorClient for the installation (app token)
    klarna_for: Callable[[MerchantSettings], Any]


def order_view(sources: OrderSources, saleor_api_url: str, order_id: str) -> dict[str, Any]:
    """The order's Klarna state (ledger + a live GET at Klarna), its operations and open exceptions."""
    with sources.db_transaction() as session:
        ops = operations(session, saleor_api_url, order_id=order_id, limit=100)
        exceptions = open_exceptions(session, saleor_api_url, order_id=order_id)
        defaults = sources.store.get(session, saleor_api_url, ANY_CHANNEL)
        app_id = session.scalar(select(Installation.app_id).where(Installation.saleor_api_url == saleor_api_url))
    metadata_key = defaults.options.klarna_id_metadata_key if defaults else "klarna_order_id"
    view: dict[str, Any] = {
        "order_id": order_id, "order": None, "klarna_order_id": ops[0]["klarna_order_id"] if ops else None,
        "configured": False, "klarna": None, "klarna_error": None, "saleor_error": None,
        "operations": ops, **exceptions, "books": None, "fulfilled_uncaptured": False,
    }  # fmt: skip
    channel = ANY_CHANNEL
    shop_order, books = _read_order(view, sources, order_id, metadata_key)
    if shop_order is not None:
        channel = shop_order.channel_slug or ANY_CHANNEL
        view["order"] = {"number": shop_order.number, "status": shop_order.status, "channel": shop_order.channel_slug}
        view["klarna_order_id"] = shop_order.klarna_order_id or view["klarna_order_id"]
    with sources.db_transaction() as session:
        merchant = sources.store.get(session, saleor_api_url, channel)
    view["configured"] = bool(merchant and merchant.has_credentials)
    if shop_order is not None and books is not None:
        _books(view, booking.source_of(shop_order, books, app_id or "", merchant.options if merchant else Options()))
    klarna = None
    if merchant is not None and merchant.has_credentials and view["klarna_order_id"]:
        try:
            klarna = parse_order(sources.klarna_for(merchant).get_order(view["klarna_order_id"]).json)
            view["klarna"] = klarna_json(klarna)
        except KlarnaError as exc:
            view["klarna_error"] = str(exc)
    options = merchant.options if merchant is not None else Options()
    status = shop_order.status if shop_order is not None else None
    view["badge"] = order_badge(status, klarna, view["open_count"], options, utcnow())
    captured = view["klarna"]["captured"]["amount"] if view["klarna"] else None
    status = (view["order"] or {}).get("status")
    view["fulfilled_uncaptured"] = status in ("FULFILLED", "PARTIALLY_FULFILLED") and captured == 0
    return view


def _read_order(
    view: dict[str, Any], sources: OrderSources, order_id: str, key: str
) -> tuple[ShopOrder | None, OrderBooks | None]:
    """The order with its books in one read; the order alone where Saleor refuses the books (an older
    installation); neither, with ``saleor_error``, when Saleor cannot answer (the ledger still shows)."""
    try:
        shop_order, books = sources.saleor.get_order_and_books(order_id, key)
        return shop_order, books
    except Exception:  # noqa: BLE001 - the books refused, or Saleor down: the order alone tells which
        pass
    try:
        return sources.saleor.get_order(order_id, key), None
    except Exception as exc:  # noqa: BLE001 - show the ledger even when Saleor cannot answer
        view["saleor_error"] = str(exc)
        return None, None


def _books(view: dict[str, Any], source: PaymentSource) -> None:
    """Whose books the payment is in (issue 9 item 5); the Klarna id only from a source a shopper cannot write."""
    view["books"] = {
        "kind": source.kind.value, "kept_by": source.books_kept_by, "reason": source.reason,
        "booked_here": source.books,
    }  # fmt: skip
    if source.kind is SourceKind.FOREIGN:
        view["klarna_order_id"] = None  # another app's payment: this app does not act on it
    elif source.klarna_order_id:
        view["klarna_order_id"] = source.klarna_order_id


# -- test connection --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionCheck:
    """``result``: ok, wrong_credentials, wrong_region, unreachable or error; ``message`` for the admin."""

    result: str
    message: str
    region: str | None = None
    environment: str | None = None

    @property
    def ok(self) -> bool:
        return self.result == "ok"


ClientFactory = Callable[[str, str, str], AbstractContextManager[Any]]  # (base_url, username, password)


def connection_input(data: dict[str, Any], stored: MerchantSettings | None) -> tuple[str, str, str, str]:
    """(username, password, region, environment) to probe: what the form holds, the stored value where
    a field is empty. Raises ``SettingsInvalid`` with field errors."""

    def value(name: str, default: str | None) -> str | None:
        given = data.get(name)
        return given if isinstance(given, str) and given else default

    region = value("region", stored.region if stored else "EU") or ""
    environment = value("environment", stored.environment if stored else "playground") or ""
    username = value("username", stored.username if stored else None)
    password = value("password", stored.password if stored else None)
    errors = {}
    if region not in REGIONS:
        errors["region"] = f"one of {', '.join(REGIONS)}"
    if environment not in ENVIRONMENTS:
        errors["environment"] = f"one of {', '.join(ENVIRONMENTS)}"
    if not username:
        errors["username"] = "enter the Klarna API username"
    if not password:
        errors["password"] = "enter the Klarna API password (none is stored)"
    if errors:
        raise SettingsInvalid(errors)
    return username or "", password or "", region, environment


def _probe(client_for: ClientFactory, url: str, username: str, password: str) -> KlarnaError | None:
    """GET an order id nobody has: 404 NO_SUCH_ORDER means Klarna accepted the credentials."""
    with client_for(url, username, password) as client:
        try:
            client.get_order(str(uuid.uuid4()))
        except KlarnaNotFoundError as exc:
            return None if exc.error_code in (None, "NO_SUCH_ORDER") else exc
        except KlarnaError as exc:
            return exc
    return None  # a random order id that exists: unlikely, and the credentials did work


def _elsewhere(region: str, environment: str) -> Iterator[tuple[str, str]]:
    """The other Klarna base URLs, the same environment's first: the common mix-up is the region."""
    for env in (environment, *(e for e in ENVIRONMENTS if e != environment)):
        for other in REGIONS:
            if (other, env) != (region, environment) and (other, env) in BASE_URLS:
                yield other, env


def check_connection(
    username: str, password: str, region: str, environment: str, *, override: str | None, client_for: ClientFactory
) -> ConnectionCheck:
    """Try the credentials at Klarna; on 401 try them at the other regions to tell "wrong region"
    from "wrong credentials". With a base URL override (tests, local trials) only the override is tried."""
    url = base_url(region, environment, override)
    where = f"Klarna {region} {environment}" if not override else f"Klarna at {url}"
    error = _probe(client_for, url, username, password)
    if error is None:
        return ConnectionCheck("ok", f"Credentials work: {where} accepted them.", region, environment)
    if isinstance(error, KlarnaTransportError):
        return ConnectionCheck(
            "unreachable", f"Klarna unreachable: no answer from {url}. Try again later.", region, environment
        )
    if not isinstance(error, KlarnaAuthError):
        return ConnectionCheck("error", f"Klarna answered unexpectedly: {error}", region, environment)
    if not override:
        for other_region, other_env in _elsewhere(region, environment):
            if _probe(client_for, base_url(other_region, other_env), username, password) is None:
                return ConnectionCheck(
                    "wrong_region",
                    f"Wrong region: these credentials belong to region {other_region} ({other_env}), "
                    f"not {region} ({environment}).",
                    other_region, other_env,
                )  # fmt: skip
    return ConnectionCheck(
        "wrong_credentials",
        f"Wrong credentials: {where} refused this username and password (401).",
        region,
        environment,
    )
