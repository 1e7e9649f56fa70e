"""Merchant settings per installation and channel: Klarna credentials, region, mapping, options.

The same validation serves the settings page and ``klarna-om settings import``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from plugin.crypto import SecretBox
from plugin.db.models import ChannelSettings
from plugin.domain.model import DEFAULT_MAPPING, ORDER_STATUSES, Action, Options
from plugin.domain.model import MerchantSettings as MerchantSettings  # re-exported: it moved to the domain

REGIONS = ("EU", "NA", "OC")
ENVIRONMENTS = ("live", "playground")
ANY_CHANNEL = "*"
# Which actions make sense for a status: refusing "refund on UNFULFILLED" and the like.
SENSIBLE = {
    "DRAFT": {Action.NONE},
    "UNCONFIRMED": {Action.NONE, Action.CANCEL},
    "UNFULFILLED": {Action.NONE, Action.CANCEL},
    "PARTIALLY_FULFILLED": {Action.NONE, Action.CAPTURE},
    "FULFILLED": {Action.NONE, Action.CAPTURE},
    "PARTIALLY_RETURNED": {Action.NONE, Action.REFUND},
    "RETURNED": {Action.NONE, Action.REFUND},
    "CANCELED": {Action.NONE, Action.CANCEL},
    "EXPIRED": {Action.NONE, Action.CANCEL},
}


class SettingsInvalid(ValueError):
    """Field-level errors: ``{"field": "message"}``."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def validate(data: dict[str, Any], *, existing: MerchantSettings | None = None) -> MerchantSettings:
    """Validate one channel's settings document (``password`` optional: absent keeps the stored one)."""
    errors: dict[str, str] = {}
    if not isinstance(data, dict):
        raise SettingsInvalid({"": "expected a JSON object"})
    channel = data.get("channel", existing.channel if existing else ANY_CHANNEL)
    if not isinstance(channel, str) or not channel or len(channel) > 255:
        errors["channel"] = "a channel slug, or * for every channel"
    region = data.get("region", existing.region if existing else "EU")
    if region not in REGIONS:
        errors["region"] = f"one of {', '.join(REGIONS)}"
    environment = data.get("environment", existing.environment if existing else "playground")
    if environment not in ENVIRONMENTS:
        errors["environment"] = f"one of {', '.join(ENVIRONMENTS)}"
    username = data.get("username", existing.username if existing else "")
    if not isinstance(username, str) or len(username) > 255 or ":" in username or not _printable_ascii(username):
        errors["username"] = "the Klarna API username (printable ASCII, no colon, at most 255 characters)"
    password = data.get("password", existing.password if existing else None)
    if password is not None and (
        not isinstance(password, str) or not password or len(password) > 1024 or not _printable_ascii(password)
    ):
        errors["password"] = "the Klarna API password (printable ASCII, at most 1024 characters)"
    mapping = dict(existing.mapping) if existing else dict(DEFAULT_MAPPING)
    raw_mapping = data.get("mapping", {})
    if not isinstance(raw_mapping, dict):
        errors["mapping"] = "an object of status -> action"
        raw_mapping = {}
    for status, action in raw_mapping.items():
        key = f"mapping.{status}"
        try:
            parsed = Action(action)
        except ValueError:
            errors[key] = "one of none, capture, cancel, refund"
            continue
        allowed = SENSIBLE.get(status)
        if allowed is None:
            # A misspelt status (FULLFILLED) would sit beside the real one and never apply.
            errors[key] = f"{status!r} is not a Saleor order status; valid: {', '.join(ORDER_STATUSES)}"
        elif parsed not in allowed:
            errors[key] = f"{parsed.value} makes no sense for {status} orders"
        else:
            mapping[status] = parsed
    options = _options(data.get("options", {}), existing.options if existing else Options(), errors)
    if errors:
        raise SettingsInvalid(errors)
    return MerchantSettings(channel, region, environment, username, password, mapping, options)


def _printable_ascii(value: str) -> bool:
    # Klarna's usernames and API keys are ASCII; anything else is a paste error.
    return all(" " <= ch <= "~" for ch in value)


def _identifiers(value: Any) -> tuple[str, ...] | None:
    """App identifiers (manifest ``id``s): printable, no spaces, at most 20 of 255 characters."""
    if not isinstance(value, list | tuple) or len(value) > 20:
        return None
    if not all(isinstance(v, str) and 0 < len(v) <= 255 and all("!" <= ch <= "~" for ch in v) for v in value):
        return None
    return tuple(dict.fromkeys(value))


