"""hardening: delivery digests for replay dedupe; received_at indexed for pruning

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 22:30:00

A migration must not break the previous release of the code, which may still be running: the new
column is nullable and the old code never reads it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("digest", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_deliveries_digest"), ["digest"], unique=False)
        batch_op.create_index(batch_op.f("ix_deliveries_received_at"), ["received_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_received_at"))
        batch_op.drop_index(batch_op.f("ix_deliveries_digest"))
        batch_op.drop_column("digest")
