"""The Saleor adapter: GraphQL through gql with the app token, the JWKS over plain HTTP.

Only this module knows the shape of Saleor's GraphQL answers; it returns domain values.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests
from gql import Client, GraphQLRequest
from gql.transport.exceptions import (
    TransportClosed,
    TransportConnectionFailed,
    TransportError,
    TransportQueryError,
)
from gql.transport.requests import RequestsHTTPTransport
from graphql import DocumentNode, ExecutionResult, parse
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from plugin import http
from plugin.domain.books import EventReport, TransactionDraft
from plugin.domain.model import Fulfillment, FulfillmentLine, KlarnaOrderId, OrderLine, SaleorOrderId, ShopOrder
from plugin.domain.money import tax_rate_basis_points, to_minor
from plugin.domain.transactions import OrderBooks, ReportOutcome, SaleorTransaction
from plugin.saleor import transactions as tx_wire

logger = logging.getLogger(__name__)

ORDER_FIELDS = """
fragment KlarnaOmOrderFields on Order {
  id number status
  channel { slug currencyCode }
  total { gross { amount currency } }
  shippingPrice { gross { amount } tax { amount } }
  lines { id productName variantName productSku quantity taxRate
          unitPrice { gross { amount } } totalPrice { gross { amount } } }
  fulfillments { id fulfillmentOrder status trackingNumber lines { quantity orderLine { id } } }
  transactions { name pspReference }
  payments { gateway pspReference }
  metadata { key value }
  privateMetadata { key value }
  events { type message }
}
"""

ORDER_QUERY = (
    """
query KlarnaOmOrder($id: ID!) {
  order(id: $id) { ...KlarnaOmOrderFields }
}
"""
    + ORDER_FIELDS
)

# The order and its books in one read (what ORDER_QUERY and BOOKS_QUERY select). ``transactions``
# needs MANAGE_ORDERS or HANDLE_PAYMENTS and is non-null: where Saleor refuses it, the error nulls
# the whole ``order`` (PermissionDenied), so the caller falls back to ORDER_QUERY.
ORDER_AND_BOOKS_QUERY = (
    """
