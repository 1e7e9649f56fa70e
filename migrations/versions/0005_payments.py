"""payment requests from the dashboard's buttons; one Klarna order per Saleor order

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 22:20:00

Two new tables only: the previous release ignores them.
"""

import sqlalchemy as sa
from alembic import op

import plugin.db.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "payment_requests",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("saleor_api_url", sa.String(length=512), nullable=False),
        sa.Column("request_key", sa.String(length=255), nullable=False),
        sa.Column("order_id", sa.String(length=255), nullable=False),
        sa.Column("transaction_id", sa.String(length=255), nullable=False),
        sa.Column("klarna_order_id", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("psp_reference", sa.String(length=64), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", plugin.db.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", plugin.db.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["saleor_api_url"],
            ["installations.saleor_api_url"],
            name=op.f("fk_payment_requests_saleor_api_url_installations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_requests")),
        sa.UniqueConstraint("psp_reference", name=op.f("uq_payment_requests_psp_reference")),
        sa.UniqueConstraint("request_key", "saleor_api_url", name=op.f("uq_payment_requests_request_key")),
    )
    with op.batch_alter_table("payment_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_payment_requests_order_id"), ["order_id"], unique=False)

    op.create_table(
        "klarna_bindings",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("saleor_api_url", sa.String(length=512), nullable=False),
        sa.Column("klarna_order_id", sa.String(length=255), nullable=False),
        sa.Column("order_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", plugin.db.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["saleor_api_url"],
            ["installations.saleor_api_url"],
            name=op.f("fk_klarna_bindings_saleor_api_url_installations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_klarna_bindings")),
        sa.UniqueConstraint("klarna_order_id", "saleor_api_url", name=op.f("uq_klarna_bindings_klarna_order_id")),
        sa.UniqueConstraint("order_id", "saleor_api_url", name=op.f("uq_klarna_bindings_order_id")),
    )


def downgrade() -> None:
    op.drop_table("klarna_bindings")
    with op.batch_alter_table("payment_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payment_requests_order_id"))
    op.drop_table("payment_requests")
