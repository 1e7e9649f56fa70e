"""pending settings: imported before the Saleor installs the app

Revision ID: 0006
Revises: 0005

A migration must not break the previous release of the code, which may still be running: this one
only adds a table.
"""

import sqlalchemy as sa
from alembic import op

import plugin.db.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("saleor_api_url", sa.String(length=512), nullable=False),
        sa.Column("channel_slug", sa.String(length=255), nullable=False),
        sa.Column("document_encrypted", sa.Text(), nullable=False),
        sa.Column("created_at", plugin.db.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_settings")),
        sa.UniqueConstraint("saleor_api_url", "channel_slug", name=op.f("uq_pending_settings_saleor_api_url")),
    )


def downgrade() -> None:
    op.drop_table("pending_settings")