query KlarnaOmOrderAndBooks($id: ID!, $key: String!) {
  order(id: $id) {
    ...KlarnaOmOrderFields
    checkoutId
    klarnaOrderId: privateMetafield(key: $key)
    transactions { ...KlarnaOmTransaction }
  }
}
"""
    + ORDER_FIELDS
    + tx_wire.TRANSACTION_FIELDS
)

NOTE_ADD = """
mutation KlarnaOmNote($order: ID!, $message: String!) {
  orderNoteAdd(order: $order, input: { message: $message }) { errors { field message code } }
}
"""

NOTE_ADD_LEGACY = """
mutation KlarnaOmNoteLegacy($order: ID!, $message: String!) {
  orderAddNote(order: $order, input: { message: $message }) { errors { field message code } }
}
"""

PRIVATE_METADATA = """
mutation KlarnaOmSummary($id: ID!, $input: [MetadataInput!]!) {
  updatePrivateMetadata(id: $id, input: $input) { errors { field message code } }
}
"""


@functools.lru_cache(maxsize=32)
def write_document(notes: int, metadata: bool, *, legacy: bool = False) -> str:
    """One mutation document: ``note0``… (orderNoteAdd, or orderAddNote before 3.15) then ``summary``
    (updatePrivateMetadata). Saleor runs a document's mutations one after the other, each with its own
    answer (its ``errors``, or null with a top-level error), so one refused does not undo the others."""
    field = "orderAddNote" if legacy else "orderNoteAdd"
    params = ["$order: ID!", *(f"$note{i}: String!" for i in range(notes))]
    body = [
        f"  note{i}: {field}(order: $order, input: {{ message: $note{i} }}) {{ errors {{ field message code }} }}"
        for i in range(notes)
    ]
    if metadata:
        params.append("$summary: [MetadataInput!]!")
        body.append("  summary: updatePrivateMetadata(id: $order, input: $summary) { errors { field message code } }")
    return f"mutation KlarnaOmWrite({', '.join(params)}) {{\n" + "\n".join(body) + "\n}\n"


APP_ID = "{ app { id } }"
APP_PERMISSIONS = "query KlarnaOmPermissions { app { permissions { code } } }"
ORDER_NUMBERS = """
query KlarnaOmOrderNumbers($ids: [ID!], $first: Int!) {
  orders(first: $first, filter: {ids: $ids}) { edges { node { id number } } }
}
"""
CHANNELS = "query KlarnaOmChannels { channels { slug name currencyCode } }"
SHOP = "query KlarnaOmShop { shop { fulfillmentAllowUnpaid } }"


@functools.lru_cache(maxsize=32)
def _parsed(document: str) -> DocumentNode:
    """Our documents are constants: parse each once, not on every call."""
    return parse(document)


class _Request(GraphQLRequest):
    """A constant document: parsed once, and sent as written (gql would print the AST back each time)."""

    def __init__(self, document: str, variables: dict[str, Any]) -> None:
        super().__init__(_parsed(document), variable_values=variables)
        self._text = document

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"query": self._text}
        if self.variable_values:
            payload["variables"] = self.variable_values
        return payload


class _LeanTransport(RequestsHTTPTransport):
    """gql's requests transport without the work it repeats on every call.

    ``Session.request`` would re-read the proxy variables of ``os.environ``, look up ~/.netrc, merge
    session settings and re-prepare the URL and headers on every call. Here the environment's proxy
    and CA settings are read once when the session opens, the headers are built once, and each call
    sends one prepared POST through the session's adapter (no cookies, hooks or redirects). What
    comes back is read by gql's own ``_prepare_result``, so errors surface as they did.
    """

    def __init__(self, url: str, token: str, timeout: int, bounds: http.Bounds) -> None:
        super().__init__(url=url, timeout=timeout, retries=0)
        self._bounds = bounds
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": requests.utils.default_user_agent(),
        }
        self._adapter: BaseAdapter | None = None
        self._send_settings: dict[str, Any] = {}

    def connect(self) -> None:
        super().connect()  # type: ignore[no-untyped-call]  # gql leaves connect() unannotated
        session = self.session
        assert session is not None
        # Bounded reads, the address filter, no redirects (and, filtered, no proxies from the
        # environment), mounted before the adapter is picked.
        http.harden(session, self._bounds)
        settings = session.merge_environment_settings(self.url, {}, None, None, None)
        self._send_settings = {key: settings[key] for key in ("proxies", "verify", "cert")}
        self._adapter = session.get_adapter(self.url)

    def execute(
        self,
        request: GraphQLRequest,
        timeout: int | None = None,
        extra_args: dict[str, Any] | None = None,
        upload_files: bool = False,
    ) -> ExecutionResult:
        if extra_args or upload_files:  # not used by this app: gql's own path
            return super().execute(request, timeout=timeout, extra_args=extra_args, upload_files=upload_files)
        if self._adapter is None:
            raise TransportClosed("Transport is not connected")
        body = json.dumps(request.payload, separators=(",", ":"), ensure_ascii=False).encode()
        prepared = requests.PreparedRequest()
        prepared.method, prepared.url, prepared.body = "POST", self.url, body
        prepared.headers = CaseInsensitiveDict({**self._headers, "Content-Length": str(len(body))})
        try:
            response = self._adapter.send(prepared, timeout=timeout or self.default_timeout, **self._send_settings)
        except Exception as exc:  # gql's contract: any failure to send is TransportConnectionFailed
            raise TransportConnectionFailed(str(exc)) from exc
        return self._prepare_result(response)

    def close(self) -> None:
        super().close()  # type: ignore[no-untyped-call]  # gql leaves close() unannotated
        self._adapter = None


class SaleorError(Exception):
    """Saleor could not be reached or refused the call."""


class TokenRefused(SaleorError):
    """Saleor answered, and does not know the token (revoked, or never issued)."""


# Saleor's JWKS is one or two RSA keys (~1 kB): anything past this is not a Saleor.
JWKS_MAX_BYTES = 64 * 1024
_DEFAULT_SESSION = http.bounded_session(http.Bounds())


def jwks_url(saleor_api_url: str) -> str:
    parts = urlsplit(saleor_api_url)
    return f"{parts.scheme}://{parts.netloc}/.well-known/jwks.json"


def fetch_jwks(saleor_api_url: str, *, timeout: float = 10.0, session: requests.Session | None = None) -> str:
    """GET the JWKS from the Saleor's origin; the raw text, as app-sdk stores it (at most 64 kB)."""
    session = session or _DEFAULT_SESSION
    try:
        response = session.get(jwks_url(saleor_api_url), timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        raise SaleorError(f"JWKS not reachable: {exc.__class__.__name__}") from None
    if response.status_code != 200:
        raise SaleorError(f"JWKS answered {response.status_code}")
    if len(response.content) > JWKS_MAX_BYTES:
        raise SaleorError(f"JWKS larger than {JWKS_MAX_BYTES} bytes")
    return response.text


def fetch_app_id(
    saleor_api_url: str, token: str, *, timeout: float = 10.0, session: requests.Session | None = None
) -> str:
    """Prove ``token`` by asking Saleor which app it belongs to (app-sdk's ``getAppId``).

    Raises :class:`TokenRefused` when Saleor answers but does not know the token, else
    :class:`SaleorError` when it cannot be asked.
    """
    session = session or _DEFAULT_SESSION
    try:
        response = session.post(
            saleor_api_url,
            json={"query": APP_ID},
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            allow_redirects=False,
        )
        if response.status_code in (401, 403):
            raise TokenRefused("Saleor does not know this token")
        app = response.json()["data"]["app"] if response.status_code == 200 else None
    except requests.RequestException as exc:
        refused = http.refusal(exc)
        if refused is not None:
            raise SaleorError(
                f"{refused}: the app calls only public addresses (KLARNA_APP_SALEOR_IP_FILTER); "
                "for a Saleor on this machine in development set KLARNA_APP_SALEOR_ALLOW_LOOPBACK=1"
            ) from None
        raise SaleorError(f"Saleor did not answer the app query: {exc.__class__.__name__}") from None
    except (ValueError, KeyError, TypeError):
        raise SaleorError("Saleor did not answer the app query") from None
    if response.status_code != 200:
        raise SaleorError(f"Saleor answered the app query with {response.status_code}")
    if not isinstance(app, dict) or not app.get("id"):
        raise TokenRefused("Saleor does not know this token")
    return str(app["id"])


class _NoPayloads(logging.Filter):
    """gql logs every request and answer body at DEBUG (``>>>`` / ``<<<``): order metadata, notes,
    addresses. No level of this app's logging may show personal data, so those records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith((">>>", "<<<", "operations", "file_map")))


_GQL_LOGGER = logging.getLogger("gql.transport.requests")


def _silence_payload_logs() -> None:
    if not any(isinstance(f, _NoPayloads) for f in _GQL_LOGGER.filters):
        _GQL_LOGGER.addFilter(_NoPayloads())


class SaleorClient:
    """GraphQL calls for one installation, with its app token."""

    def __init__(
        self, saleor_api_url: str, token: str, *, timeout: int = 20, bounds: http.Bounds | None = None
    ) -> None:
        self.saleor_api_url = saleor_api_url
        self._bounds = bounds or http.Bounds()
        _silence_payload_logs()
        transport = _LeanTransport(saleor_api_url, token, timeout, self._bounds)
        self._client = Client(transport=transport, fetch_schema_from_transport=False)
        self._session: Any = None
        self._lock = threading.Lock()
        self.has_note_add = True

    def _execute(self, document: str, variables: dict[str, Any], *, partial: bool = False) -> dict[str, Any]:
        """The answer's ``data``; with ``partial``, also where some fields failed (those are null)."""
        with self._lock:
            if self._session is None:
                self._session = self._client.connect_sync()  # type: ignore[no-untyped-call]  # gql leaves it unannotated
            try:
                request = _Request(document, variables)
                result: dict[str, Any] = self._session.execute(request)
                return result
            except TransportQueryError as exc:
                if partial and isinstance(exc.data, dict):
                    return exc.data
                raise SaleorError(f"GraphQL error: {exc.errors}") from None
            except (TransportError, requests.RequestException) as exc:
                self._reset()
                raise SaleorError(f"Saleor not reachable: {exc.__class__.__name__}") from None

    def _reset(self) -> None:
        try:
            self._client.close_sync()  # type: ignore[no-untyped-call]  # gql leaves it unannotated
        except Exception:  # noqa: BLE001 - closing a broken session is best effort
            logger.debug("closing the Saleor session failed")
        self._session = None

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._reset()

    def get_order(self, order_id: str, metadata_key: str = "klarna_order_id") -> ShopOrder | None:
        data = self._execute(ORDER_QUERY, {"id": order_id})
        raw = data.get("order")
        return parse_order(raw, metadata_key) if raw else None

    def get_order_and_books(
        self, order_id: str, metadata_key: str = "klarna_order_id"
    ) -> tuple[ShopOrder | None, OrderBooks | None]:
        """The order and its books (see :meth:`get_books`) in one query; (None, None) for an unknown order."""
        raw = self._execute(ORDER_AND_BOOKS_QUERY, {"id": order_id, "key": metadata_key}).get("order")
        if not raw:
            return None, None
        return parse_order(raw, metadata_key), tx_wire.parse_books(raw)

    def add_note(self, order_id: str, message: str) -> None:
        """orderNoteAdd; orderAddNote only on a Saleor that lacks orderNoteAdd (before 3.15)."""
        if self.has_note_add:
            try:
                data = self._execute(NOTE_ADD, {"order": order_id, "message": message})["orderNoteAdd"]
            except SaleorError as exc:
                if "orderNoteAdd" not in str(exc) or "Cannot query field" not in str(exc):
                    raise
                self.has_note_add = False
        if not self.has_note_add:
            data = self._execute(NOTE_ADD_LEGACY, {"order": order_id, "message": message})["orderAddNote"]
        if data is None or data.get("errors"):
            raise SaleorError(f"note refused: {data and data.get('errors')}")

    def write_order(
        self, order_id: str, notes: Sequence[str], private_metadata: Mapping[str, str] | None
    ) -> tuple[tuple[bool, ...], bool]:
        """The notes, then the private metadata, in one request (:func:`write_document`): which notes Saleor
        took, and whether it took the metadata. Raises :class:`SaleorError` when the request failed as a whole."""
        variables: dict[str, Any] = {"order": order_id, **{f"note{i}": m for i, m in enumerate(notes)}}
        if private_metadata is not None:
            variables["summary"] = [{"key": k, "value": v} for k, v in private_metadata.items()]
        shape = (len(notes), private_metadata is not None)
        data: dict[str, Any] | None = None
        if self.has_note_add or not notes:
            try:
                data = self._execute(write_document(*shape), variables, partial=True)
            except SaleorError as exc:
                if "orderNoteAdd" not in str(exc) or "Cannot query field" not in str(exc):
                    raise
                self.has_note_add = False
        if data is None:
            data = self._execute(write_document(*shape, legacy=True), variables, partial=True)

        def took(alias: str) -> bool:
            answer = data.get(alias)
            return isinstance(answer, dict) and not answer.get("errors")

        return tuple(took(f"note{i}") for i in range(len(notes))), private_metadata is not None and took("summary")

    def list_channels(self) -> list[dict[str, Any]]:
        """The shop's channels: ``[{"slug", "name", "currencyCode"}]``."""
        return [c for c in self._execute(CHANNELS, {}).get("channels") or [] if c and c.get("slug")]

    def fulfillment_allow_unpaid(self) -> bool | None:
        """``shop.fulfillmentAllowUnpaid`` (capture on shipment needs it), None when Saleor does not say."""
        shop = self._execute(SHOP, {}).get("shop")
        value = shop.get("fulfillmentAllowUnpaid") if isinstance(shop, dict) else None
        return value if isinstance(value, bool) else None

    def order_numbers(self, order_ids: list[str]) -> dict[str, str]:
        """``{order id: number}`` for up to 100 orders in one query; orders Saleor does not show are left out."""
        if not order_ids:
            return {}
        data = self._execute(ORDER_NUMBERS, {"ids": order_ids[:100], "first": min(len(order_ids), 100)})
        edges = (data.get("orders") or {}).get("edges") or []
        return {e["node"]["id"]: str(e["node"]["number"]) for e in edges if e and e.get("node")}

    def app_permissions(self) -> list[str]:
        """The permission codes Saleor granted this installation (HANDLE_PAYMENTS: Saleor's books)."""
        app = self._execute(APP_PERMISSIONS, {}).get("app")
        perms = app.get("permissions") if isinstance(app, dict) else None
        return [str(p.get("code")) for p in perms or [] if isinstance(p, dict)]

    # -- Saleor's books (plugin/saleor/transactions.py has the documents and parsing) --------------

    def get_books(self, order_id: str, metadata_key: str = "klarna_order_id") -> OrderBooks | None:
        """The order's transactions with their owning app, its private Klarna id, its legacy payments."""
        raw = self._execute(tx_wire.BOOKS_QUERY, {"id": order_id, "key": metadata_key}).get("order")
        return tx_wire.parse_books(raw) if raw else None

    def create_transaction(self, order_id: str, draft: TransactionDraft) -> SaleorTransaction:
        """transactionCreate with this app's token: the app owns the result (HANDLE_PAYMENTS)."""
        data = self._execute(tx_wire.TRANSACTION_CREATE, tx_wire.create_variables(order_id, draft))
        result = data.get("transactionCreate")
        if not isinstance(result, dict) or result.get("errors") or not result.get("transaction"):
            raise SaleorError(f"transactionCreate refused: {result and result.get('errors')}")
        return tx_wire.parse_transaction(result["transaction"], draft.currency)

    def report_event(self, transaction_id: str, report: EventReport, currency: str) -> ReportOutcome:
        """transactionEventReport. A replay comes back ``already_processed``; a conflict or a
        transaction this app does not own comes back with an error code, not an exception."""
        try:
            data = self._execute(tx_wire.EVENT_REPORT, tx_wire.report_variables(transaction_id, report, currency))
        except SaleorError as exc:
            if "PermissionDenied" in str(exc) or "permissions" in str(exc):
                return ReportOutcome(False, error_code="PERMISSION_DENIED", message="this app does not own it")
            raise
        return tx_wire.parse_report(data.get("transactionEventReport"))

    def set_private_metadata(self, object_id: str, values: dict[str, str]) -> None:
        items = [{"key": k, "value": v} for k, v in values.items()]
        data = self._execute(PRIVATE_METADATA, {"id": object_id, "input": items})["updatePrivateMetadata"]
        if data is None or data.get("errors"):
            raise SaleorError(f"metadata refused: {data and data.get('errors')}")


def _money(node: dict[str, Any] | None, currency: str) -> int:
    if not node or node.get("amount") is None:
        return 0
    return to_minor(node["amount"], currency)


def find_klarna_order_id(raw: dict[str, Any], metadata_key: str) -> KlarnaOrderId | None:
    """DESIGN §5: a Klarna transaction's (or legacy payment's) pspReference, else the private-metadata key."""
    for tx in raw.get("transactions") or []:
        if "klarna" in (tx.get("name") or "").lower() and tx.get("pspReference"):
            return KlarnaOrderId(tx["pspReference"])
    for payment in raw.get("payments") or []:
        if "klarna" in (payment.get("gateway") or "").lower() and payment.get("pspReference"):
            return KlarnaOrderId(payment["pspReference"])
    # Private metadata only: a shopper writes the public metadata through checkout metadata (issue 11).
    for item in raw.get("privateMetadata") or []:
        if item.get("key") == metadata_key and item.get("value"):
            return KlarnaOrderId(item["value"])
    return None


def parse_order(raw: dict[str, Any], metadata_key: str = "klarna_order_id") -> ShopOrder:
    """Saleor's ``order`` GraphQL object -> :class:`ShopOrder` (amounts in minor units)."""
    currency = raw["total"]["gross"]["currency"]
    lines = tuple(
        OrderLine(
            id=line["id"],
            name=" ".join(p for p in (line.get("productName"), line.get("variantName")) if p) or "Item",
            sku=line.get("productSku") or None,
            quantity=int(line["quantity"]),
            total_gross=_money(line["totalPrice"]["gross"], currency),
            unit_gross=_money(line["unitPrice"]["gross"], currency),
            tax_rate_bp=tax_rate_basis_points(line.get("taxRate") or 0),
        )
        for line in raw.get("lines") or []
    )
    fulfillments = tuple(
        Fulfillment(
            id=f["id"],
            number=int(f.get("fulfillmentOrder") or 0),
            status=f["status"],
            tracking_number=f.get("trackingNumber") or "",
            lines=tuple(
                FulfillmentLine(fl["orderLine"]["id"], int(fl["quantity"]))
                for fl in f.get("lines") or []
                if fl.get("orderLine")
            ),
        )
        for f in raw.get("fulfillments") or []
    )
    shipping = raw.get("shippingPrice") or {}
    return ShopOrder(
        id=SaleorOrderId(raw["id"]),
        number=str(raw.get("number") or ""),
        status=raw["status"],
        channel_slug=(raw.get("channel") or {}).get("slug") or "",
        currency=currency,
        lines=lines,
        fulfillments=fulfillments,
        shipping_gross=_money(shipping.get("gross"), currency),
        shipping_tax=_money(shipping.get("tax"), currency),
        total_gross=_money(raw["total"]["gross"], currency),
        klarna_order_id=find_klarna_order_id(raw, metadata_key),
        notes=frozenset(
            e["message"] for e in raw.get("events") or [] if e.get("type") == "NOTE_ADDED" and e.get("message")
        ),
    )
