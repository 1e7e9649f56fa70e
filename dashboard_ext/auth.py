"""Who is calling the dashboard API: app-sdk's protected-handler checks, in its order (protocol §6.3).

1. ``authorization-bearer`` and ``saleor-api-url`` present, else 400.
2. The Saleor is installed, else 401.
3. The token is an unexpired RS256 JWT signed with that Saleor's key (stored JWKS, refetched once on
   an unknown kid or a bad signature, see ``JwksVerifier``), else 401.
4. Its ``app`` claim is this installation's app id, else 401: the token was issued for another app.
5. The user holds the permissions the call needs (``user_permissions``, as app-sdk checks), else 403.

Permissions (our decision):

* reading (settings, operations, exceptions, the order widget): MANAGE_ORDERS;
* retrying or dismissing a process exception: MANAGE_ORDERS, from the app page or the widget;
* changing settings or testing credentials: MANAGE_ORDERS and MANAGE_APPS, and only with the app
  page's token. Klarna credentials are app configuration, which Saleor (and saleor/apps, with
  MANAGE_APPS) reserves to whoever may manage apps; whoever installed the app had MANAGE_APPS.
  A widget or popup token (it carries ``app_extension``) can never change settings, so a widget
  bug or a hostile page in the order view cannot rewrite credentials or the mapping.

The ``iss`` claim is not compared with ``saleor-api-url``: app-sdk does not, and behind a proxy
Saleor may build it with another scheme or host. The per-installation JWKS and the ``app`` claim
already bind the token to this installation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import jwt
from flask import current_app, request

from plugin.saleor import jws
from plugin.services.installations import RefetchThrottled, load_keys

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Need:
    """What a call requires of the caller."""

    permissions: tuple[str, ...]
    app_page_only: bool = False  # refuse AppExtension tokens (widgets, popups)


READ = Need(("MANAGE_ORDERS",))
HANDLE_EXCEPTIONS = Need(("MANAGE_ORDERS",))
CONFIGURE = Need(("MANAGE_ORDERS", "MANAGE_APPS"), app_page_only=True)


class Refused(Exception):
    """The call is not allowed; answered as ``{"error": {"type", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Caller:
    saleor_api_url: str
    app_id: str
    user_id: str | None
    email: str | None
    user_permissions: frozenset[str]
    extension: str | None  # the AppExtension id for widget/popup tokens

    def may(self, need: Need) -> bool:
        """Whether this caller passes ``need`` (the page uses it to disable what it cannot do)."""
        return set(need.permissions) <= self.user_permissions and not (need.app_page_only and self.extension)


def authorize(need: Need) -> Caller:
    """Verify the current request's dashboard token and check ``need``; raise :class:`Refused`."""
    services = current_app.extensions["klarna_om"]
    token = request.headers.get("authorization-bearer", "").strip()
    saleor_api_url = request.headers.get("saleor-api-url", "").strip()
    if not token or not saleor_api_url:
        raise Refused(400, "MISSING_HEADERS", "Missing authorization-bearer or saleor-api-url header")
    with services.db.engine.connect() as conn:
        installation = load_keys(conn, saleor_api_url)
    if installation is None:
        raise _refused(401, "NOT_REGISTERED", "The app is not installed in this Saleor", saleor_api_url)
    _check_not_expired(token, saleor_api_url)
    # The same verifier as the webhooks, so both share one JWKS refetch throttle per Saleor.
    try:
        claims: dict[str, Any] = services.jwks_verifier.verify(installation, lambda jwks: jws.verify_jwt(token, jwks))
    except (RefetchThrottled, jws.SignatureError):
        # RefetchThrottled too: unlike a webhook, nobody redelivers; the page simply asks again.
        raise _refused(401, "INVALID_TOKEN", "The token is not signed by this Saleor", saleor_api_url) from None
    if claims.get("app") != installation.app_id:
        raise _refused(401, "WRONG_APP", "The token was issued for another app", saleor_api_url)
    permissions = claims.get("user_permissions")
    extension = claims.get("app_extension")
    caller = Caller(
        saleor_api_url=saleor_api_url, app_id=installation.app_id,
        user_id=_str_or_none(claims.get("user_id")), email=_str_or_none(claims.get("email")),
        user_permissions=frozenset(p for p in permissions if isinstance(p, str)) if isinstance(permissions, list) else frozenset(),
        extension=_str_or_none(extension),
    )  # fmt: skip
    missing = [p for p in need.permissions if p not in caller.user_permissions]
    if missing:
        raise _refused(403, "PERMISSION_DENIED", f"This needs the permission {', '.join(missing)}", saleor_api_url)
    if need.app_page_only and caller.extension:
        raise _refused(403, "APP_PAGE_ONLY", "Settings can be changed only on the app's page", saleor_api_url)
    return caller


def _check_not_expired(token: str, saleor_api_url: str) -> None:
    """Refuse an expired token before verifying it, so stale tokens never trigger a JWKS refetch.

    The claims are not trusted here: this can only refuse; ``verify_jwt`` checks ``exp`` again.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise _refused(401, "INVALID_TOKEN", "The token is not a JWT", saleor_api_url) from None
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp <= time.time():
        raise _refused(401, "TOKEN_EXPIRED", "The token has expired; the dashboard sends a fresh one", saleor_api_url)


def _refused(status: int, code: str, message: str, saleor_api_url: str) -> Refused:
    logger.info(
        "dashboard call refused", extra={"saleor_api_url": saleor_api_url, "reason": code, "path": request.path}
    )
    return Refused(status, code, message)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
