"""Tables. One module so Alembic's autogenerate sees everything through ``Base.metadata``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(DateTime):
    """Aware datetimes in, aware datetimes out, on SQLite too."""

    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


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
    """The ledger: one Klarna operation, written with its idempotency key before the call."""

    __tablename__ = "operations"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    saleor_api_url: Mapped[str] = mapped_column(
        String(512), ForeignKey("installations.saleor_api_url", ondelete="CASCADE"), index=True
    )
    order_id: Mapped[str] = mapped_column(String(255), index=True)
    klarna_order_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))  # capture, refund, cancel, release
    reference: Mapped[str] = mapped_column(String(255))
    amount: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3))
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending, succeeded, failed
    request_body: Mapped[str | None] = mapped_column(Text, default=None)
    klarna_resource_id: Mapped[str | None] = mapped_column(String(255), default=None)
    error_code: Mapped[str | None] = mapped_column(String(128), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    correlation_id: Mapped[str | None] = mapped_column(String(255), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    log: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of redacted exchanges
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Note(Base):
    """An order note to write to Saleor (an outbox: written once, retried on its own)."""

    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    saleor_api_url: Mapped[str] = mapped_column(
        String(512), ForeignKey("installations.saleor_api_url", ondelete="CASCADE")
    )
    order_id: Mapped[str] = mapped_column(String(255), index=True)
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    message: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending, written, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProcessException(Base):
    """A failure an admin must see: retry or dismiss."""

    __tablename__ = "process_exceptions"

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
    state: Mapped[str] = mapped_column(String(16), default="open")  # open, retried, dismissed
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
