"""The Saleor -> app HTTP surface: manifest, register (install handshake), signed webhooks.

Error bodies follow app-sdk: register answers ``{"success": false, "error": {"code", "message"}}``,
webhooks answer ``{"error": {"type", "message"}}``. 4xx means "never send this again", 5xx "retry".
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import Connection, bindparam, insert, select

from plugin.db.models import Delivery, utcnow
from plugin.metrics import WEBHOOKS_RECEIVED, WEBHOOKS_REJECTED
from plugin.saleor import jws
from plugin.saleor import urls as saleor_urls
from plugin.saleor.client import TokenRefused
from plugin.services import installations, queue
from plugin.services.installations import RefetchThrottled
from webhooks.payloads import PayloadError, parse_app_deleted, parse_order_event

if TYPE_CHECKING:  # plugin.app imports this package while it builds the app
    from plugin.app import Services

logger = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)

ORDER_EVENTS = (
    "ORDER_CREATED", "ORDER_UPDATED", "ORDER_CONFIRMED", "ORDER_FULLY_PAID", "ORDER_PAID",
    "ORDER_FULFILLED", "ORDER_CANCELLED", "ORDER_EXPIRED", "ORDER_REFUNDED", "ORDER_FULLY_REFUNDED",
    "ORDER_METADATA_UPDATED", "FULFILLMENT_CREATED", "FULFILLMENT_APPROVED", "FULFILLMENT_CANCELED",
)  # fmt: skip
ORDER_EVENTS_PATH = "/api/webhooks/order-events"
_RECORD_DELIVERY = insert(Delivery)  # built once: the hot path runs it on every event
APP_DELETED_PATH = "/api/webhooks/app-deleted"


def _services() -> Services:
    services: Services = current_app.extensions["klarna_om"]
    return services


def static_manifest() -> dict[str, Any]:
    """The top-level manifest.json (shipped inside this package as a link to it)."""
    text = resources.files("webhooks").joinpath("manifest.json").read_text()
    manifest: dict[str, Any] = json.loads(text)
    return manifest


def _version(header: str) -> tuple[int, int]:
    try:
        major, minor = header.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (99, 0)


def build_manifest(public_base: str, schema_version: str = "") -> dict[str, Any]:
    """manifest.json with every URL resolved against the public URL.

    Saleor before 3.22 validates mounts against an enum without the *_WIDGETS mounts, so there the
    order widget becomes an ORDER_DETAILS_MORE_ACTIONS popup.
    """
    manifest = static_manifest()
    if _version(schema_version) < (3, 22):
        for extension in manifest.get("extensions", []):
            if extension["mount"].endswith("_WIDGETS"):
                extension.update(mount="ORDER_DETAILS_MORE_ACTIONS", target="POPUP")
                extension.pop("options", None)
    for key in ("appUrl", "tokenTargetUrl", "homepageUrl", "supportUrl", "dataPrivacyUrl"):
        if key in manifest and manifest[key].startswith("/"):
            manifest[key] = public_base + manifest[key]
    logo = manifest.get("brand", {}).get("logo", {})
    if logo.get("default", "").startswith("/"):
        logo["default"] = public_base + logo["default"]
    for extension in manifest.get("extensions", []):
        if not extension["url"].startswith("/"):
            continue
        # Relative extension URLs resolve against appUrl (3.23); absolute ones work on every version.
        extension["url"] = public_base + extension["url"]
    for webhook in manifest.get("webhooks", []):
        webhook["targetUrl"] = public_base + webhook["targetUrl"]
    return manifest


@bp.get("/api/manifest")
def manifest() -> ResponseReturnValue:
    version = request.headers.get("Saleor-Schema-Version", "")
    return jsonify(build_manifest(_services().settings.public_base, version))


@bp.get("/logo.png")
def logo() -> ResponseReturnValue:
    data = resources.files("webhooks").joinpath("logo.png").read_bytes()
    return current_app.response_class(data, mimetype="image/png")


def _register_error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify(success=False, error={"code": code, "message": message}), status


@bp.post("/api/register")
def register() -> ResponseReturnValue:
    """app-sdk's register handler, hardened (issue 11): parse and clean the URL, allowlist, bound
    the rate and the installations per host, prove the token, refuse to replace a live
    installation of another app, fetch the JWKS, store without deleting anything."""
    services = _services()
    settings = services.settings
    raw_url = request.headers.get("Saleor-Api-Url", "").strip()
    if not raw_url:
        return _register_error(400, "MISSING_SALEOR_API_URL", "Missing saleor-api-url header")
    try:
        url = saleor_urls.parse(raw_url)
    except saleor_urls.BadSaleorUrl as exc:
        return _register_error(400, "INVALID_SALEOR_API_URL", f"The saleor-api-url header is not usable: {exc}")
    body = request.get_json(silent=True)
    token = body.get("auth_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token or len(token) > 1024:
        return _register_error(400, "MISSING_AUTH_TOKEN", "Missing auth token.")
    saleor_api_url = url.url  # without userinfo: what was matched is what is called and stored
    if not settings.saleor_url_allowed(url):
        logger.warning("install refused: Saleor not on the allowlist", extra={"saleor_api_url": saleor_api_url})
        return _register_error(
            403, "SALEOR_URL_PROHIBITED", "This app expects to be installed only in allowed Saleor instances"
        )
    limiter = services.register_limiter
    if limiter is not None and not limiter.allow(request.remote_addr or ""):
        logger.warning("install refused: too many registrations", extra={"saleor_api_url": saleor_api_url})
        error = _register_error(429, "TOO_MANY_REQUESTS", "Too many installation attempts; retry in a minute")
        error[0].headers["Retry-After"] = "60"
        return error
    with services.db.transaction() as session:
        existing = installations.stored(session, services.box, saleor_api_url)
        crowded = existing is None and installations.count_for_host(session, url.host) >= (
            settings.max_installations_per_host
        )
    if crowded:
        logger.warning("install refused: too many installations for the host", extra={"host": url.host})
        return _register_error(403, "TOO_MANY_INSTALLATIONS", "This host has as many installations as allowed")
    try:
        app_id = services.fetch_app_id(saleor_api_url, token)
    except Exception as exc:  # noqa: BLE001 - any failure means the token is not proven
        logger.warning("install refused: the token is not proven",
                       extra={"saleor_api_url": saleor_api_url, "reason": str(exc)[:300]})  # fmt: skip
        return _register_error(401, "UNKNOWN_APP_ID", "Could not get the app ID from the Saleor API")
    if existing is not None and existing.app_id != app_id:
        refusal = _still_installed(services, saleor_api_url, existing)
        if refusal is not None:
            return refusal
    try:
        jwks_text = services.fetch_jwks(saleor_api_url)
        if not jws.valid_jwks(jwks_text):
            raise ValueError("no RSA key")
    except Exception:  # noqa: BLE001 - any failure to fetch or read the JWKS refuses the install
        logger.warning("install refused: no JWKS", extra={"saleor_api_url": saleor_api_url})
        return _register_error(401, "JWKS_NOT_AVAILABLE", "Can't fetch the remote JWKS.")
    with services.db.transaction() as session:
        installations.save(
            session, services.box, saleor_api_url=saleor_api_url, app_id=app_id, token=token, jwks_text=jwks_text
        )
    logger.info("installed", extra={"saleor_api_url": saleor_api_url, "app_id": app_id})
    return jsonify(success=True)


def _still_installed(
    services: Services, saleor_api_url: str, existing: installations.Stored
) -> tuple[Response, int] | None:
    """A register for another app may replace the installation only once Saleor has revoked the
    stored token (a real reinstall deletes the app first). None when the replace may go ahead."""
    try:
        proven = services.fetch_app_id(saleor_api_url, existing.token)
    except TokenRefused:
        return None
    except Exception:  # noqa: BLE001 - cannot tell: keep the installation, let the installer retry
        logger.warning("install refused: the current installation could not be checked",
                       extra={"saleor_api_url": saleor_api_url})  # fmt: skip
        return _register_error(503, "INSTALLATION_CHECK_FAILED", "Could not check the current installation; retry")
    logger.warning(
        "install refused: the app is installed and its token is valid",
        extra={"saleor_api_url": saleor_api_url, "app_id": existing.app_id, "proven_app_id": proven},
    )
    return _register_error(
        409, "ALREADY_INSTALLED", "The app is installed in this Saleor; uninstall it there before installing again"
    )


def _webhook_error(status: int, code: str, message: str) -> tuple[Response, int]:
    WEBHOOKS_REJECTED.labels(code).inc()
    return jsonify(error={"type": code, "message": message}), status


def _verified(
    expected_events: tuple[str, ...], conn: Connection | None = None
) -> tuple[tuple[installations.Keys, bytes, str] | None, tuple[Response, int] | None]:
    """Headers, installation, signature: (installation, raw body, event) or an error response.

    ``conn``: read the installation on this connection (the caller's, which records the delivery).
    """
    services = _services()
    raw = request.get_data(cache=True)
    saleor_api_url = request.headers.get("Saleor-Api-Url", "")
    event = request.headers.get("Saleor-Event", "")
    signature = request.headers.get("Saleor-Signature", "")
    if not saleor_api_url:
        return None, _webhook_error(400, "MISSING_SALEOR_API_URL_HEADER", "Missing saleor-api-url header")
    if not event:
        return None, _webhook_error(400, "MISSING_SALEOR_EVENT_HEADER", "Missing saleor-event header")
    if event.upper() not in expected_events:
        return None, _webhook_error(400, "WRONG_EVENT", f"Unexpected event {event[:64]}")
    if not signature:
        return None, _webhook_error(400, "MISSING_SIGNATURE_HEADER", "Missing saleor-signature header")
    if not raw:
        return None, _webhook_error(400, "MISSING_REQUEST_BODY", "Missing request body")
    if conn is not None:
        installation = installations.load_keys(conn, saleor_api_url)
    else:
        with services.db.engine.connect() as own_conn:
            installation = installations.load_keys(own_conn, saleor_api_url)
    if installation is None:
        return None, _webhook_error(401, "NOT_REGISTERED", "The app is not installed in this Saleor")
    try:
        assert services.jwks_verifier is not None  # Services.build sets it
        services.jwks_verifier.verify(installation, lambda text: jws.verify_detached(signature, raw, text))
    except RefetchThrottled:
        return None, _webhook_error(503, "JWKS_REFRESH_PENDING", "Unknown signing key; retry shortly")
    except jws.SignatureError:
        logger.warning("webhook signature rejected", extra={"saleor_api_url": saleor_api_url, "event": event[:64]})
        return None, _webhook_error(401, "SIGNATURE_VERIFICATION_FAILED", "Request signature check failed")
    return (installation, raw, event.upper()), None


_SEEN = (
    select(Delivery.id)
    .where(Delivery.digest == bindparam("digest"), Delivery.received_at >= bindparam("since"))
    .limit(1)
)


def delivery_digest(saleor_api_url: str, event: str, raw: bytes) -> str:
    return hashlib.sha256(b"\0".join((saleor_api_url.encode(), event.encode(), raw))).hexdigest()


@bp.post(ORDER_EVENTS_PATH)
def order_events() -> ResponseReturnValue:
    """Verify, record the delivery and enqueue the order's sync in one transaction, answer 200.

    One pooled connection serves the installation's keys and the write (one checkout, one ping):
    the hot path's database round trips are the read, the two writes and the commit.
    """
    services = _services()
    with services.db.engine.connect() as conn:
        verified, error = _verified(ORDER_EVENTS, conn)
        if error is not None:
            return error
        assert verified is not None  # _verified gives either the values or the error
        installation, raw, event = verified
        try:
            parsed = parse_order_event(raw)
        except PayloadError as exc:
            return _webhook_error(400, "MALFORMED_PAYLOAD", str(exc))
        if parsed.recipient_id != installation.app_id:
            return _webhook_error(403, "WRONG_RECIPIENT", "The event is addressed to another app")
        # The app's own notes and metadata come back as events: nothing to sync for those.
        own = parsed.principal_id == installation.app_id
        digest = delivery_digest(installation.saleor_api_url, event, raw)
        now = utcnow()
        # A replay of a signed delivery (same bytes) within the window is answered, not recorded:
        # Saleor's payloads carry issuedAt, so two real events never share a digest.
        since = now - timedelta(seconds=services.settings.delivery_dedupe_seconds)
        if conn.execute(_SEEN, {"digest": digest, "since": since}).first() is not None:
            conn.rollback()
            WEBHOOKS_REJECTED.labels("DUPLICATE").inc()
            return jsonify(ok=True, enqueued=False, duplicate=True)
        conn.execute(_RECORD_DELIVERY, {
            "saleor_api_url": installation.saleor_api_url, "event": event, "order_id": parsed.order_id,
            "principal": parsed.principal_id, "enqueued": not own, "received_at": now, "digest": digest,
        })  # fmt: skip
        if not own:
            queue.enqueue(conn, installation.saleor_api_url, parsed.order_id)
        conn.commit()
    WEBHOOKS_RECEIVED.labels(event).inc()
    worker = current_app.extensions.get("klarna_om_worker")
    if worker is not None and not own:
        worker.wake()
    return jsonify(ok=True, enqueued=not own)


@bp.post(APP_DELETED_PATH)
def app_deleted() -> ResponseReturnValue:
    verified, error = _verified(("APP_DELETED",))
    if error is not None:
        return error
    assert verified is not None  # _verified gives either the values or the error
    installation, raw, _ = verified
    try:
        app_id = parse_app_deleted(raw)
    except PayloadError as exc:
        return _webhook_error(400, "MALFORMED_PAYLOAD", str(exc))
    if app_id != installation.app_id:
        return _webhook_error(403, "WRONG_RECIPIENT", "The event is about another app")
    with _services().db.transaction() as session:
        installations.remove(session, installation.saleor_api_url)
    logger.info("uninstalled", extra={"saleor_api_url": installation.saleor_api_url})
    return jsonify(ok=True)


__all__ = ["ORDER_EVENTS", "bp", "build_manifest"]

# The dashboard's payment buttons live in their own module; importing it registers its route on bp.
from webhooks import transactions as _transactions  # noqa: E402, F401 - imported last for its side effect: it registers its route on bp
