"""the authorization's life: operations may extend or update the authorization

Revision ID: 0007
Revises: 0006

A migration must not break the previous release of the code, which may still be running: the
widened constraint allows every kind that release writes.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

OLD_KINDS = ("capture", "refund", "cancel", "release")
NEW_KINDS = (*OLD_KINDS, "extend_authorization", "update_authorization")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _kinds(values: tuple[str, ...]) -> None:
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_operations_kind"), type_="check")
        batch_op.create_check_constraint(op.f("ck_operations_kind"), _in("kind", values))


def upgrade() -> None:
    _kinds(NEW_KINDS)


def downgrade() -> None:
    # Fails while the ledger holds rows of the new kinds: they are history, never deleted here.
    _kinds(OLD_KINDS)
