"""The worker's hot path on a real database: what one capture costs in transactions and statements."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import event

from tests.functional.shop import Shop


def test_one_capture_takes_five_short_transactions(shop: Shop, capsys: Any) -> None:
    # given a shipped order whose webhooks are recorded, and a worker about to claim it
    shop.install()
    order_id, _kid = shop.order()
    tee, shoe = shop.line_ids(order_id)
    shop.saleor.auto_deliver = False
    shop.saleor.fulfill(order_id, {tee: 2, shoe: 1}, tracking_number="1Z1")
    for delivery in shop.saleor.outbox:
        shop.saleor.deliver(delivery)
    engine = shop.services.db.engine
    counts = {"transactions": 0, "statements": 0}

    def on_commit(_conn: Any) -> None:
        counts["transactions"] += 1

    def on_statement(*_args: Any) -> None:
        counts["statements"] += 1

    event.listen(engine, "commit", on_commit)
    event.listen(engine, "before_cursor_execute", on_statement)
    saleor_before = len(shop.saleor.graphql_requests)
    try:
        # when one worker claims and syncs it
        [job] = shop.worker.claim(1)
        shop.worker.process(job)
    finally:
        event.remove(engine, "commit", on_commit)
        event.remove(engine, "before_cursor_execute", on_statement)
    # then the capture and its note happened, in: the claim; one read of everything the job needs;
    # the ledger row (with the lease) before the call; the outcome with its note; the note's
    # delivery with the job's completion. On PostgreSQL the claim (one statement) and the read run in
    # autocommit (no BEGIN and COMMIT round trips): 3 transactions; SQLite keeps all 5.
    assert shop.performed("captures") == 1 and len(shop.saleor.notes(order_id)) == 1
    assert counts["transactions"] == (3 if shop.services.db.is_postgres else 5), counts
    # claim 1; read 5 (the installation with its channels' settings, operations, the dashboard's
    # requests, notes, exceptions); ledger row 2 and the Klarna binding 2 (first operation only);
    # outcome 3; delivery and completion 2; the Klarna rate limit 5 (a take per call: the read, the
    # capture, the read after it; the bucket created on the first)
    assert counts["statements"] <= 20, counts
    # Saleor: one read (the order with its books), the capture booked on the app's transaction,
    # and one write (the note and the summary metadata).
    operations = [_operation(r["query"]) for r in shop.saleor.graphql_requests[saleor_before:]]
    assert operations == ["KlarnaOmOrderAndBooks", "KlarnaOmReport", "KlarnaOmWrite"], operations
    with capsys.disabled():
        print(f"\n[hot path] one capture: {counts}; Saleor calls {len(operations)}: {operations}")


def _operation(query: str | None) -> str:
    found = re.search(r"(?:query|mutation)\s+(\w+)", query or "")
    return found.group(1) if found else "?"
