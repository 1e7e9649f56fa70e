"""the ledger's state machine: CHECK constraints on kinds and states; exception subjects

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 22:30:00

A migration must not break the previous release of the code, which may still be running: the
constraints allow every value that release writes, and the new columns are nullable or defaulted.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OPERATION_KINDS = ("capture", "refund", "cancel", "release")
OPERATION_STATES = ("pending", "succeeded", "failed", "superseded")
NOTE_STATES = ("pending", "written", "skipped")
EXCEPTION_STATES = ("open", "retried", "dismissed", "resolved")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.create_check_constraint(op.f("ck_operations_kind"), _in("kind", OPERATION_KINDS))
        batch_op.create_check_constraint(op.f("ck_operations_state"), _in("state", OPERATION_STATES))
    with op.batch_alter_table("notes", schema=None) as batch_op:
        batch_op.create_check_constraint(op.f("ck_notes_state"), _in("state", NOTE_STATES))
    with op.batch_alter_table("process_exceptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("reopened", sa.Integer(), server_default="0", nullable=False))
        batch_op.create_check_constraint(op.f("ck_process_exceptions_state"), _in("state", EXCEPTION_STATES))
    # What existing exceptions are about, where that can be told.
    op.execute(
        "UPDATE process_exceptions SET subject = 'op:' || CAST(operation_id AS VARCHAR(20))"
        " WHERE operation_id IS NOT NULL"
    )
    op.execute("UPDATE process_exceptions SET subject = 'sync' WHERE subject IS NULL AND error_code = 'SYNC_FAILED'")
    op.execute(
        "UPDATE process_exceptions SET subject = 'config' WHERE subject IS NULL AND error_code = 'NOT_CONFIGURED'"
    )


def downgrade() -> None:
    with op.batch_alter_table("process_exceptions", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_process_exceptions_state"), type_="check")
        batch_op.drop_column("reopened")
        batch_op.drop_column("subject")
    with op.batch_alter_table("notes", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_notes_state"), type_="check")
    with op.batch_alter_table("operations", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_operations_state"), type_="check")
        batch_op.drop_constraint(op.f("ck_operations_kind"), type_="check")
