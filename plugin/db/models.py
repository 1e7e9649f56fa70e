"""Tables. One module so Alembic's autogenerate sees everything through ``Base.metadata``."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from plugin.domain.states import ExceptionState, NoteState, OperationKind, OperationState

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def one_of(column: str, values: type[StrEnum]) -> CheckConstraint:
    """A CHECK holding ``column`` to the enum's values, named ``ck_<table>_<column>``."""
    allowed = ", ".join(f"'{member.value}'" for member in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=column)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite and PostgreSQL alike.

    Stored as UTC. SQLite keeps no offset and PostgreSQL answers in the session's time zone, so
    values are normalised both ways. A naive value is refused: its time zone would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware one (datetime.now(UTC))")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # SQLite returns what was stored (UTC) without an offset.
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime}


class Installation(Base):
    """One Saleor that installed the app (app-sdk's APL entry), keyed by its API URL."""

    __tablename__ = "installations"

    saleor_api_url: Mapped[str] = mapped_column(String(512), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(255))
    token_encrypted: Mapped[str] = mapped_column(Text)
    jwks: Mapped[str] = mapped_column(Text)
    installed_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChannelSettings(Base):
    """Klarna credentials, region and status mapping for one channel (``*`` = every other channel)."""

    __tablename__ = "channel_settings"
    __table_args__ = (UniqueConstraint("saleor_api_url", "channel_slug"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    saleor_api_url: Mapped[str] = mapped_column(
        String(512), ForeignKey("installations.saleor_api_url", ondelete="CASCADE")
    )
    channel_slug: Mapped[str] = mapped_column(String(255))
    region: Mapped[str] = mapped_column(String(8), default="EU")
    environment: Mapped[str] = mapped_column(String(16), default="playground")
    username: Mapped[str] = mapped_column(String(255), default="")
    password_encrypted: Mapped[str | None] = mapped_column(Text, default=None)
    mapping: Mapped[str] = mapped_column(Text)  # JSON object: status -> action
    options: Mapped[str] = mapped_column(Text)  # JSON object
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Delivery(Base):
    """A verified webhook delivery, kept for the operations log."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    saleor_api_url: Mapped[str] = mapped_column(String(512), index=True)
    event: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[str | None] = mapped_column(String(255))
    principal: Mapped[str | None] = mapped_column(String(255))
    enqueued: Mapped[bool] = mapped_column(default=False)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # sha256 of (Saleor, event, body): an identical delivery seen recently is not recorded again
    digest: Mapped[str | None] = mapped_column(String(64), default=None, index=True)


class Job(Base):
    """The sync-order job: one row per order, level-triggered.

    A webhook bumps ``requested_seq``; a worker leases the row, syncs, and sets ``done_seq`` to the
    sequence it claimed. Work is due while ``requested_seq > done_seq``. One row per order means two
    workers never hold the same order: the lease is the lock.
    """

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("saleor_api_url", "order_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    saleor_api_url: Mapped[str] = mapped_column(
        String(512), ForeignKey("installations.saleor_api_url", ondelete="CASCADE")
    )
    order_id: Mapped[str] = mapped_column(String(255))
    requested_seq: Mapped[int] = mapped_column(Integer, default=1)
    done_seq: Mapped[int] = mapped_column(Integer, default=0)
    claimed_seq: Mapped[int] = mapped_column(Integer, default=0)
    run_after: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    leased_until: Mapped[datetime | None] = mapped_column(default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(255), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Operation(Base):
    """The ledger: one Klarna operation, written with its idempotency key before the call.

    ``kind`` and ``state`` take the values of :class:`OperationKind` and :class:`OperationState`
    (plugin/domain/states.py, which also holds the transitions between states).
    """

    __tablename__ = "operations"
    __table_args__ = (one_of("kind", OperationKind), one_of("state", OperationState))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    saleor_api_url: Mapped[str] = mapped_column(
        String(512), ForeignKey("installations.saleor_api_url", ondelete="CASCADE"), index=True
    )
    order_id: Mapped[str] = mapped_column(String(255), index=True)
    klarna_order_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))  # OperationKind
    reference: Mapped[str] = mapped_column(String(255))
    amount: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # OperationState
    request_body: Mapped[str | None] = mapped_column(Text, default=None)
    klarna_resource_id: Mapped[str | None] = mapped_column(String(255), default=None)
    error_code: Mapped[str | None] = mapped_column(String(128), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    correlation_id: Mapped[str | None] = mapped_column(String(255), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # calls sent to Klarna
    # JSON list of redacted exchanges: the first 20 calls (appended in SQL, not re-read on the hot path)
    log: Mapped[str] = mapped_column(Text, default="[]")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Note(Base):
    """An order note to write to Saleor (an outbox: queued with the outcome it tells, written once,
    retried on its own). ``state`` takes the values of :class:`NoteState`."""

    __tablename__ = "notes"
    __table_args__ = (one_of("state", NoteState),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    saleor_api_url: Mapped[str] = mapped_column(
        String(512), ForeignKey("installations.saleor_api_url", ondelete="CASCADE")
    )
    order_id: Mapped[str] = mapped_column(String(255), index=True)
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    message: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # NoteState
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # failed deliveries
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProcessException(Base):
    """A failure an admin must see: retry or dismiss; it resolves itself when a later sync does
    what it is about. ``state`` takes the values of :class:`ExceptionState`."""

    __tablename__ = "process_exceptions"
    __table_args__ = (one_of("state", ExceptionState),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    saleor_api_url: Mapped[str] = mapped_column(
        String(512), ForeignKey("installations.saleor_api_url", ondelete="CASCADE"), index=True
    )
    order_id: Mapped[str] = mapped_column(String(255), index=True)
    operation_id: Mapped[int | None] = mapped_column(ForeignKey("operations.id", ondelete="SET NULL"), default=None)
    error_code: Mapped[str | None] = mapped_column(String(128), default=None)
    message: Mapped[str] = mapped_column(Text)
    correlation_id: Mapped[str | None] = mapped_column(String(255), default=None)
    log: Mapped[str] = mapped_column(Text, default="[]")
    state: Mapped[str] = mapped_column(String(16), default="open")  # ExceptionState
    # What it is about, so a later sync can resolve it: "op:<operation id>", "blocked:<code>:<reference>",
    # "sync", "config", "read". NULL on rows from before 0002 that are not about an operation.
    subject: Mapped[str | None] = mapped_column(String(255), default=None)
    reopened: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # retries blocked again
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)


class PendingSettings(Base):
    """Settings imported before their Saleor installed the app; applied, then deleted, when it installs."""

    __tablename__ = "pending_settings"
    __table_args__ = (UniqueConstraint("saleor_api_url", "channel_slug"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    saleor_api_url: Mapped[str] = mapped_column(String(512))  # no foreign key: the installation does not exist yet
    channel_slug: Mapped[str] = mapped_column(String(255))
    document_encrypted: Mapped[str] = mapped_column(Text)  # the channel's import document, password included
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PaymentRequest(Base):
    """A dashboard button (TRANSACTION_*_REQUESTED), recorded before the answer; a worker performs it.

    ``request_key`` identifies the request across identical deliveries (Saleor's *_REQUEST event id,
    else a digest of the body); ``psp_reference`` is what the app answered and reports with.
    """

    __tablename__ = "payment_requests"
    __table_args__ = (UniqueConstraint("request_key", "saleor_api_url"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    saleor_api_url: Mapped[str] = mapped_column(
        String(512), ForeignKey("installations.saleor_api_url", ondelete="CASCADE")
    )
    request_key: Mapped[str] = mapped_column(String(255))
    order_id: Mapped[str] = mapped_column(String(255), index=True)
    transaction_id: Mapped[str] = mapped_column(String(255))
    klarna_order_id: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(16))  # ActionKind: CHARGE, REFUND, CANCEL
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    psp_reference: Mapped[str] = mapped_column(String(64), unique=True)
    details: Mapped[str] = mapped_column(Text, default="{}")  # JSON: granted refund lines, shipping
    state: Mapped[str] = mapped_column(String(16), default="recorded")  # RequestState
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    # The Klarna reference of the operation made for it when not the pspReference (a shipment's id).
    klarna_reference: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class KlarnaBinding(Base):
    """One Klarna order <-> one Saleor order per installation: a second order naming it is refused."""

    __tablename__ = "klarna_bindings"
    __table_args__ = (
        UniqueConstraint("klarna_order_id", "saleor_api_url"),
        UniqueConstraint("order_id", "saleor_api_url"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    saleor_api_url: Mapped[str] = mapped_column(
        String(512), ForeignKey("installations.saleor_api_url", ondelete="CASCADE")
    )
    klarna_order_id: Mapped[str] = mapped_column(String(255))
    order_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class KlarnaRateBucket(Base):
    """The token bucket of one Klarna merchant's request rate, shared by every worker process.

    ``tokens`` may go below zero: a process that takes tokens past the balance waits until they
    mature (``-tokens / rate`` seconds). ``updated_at`` is Unix time in seconds (plugin/klarna/ratelimit.py).
    """

    __tablename__ = "klarna_rate_buckets"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of Klarna base URL + username
    tokens: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
