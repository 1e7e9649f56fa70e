"""dashboard requests: the Klarna reference of the operation made for one

Revision ID: 0008
Revises: 0007

A charge from the dashboard that asks for exactly the value of the first shipment not yet captured
is captured with that shipment's lines under the shipment's reference; the request keeps that
reference (written with the operation, before Klarna is called) so its outcome is reported under
the request's pspReference. Nullable: the previous release neither reads nor writes it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payment_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("klarna_reference", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payment_requests", schema=None) as batch_op:
        batch_op.drop_column("klarna_reference")
