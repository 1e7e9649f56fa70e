"""Installations (app-sdk's APL): register, look up, refresh the JWKS, remove."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, delete, select
from sqlalchemy.orm import Session

from plugin.crypto import SecretBox
from plugin.db import Database
from plugin.db.models import Installation, utcnow
from plugin.saleor import jws, urls
from plugin.services import pending
from plugin.services.merchant import SettingsStore

logger = logging.getLogger(__name__)

# Seconds between JWKS refetches per Saleor, so forged requests cannot make us hammer it. A key
# rotation shows up as an unknown kid: refetched sooner, and when throttled the caller answers 503
# so Saleor redelivers instead of dropping the event.
REFETCH_UNKNOWN_KID = 5.0
REFETCH_BAD_SIGNATURE = 60.0


class RefetchThrottled(Exception):
    """The key is unknown and the JWKS was fetched moments ago: try again later."""


@dataclass(frozen=True)
class Keys:
    """What verifying a request needs: read with one light query on every webhook."""

    saleor_api_url: str
    app_id: str
    jwks: str


_KEYS = select(Installation.app_id, Installation.jwks).where(Installation.saleor_api_url == bindparam("url"))


def load_keys(conn: Connection, saleor_api_url: str) -> Keys | None:
    row = conn.execute(_KEYS, {"url": saleor_api_url}).first()
    return Keys(saleor_api_url, row.app_id, row.jwks) if row else None


@dataclass(frozen=True)
class Stored:
    """The installation a register would replace: its app id and decrypted token."""

    app_id: str
    token: str


def stored(session: Session, box: SecretBox, saleor_api_url: str) -> Stored | None:
    row = session.get(Installation, saleor_api_url)
    return Stored(row.app_id, box.decrypt(row.token_encrypted)) if row is not None else None


def count_for_host(session: Session, host: str) -> int:
    """Installations whose Saleor API URL names ``host`` (any scheme, port, path or letter case)."""
    host = host.rstrip(".")
    urls = session.scalars(select(Installation.saleor_api_url))
    return sum(1 for url in urls if _host_of(url) == host)


def _host_of(url: str) -> str | None:
    try:
        return urls.parse(url).host.rstrip(".")
    except urls.BadSaleorUrl:
        return None


def save(session: Session, box: SecretBox, *, saleor_api_url: str, app_id: str, token: str, jwks_text: str) -> None:
    """Store the installation, or update it in place on a reinstall; the token encrypted.

    Never a delete and insert: the merchant's settings, jobs and ledger hang off this row by
    foreign keys with ON DELETE CASCADE, and a reinstall must keep them.
    """
    row = session.get(Installation, saleor_api_url)
    if row is None:
        row = Installation(saleor_api_url=saleor_api_url)
        session.add(row)
    row.app_id = app_id
    row.token_encrypted = box.encrypt(token)
    row.jwks = jwks_text
    row.installed_at = utcnow()
    pending.apply(session, SettingsStore(box), saleor_api_url)  # settings imported before the install


def remove(session: Session, saleor_api_url: str) -> None:
    """Forget the installation and, by cascade, its settings, secrets, jobs and ledger."""
    session.execute(delete(Installation).where(Installation.saleor_api_url == saleor_api_url))


class JwksVerifier:
    """Verify with the stored JWKS; on failure refetch once (rate-limited) and keep the new JWKS."""

    def __init__(self, db: Database, fetch: Callable[[str], str]) -> None:
        self.db = db
        self.fetch = fetch
        self._last_fetch: dict[str, float] = {}
        self._lock = threading.Lock()

    def verify(self, installation: Keys, check: Callable[[str], object]) -> object:
        try:
            return check(installation.jwks)
        except (jws.UnknownKey, jws.BadSignature) as first:
            unknown = isinstance(first, jws.UnknownKey)
            interval = REFETCH_UNKNOWN_KID if unknown else REFETCH_BAD_SIGNATURE
            throttled, fresh = self._refetch(installation.saleor_api_url, installation.jwks, interval)
            if fresh is None:
                if unknown and throttled:
                    raise RefetchThrottled() from first
                raise first
            # Keep any valid JWKS from the installation's Saleor, whatever request triggered the
            # fetch: a flood of forgeries must not keep a rotated key out (issue 11, item 5).
            with self.db.transaction() as session:
                row = session.get(Installation, installation.saleor_api_url)
                if row is not None:
                    row.jwks = fresh
            logger.info("Saleor JWKS refreshed", extra={"saleor_api_url": installation.saleor_api_url})
            return check(fresh)  # raises if the request still does not verify

    def _refetch(self, saleor_api_url: str, current: str, interval: float) -> tuple[bool, str | None]:
        """(throttled, the new JWKS if it differs from ``current``)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_fetch.get(saleor_api_url, -1e9) < interval:
                return True, None
            self._last_fetch[saleor_api_url] = now
        try:
            fresh = self.fetch(saleor_api_url)
        except Exception:  # noqa: BLE001 - an unreachable JWKS means: cannot verify
            logger.warning("Saleor JWKS refetch failed", extra={"saleor_api_url": saleor_api_url})
            return False, None
        return False, (fresh if jws.valid_jwks(fresh) and fresh != current else None)
