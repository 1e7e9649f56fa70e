"""The JSON API behind the dashboard pages, under /api/dashboard. Every view starts with ``authorize``.

Refusals answer ``{"error": {"type", "message"}}``; invalid input answers 400 ``{"errors": {field: message}}``.
Nothing is written before the caller is authorized and the input validated.
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify, request

from dashboard_ext import bp
from dashboard_ext.auth import CONFIGURE, HANDLE_EXCEPTIONS, READ, Caller, Refused, authorize
from plugin.db.models import Installation, ProcessException
from plugin.klarna.client import KlarnaOrdersClient
from plugin.saleor.client import SaleorError
from plugin.services import dashboard
from plugin.services.merchant import ANY_CHANNEL, SettingsInvalid, validate

API = "/api/dashboard"
MAX_LIMIT = 200
PROBE_TIMEOUT = (3.05, 10.0)  # the admin is waiting for the answer


def _services() -> Any:
    return current_app.extensions["klarna_om"]


def _saleor(caller: Caller) -> Any:
    """The installation's Saleor client (app token): the user's token is only proof of who asks."""
    services = _services()
    with services.db.transaction() as session:
        installation = session.get(Installation, caller.saleor_api_url)
        token = services.box.decrypt(installation.token_encrypted) if installation else ""
    return services.saleor_for(caller.saleor_api_url, token)


def _invalid(errors: dict[str, str]) -> tuple[Response, int]:
    return jsonify(errors=errors), 400


def _json_object() -> dict[str, Any] | None:
    data = request.get_json(silent=True)
    return data if isinstance(data, dict) else None


@bp.url_value_preprocessor
def _check_path_ids(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """Channel slugs and order ids are stored as strings of at most 255 characters without NUL."""
    for name in ("channel", "order_id"):
        value = (values or {}).get(name)
        if isinstance(value, str) and (not value or len(value) > 255 or "\x00" in value):
            raise Refused(400, "BAD_ID", f"{name} is not a valid id")


@bp.errorhandler(Refused)
def _refused(exc: Refused) -> tuple[Response, int]:
    return jsonify(error={"type": exc.code, "message": exc.message}), exc.status


@bp.after_request
def _no_store(response: Response) -> Response:
    if request.path.startswith(API + "/"):
        response.headers["Cache-Control"] = "no-store"  # per-user data; never cached
    return response


# -- settings ---------------------------------------------------------------------------------


@bp.get(f"{API}/settings")
def get_settings() -> Any:
    """Channels (Saleor's, via the app token) merged with the stored settings; never a password."""
    caller = authorize(READ)
    services = _services()
    saleor = _saleor(caller)
    channels: list[dashboard.Channel] | None = None
    saleor_error = None
    try:
        channels = dashboard.saleor_channels(saleor)
    except SaleorError as exc:
        saleor_error = str(exc)
    allow_unpaid = dashboard.fulfillment_allow_unpaid(saleor) if channels is not None else None
    handles_payments = dashboard.handles_payments(saleor) if channels is not None else None
    with services.db.transaction() as session:
        view = dashboard.settings_view(session, services.store, caller.saleor_api_url, channels)
    return jsonify(
        **view, saleor_error=saleor_error, fulfillment_allow_unpaid=allow_unpaid, handles_payments=handles_payments,
        can_configure=caller.may(CONFIGURE), defaults=dashboard.default_settings(),
    )  # fmt: skip


@bp.route(f"{API}/settings/<path:channel>", methods=["PUT", "POST"])
def put_settings(channel: str) -> Any:
    """Validate and store one channel's settings; an empty or absent password keeps the stored one."""
    caller = authorize(CONFIGURE)
    data = _json_object()
    if data is None:
        return _invalid({"": "expected a JSON object"})
    services = _services()
    with services.db.transaction() as session:
        # A channel without its own row starts from what it inherits (the "*" settings, password included).
        existing = services.store.get(session, caller.saleor_api_url, channel)
        try:
            merchant = validate(dashboard.settings_input(data, channel), existing=existing)
        except SettingsInvalid as exc:
            return _invalid(exc.errors)
        services.store.save(session, caller.saleor_api_url, merchant)
    return jsonify(settings=merchant.public(), own_settings=True)


@bp.delete(f"{API}/settings/<path:channel>")
def delete_settings(channel: str) -> Any:
    """Drop a channel's own settings so that it inherits the "*" settings again."""
    caller = authorize(CONFIGURE)
    if channel == ANY_CHANNEL:
        return _invalid({"channel": "the settings for all channels can be changed, not removed"})
    with _services().db.transaction() as session:
        dashboard.drop_channel_settings(session, caller.saleor_api_url, channel)
    return jsonify(own_settings=False)


@bp.post(f"{API}/test-connection")
def test_connection() -> Any:
    """Try the submitted credentials, or the stored ones where a field is left empty, at Klarna."""
    caller = authorize(CONFIGURE)
    data = _json_object()
    if data is None:
        return _invalid({"": "expected a JSON object"})
    services = _services()
    channel = data.get("channel") if isinstance(data.get("channel"), str) and data.get("channel") else ANY_CHANNEL
    with services.db.transaction() as session:
        stored = services.store.get(session, caller.saleor_api_url, channel)
    try:
        probe = dashboard.connection_input(data, stored)
    except SettingsInvalid as exc:
        return _invalid(exc.errors)
    check = dashboard.check_connection(
        *probe, override=services.settings.klarna_base_url,
        client_for=lambda url, user, secret: KlarnaOrdersClient(url, user, secret, timeout=PROBE_TIMEOUT),
    )  # fmt: skip
    return jsonify(
        ok=check.ok, result=check.result, message=check.message, region=check.region, environment=check.environment
    )


# -- operations log and exceptions --------------------------------------------------------------


def _limit(default: int) -> int:
    return max(1, min(request.args.get("limit", default, type=int) or default, MAX_LIMIT))


@bp.get(f"{API}/operations")
def list_operations() -> Any:
    """The latest Klarna operations across orders, newest first; ``?state=`` filters."""
    caller = authorize(READ)
    state = request.args.get("state") or None
    if state is not None and state not in dashboard.OPERATION_STATES:
        return _invalid({"state": f"one of {', '.join(dashboard.OPERATION_STATES)}"})
    with _services().db.transaction() as session:
        rows = dashboard.operations(session, caller.saleor_api_url, state=state, limit=_limit(50))
    return jsonify(operations=dashboard.with_order_numbers(_saleor(caller), rows))


@bp.get(f"{API}/exceptions")
def list_exceptions() -> Any:
    """Open process exceptions and their count."""
    caller = authorize(READ)
    with _services().db.transaction() as session:
        view = dashboard.open_exceptions(session, caller.saleor_api_url, limit=_limit(100))
    view["exceptions"] = dashboard.with_order_numbers(_saleor(caller), view["exceptions"])
    return jsonify(view)


RESOLVED = {
    "retry": "Retrying {order}: queued for a new attempt at Klarna",
    "dismiss": "Exception for {order} dismissed",
}


def _resolve(exception_id: int, action: Any, verb: str) -> Any:
    caller = authorize(HANDLE_EXCEPTIONS)
    with _services().db.transaction() as session:
        try:
            action(session, caller.saleor_api_url, exception_id)
            order_id = session.get(ProcessException, exception_id).order_id
        except dashboard.NoSuchException:
            return jsonify(error={"type": "NOT_FOUND", "message": f"No exception #{exception_id}"}), 404
        except dashboard.NotOpen as exc:
            return jsonify(error={"type": "NOT_OPEN", "message": f"Exception #{exception_id} is already {exc}"}), 409
    with _services().db.transaction() as session:
        count = dashboard.open_exceptions(session, caller.saleor_api_url, limit=1)["open_count"]
    numbered = dashboard.with_order_numbers(_saleor(caller), [{"order_id": order_id}])[0]
    message = RESOLVED[verb].format(order=dashboard.order_label(numbered["order_number"]))
    worker = current_app.extensions.get("klarna_om_worker")
    if worker is not None:
        worker.wake()  # a retry queued the order; an in-process worker picks it up now
    return jsonify(message=message, open_count=count)


@bp.post(f"{API}/exceptions/<int(min=1, max=9223372036854775807):exception_id>/retry")
def retry_exception(exception_id: int) -> Any:
    """Retry the failed operation behind the exception (a fresh idempotency key) and resync the order."""
    return _resolve(exception_id, dashboard.retry_open_exception, "retry")


@bp.post(f"{API}/exceptions/<int(min=1, max=9223372036854775807):exception_id>/dismiss")
def dismiss_exception(exception_id: int) -> Any:
    """Close the exception without acting."""
    return _resolve(exception_id, dashboard.dismiss_exception, "dismiss")


# -- the order widget -------------------------------------------------------------------------


@bp.get(f"{API}/orders/<path:order_id>")
def get_order(order_id: str) -> Any:
    """The widget's data: Klarna's live state of the order, its operations and open exceptions."""
    caller = authorize(READ)
    services = _services()
    sources = dashboard.OrderSources(
        db_transaction=services.db.transaction, store=services.store, saleor=_saleor(caller),
        klarna_for=services.klarna_for,
    )  # fmt: skip
    return jsonify(dashboard.order_view(sources, caller.saleor_api_url, order_id))
