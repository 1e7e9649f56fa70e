"""Migration 0002: the database holds the ledger's kind and state columns to the domain's enums."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from plugin.db import Database

INSTALL = (
    "INSERT INTO installations (saleor_api_url, app_id, token_encrypted, jwks, installed_at)"
    " VALUES ('u', 'a', 't', 'j', CURRENT_TIMESTAMP)"
)
OPERATION = (
    "INSERT INTO operations (saleor_api_url, order_id, klarna_order_id, kind, reference, amount, currency,"
    " idempotency_key, generation, state, attempts, log, created_at, updated_at)"
    " VALUES ('u', 'o', 'k', :kind, 'r', 1, 'EUR', :key, 0, :state, 0, '[]', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
)
NOTE = (
    "INSERT INTO notes (saleor_api_url, order_id, dedupe_key, message, state, attempts, created_at)"
    " VALUES ('u', 'o', :key, 'm', :state, 0, CURRENT_TIMESTAMP)"
)
EXCEPTION = (
    "INSERT INTO process_exceptions (saleor_api_url, order_id, message, log, state, reopened, created_at)"
    " VALUES ('u', 'o', 'm', '[]', :state, 0, CURRENT_TIMESTAMP)"
)

CASES = [
    ("operation-kind", OPERATION, {"kind": "refund_all", "key": "k1", "state": "pending"}),
    ("operation-state", OPERATION, {"kind": "capture", "key": "k2", "state": "skipped"}),
    ("note-state", NOTE, {"key": "n1", "state": "failed"}),
    ("exception-state", EXCEPTION, {"state": "closed"}),
]


@pytest.mark.parametrize(("case", "statement", "params"), CASES, ids=[c[0] for c in CASES])
def test_a_value_outside_the_enum_is_refused(database_url: str, case: str, statement: str, params: dict) -> None:  # type: ignore[type-arg]  # SQL parameters from the parametrize table
    db = Database(database_url)
    try:
        with db.engine.begin() as conn:
            conn.execute(text(INSTALL))
        with pytest.raises(IntegrityError), db.engine.begin() as conn:
            conn.execute(text(statement), params)
        # and the enum's own values go in
        good = {**params, "state": "open" if case == "exception-state" else "pending"}
        good |= {"kind": "capture"} if "kind" in params else {}
        with db.engine.begin() as conn:
            conn.execute(text(statement), good)
    finally:
        db.dispose()
