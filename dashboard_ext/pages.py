"""The iframe pages: the app page (manifest ``appUrl``) and the order widget (ORDER_DETAILS_WIDGETS).

They carry no data: their scripts complete the AppBridge handshake and fetch it from ``api`` with
the dashboard's token. So the pages themselves need no authentication, and set no cookies.
"""

from __future__ import annotations

from importlib import resources

from flask import Response, current_app, make_response, render_template, request

from dashboard_ext import bp
from plugin.domain.model import ORDER_STATUSES, Action
from plugin.services.merchant import ENVIRONMENTS, REGIONS, SENSIBLE

# Scripts and styles only from our origin; no inline script, so an injected string cannot run.
# frame-ancestors stays open: any Saleor dashboard (self-hosted, on any host) must be able to embed us.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; font-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)
STATUS_LABELS = {
    "DRAFT": "Draft", "UNCONFIRMED": "Unconfirmed", "UNFULFILLED": "Unfulfilled",
    "PARTIALLY_FULFILLED": "Partially fulfilled", "FULFILLED": "Fulfilled",
    "PARTIALLY_RETURNED": "Partially returned", "RETURNED": "Returned", "CANCELED": "Canceled", "EXPIRED": "Expired",
}  # fmt: skip
# The Dashboard's own colours for order statuses (transformOrderStatus in saleor-dashboard src/misc.ts).
STATUS_PILLS = {
    "FULFILLED": "success", "PARTIALLY_FULFILLED": "info", "UNFULFILLED": "warning", "CANCELED": "error",
    "PARTIALLY_RETURNED": "attention",
}  # fmt: skip
ACTION_LABELS = {
    Action.NONE: "Do nothing", Action.CAPTURE: "Capture", Action.CANCEL: "Cancel", Action.REFUND: "Refund",
}  # fmt: skip


def _theme() -> str:
    """``?theme=`` when valid; the Dashboard may leave it out (widgets), then light, as app-sdk does."""
    theme = request.args.get("theme", "")
    return theme if theme in ("light", "dark") else "light"


def _page(template: str, **context: object) -> Response:
    response = make_response(render_template(template, theme=_theme(), **context))
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/app")
def app_page() -> Response:
    """The settings page: credentials, status mapping and options per channel, exceptions, operations."""
    mapping_rows = [
        {
            "status": status,
            "label": STATUS_LABELS.get(status, status),
            "pill": STATUS_PILLS.get(status, "neutral"),
            "actions": [
                {"value": a.value, "label": ACTION_LABELS[a], "allowed": a in SENSIBLE.get(status, set(Action))}
                for a in Action
            ],
        }
        for status in ORDER_STATUSES
    ]
    return _page("dashboard_ext/app.html", mapping_rows=mapping_rows, regions=REGIONS, environments=ENVIRONMENTS)


@bp.get("/widgets/order")
def order_widget() -> Response:
    """The order-details widget (a popup on Saleor < 3.22): Klarna's state of one order."""
    return _page("dashboard_ext/widget.html")


# -- the public pages the manifest links to (homepageUrl, supportUrl, dataPrivacyUrl) -------------


@bp.get("/")
def home() -> Response:
    """What the app does and how to install it (the manifest's homepageUrl)."""
    public_base = current_app.extensions["klarna_om"].settings.public_base
    return _page("dashboard_ext/public/home.html", manifest_url=f"{public_base}/api/manifest")


@bp.get("/support")
def support() -> Response:
    """How to get help (the manifest's supportUrl)."""
    return _page("dashboard_ext/public/support.html")


@bp.get("/privacy")
def privacy() -> Response:
    """What the app stores about a shop and its customers, and for how long (the manifest's dataPrivacyUrl)."""
    return _page("dashboard_ext/public/privacy.html")


@bp.get("/favicon.ico")
def favicon() -> Response:
    """The app's logo; browsers ask for /favicon.ico whatever a page says."""
    data = resources.files("webhooks").joinpath("logo.png").read_bytes()
    response = current_app.response_class(data, mimetype="image/png")
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response
