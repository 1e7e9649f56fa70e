"""Settings as code: a channel's settings imported before its Saleor installs the app.

``klarna-om settings import`` stages them (validated, the document encrypted, since it may carry the
Klarna password); :func:`apply` stores them as the installation's settings when that Saleor installs
the app, and deletes what it applied.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from plugin.crypto import SecretBox
from plugin.db.models import PendingSettings, utcnow
from plugin.services.merchant import ANY_CHANNEL, SettingsInvalid, SettingsStore, validate

logger = logging.getLogger(__name__)


def same_saleor(url: str) -> str:
    """The key two spellings of one Saleor API URL share: host case and the trailing slash do not count."""
    parts = urlsplit(url.strip())
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))


def stage(session: Session, box: SecretBox, saleor_api_url: str, documents: list[dict[str, Any]]) -> None:
    """Keep validated channel documents until ``saleor_api_url`` installs the app (a later import replaces)."""
    for document in documents:
        validate(document)  # the caller reports errors; this only guards against storing garbage
        channel = document.get("channel", ANY_CHANNEL)
        row = session.scalar(
            select(PendingSettings).where(
                PendingSettings.saleor_api_url == saleor_api_url, PendingSettings.channel_slug == channel
            )
        )
        if row is None:
            row = PendingSettings(saleor_api_url=saleor_api_url, channel_slug=channel)
            session.add(row)
        row.document_encrypted = box.encrypt(json.dumps(document))
        row.created_at = utcnow()


def apply(session: Session, store: SettingsStore, saleor_api_url: str) -> int:
    """Store the staged settings of the Saleor that just installed the app; returns how many channels."""
    key = same_saleor(saleor_api_url)
    rows = [row for row in session.scalars(select(PendingSettings)) if same_saleor(row.saleor_api_url) == key]
    if not rows:
        return 0
    session.flush()  # the installation row first: settings refer to it
    applied = 0
    for row in rows:
        document = json.loads(store.box.decrypt(row.document_encrypted))
        try:
            merchant = validate(document, existing=store.get_exact(session, saleor_api_url, row.channel_slug))
        except SettingsInvalid as exc:  # staged by an older release with other rules
            logger.error(
                "staged settings not applied",
                extra={"saleor_api_url": saleor_api_url, "channel": row.channel_slug, "reason": str(exc)},
            )
        else:
            store.save(session, saleor_api_url, merchant)
            applied += 1
        session.delete(row)
    logger.info("staged settings applied", extra={"saleor_api_url": saleor_api_url, "channels": applied})
    return applied