def _stored_options(raw: dict[str, Any]) -> Options:
    """Options as stored (JSON lists back to tuples)."""
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return Options(**values)


def _options(raw: Any, base: Options, errors: dict[str, str]) -> Options:
    if not isinstance(raw, dict):
        errors["options"] = "an object"
        return base
    values = asdict(base)
    known = {f.name: f.type for f in fields(Options)}
    for name, value in raw.items():
        if name not in known:
            errors[f"options.{name}"] = "unknown option"
        elif isinstance(values[name], bool) and not isinstance(value, bool):
            errors[f"options.{name}"] = "true or false"
        elif name in _OPTION_RANGES and not _in_range(value, _OPTION_RANGES[name]):
            low, high = _OPTION_RANGES[name]
            errors[f"options.{name}"] = f"a whole number from {low} to {high}"
        elif isinstance(values[name], str) and (not isinstance(value, str) or not value):
            errors[f"options.{name}"] = "a non-empty string"
        elif isinstance(values[name], tuple):
            identifiers = _identifiers(value)
            if identifiers is None:
                errors[f"options.{name}"] = "a list of app identifiers"
            else:
                values[name] = identifiers
        else:
            values[name] = value
    if values["shipping_with"] not in ("first", "last"):
        errors["options.shipping_with"] = "first or last"
    if values["cancelled_shipment"] not in ("refund", "flag"):
        errors["options.cancelled_shipment"] = "refund or flag"
    return Options(**values)


# Whole-number options: (lowest, highest). An authorization lives at most 180 days.
_OPTION_RANGES: dict[str, tuple[int, int]] = {
    "extension_margin_days": (1, 27),
    "final_expiry_warning_days": (1, 60),
    "recheck_hours": (1, 24 * 7),
    "fraud_recheck_minutes": (1, 24 * 60),
}


def _in_range(value: Any, bounds: tuple[int, int]) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and bounds[0] <= value <= bounds[1]


class SettingsStore:
    """Reads and writes :class:`MerchantSettings`, the password encrypted at rest."""

    def __init__(self, box: SecretBox) -> None:
        self.box = box

    def _row(self, session: Session, saleor_api_url: str, channel: str) -> ChannelSettings | None:
        return session.scalar(
            select(ChannelSettings).where(
                ChannelSettings.saleor_api_url == saleor_api_url, ChannelSettings.channel_slug == channel
            )
        )

    def _load(self, row: ChannelSettings | Row[Any]) -> MerchantSettings:
        mapping = {k: Action(v) for k, v in json.loads(row.mapping).items()}
        return MerchantSettings(
            channel=row.channel_slug,
            region=row.region,
            environment=row.environment,
            username=row.username,
            password=self.box.decrypt(row.password_encrypted) if row.password_encrypted else None,
            mapping=mapping,
            options=_stored_options(json.loads(row.options)),
        )

    def get(self, session: Session, saleor_api_url: str, channel: str) -> MerchantSettings | None:
        """The channel's own settings, else those for every channel (``*``)."""
        row = self._row(session, saleor_api_url, channel) or self._row(session, saleor_api_url, ANY_CHANNEL)
        return self._load(row) if row else None

    def get_exact(self, session: Session, saleor_api_url: str, channel: str) -> MerchantSettings | None:
        row = self._row(session, saleor_api_url, channel)
        return self._load(row) if row else None

    def from_row(self, row: Row[Any]) -> MerchantSettings:
        """Settings from a Core row with the ``channel_settings`` columns (the worker's one read)."""
        return self._load(row)

    def all(self, session: Session, saleor_api_url: str) -> list[MerchantSettings]:
        rows = session.scalars(
            select(ChannelSettings)
            .where(ChannelSettings.saleor_api_url == saleor_api_url)
            .order_by(ChannelSettings.channel_slug)
        )
        return [self._load(row) for row in rows]

    def save(self, session: Session, saleor_api_url: str, settings: MerchantSettings) -> None:
        row = self._row(session, saleor_api_url, settings.channel)
        if row is None:
            row = ChannelSettings(saleor_api_url=saleor_api_url, channel_slug=settings.channel)
            session.add(row)
        row.region = settings.region
        row.environment = settings.environment
        row.username = settings.username
        row.password_encrypted = self.box.encrypt(settings.password) if settings.password else None
        row.mapping = json.dumps({k: Action(v).value for k, v in settings.mapping.items()})
        row.options = json.dumps(asdict(settings.options))
