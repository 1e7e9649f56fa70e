"""the Klarna rate limit per merchant, shared by every worker process

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 22:35:00

A new table only: the previous release does not know it and keeps its per-process limiter.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "klarna_rate_buckets",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("tokens", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_klarna_rate_buckets")),
    )


def downgrade() -> None:
    op.drop_table("klarna_rate_buckets")
