"""The authorization's life in the sync (issue 10): what :mod:`plugin.services.sync` asks of it.

Pure helpers over the ledger and the planner's :class:`~plugin.domain.lifecycle.LifePlan`, so the
run in ``sync.py`` keeps one call per step:

* :func:`app_history` -- what the ledger says the app did, as :func:`plan_life` wants it;
* :func:`seen_notes` -- each "seen in Klarna" fact as a note queued once (its key);
* :data:`BLOCKED_VERB`, :data:`QUIET_BLOCKS`, :func:`blocked_note_key` -- how a block is told;
* :data:`REPLANNED_ON_REFUSAL` -- kinds whose final refusal the next plan reports (no exception of its own);
* :func:`check_in` -- when the order is due again (the job's delayed run), from :func:`next_check_at`;
* :func:`extension_note` -- the extension's note with the expiry Klarna shows afterwards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime

from plugin.domain.ledger import LedgerOperation, NoteDraft
from plugin.domain.lifecycle import AppHistory, SeenInKlarna, next_check_at
from plugin.domain.model import Blocked, KlarnaOrder, Options, ShopOrder
from plugin.domain.states import OperationKind, OperationState

__all__ = [
    "BLOCKED_VERB",
    "QUIET_BLOCKS",
    "REPLANNED_ON_REFUSAL",
    "app_history",
    "blocked_note_key",
    "check_in",
    "extension_note",
    "seen_notes",
]

# The verb of a block's note ("Klarna: not <verb>: ..."), by code.
BLOCKED_VERB = {
    "AUTHORIZATION_FINAL_EXPIRY": "extended",
    "AUTHORIZATION_EXPIRING": "extended",
    "AUTHORIZATION_UPDATE_REFUSED": "updated",
    "SHIPMENT_CANCELLED": "refunded",
    "DRIFT_CAPTURED": "reconciled",
    "DRIFT_REFUNDED": "reconciled",
}
# Blocks that only wait (a note, no exception): the schedule looks again.
QUIET_BLOCKS = frozenset({"FRAUD_PENDING"})
# A final refusal of these is no exception of its own: the next plan blocks with what to do
# (AUTHORIZATION_UPDATE_REFUSED; AUTHORIZATION_EXPIRED or _FINAL_EXPIRY), so the order runs again at once.
REPLANNED_ON_REFUSAL = frozenset({OperationKind.EXTEND_AUTHORIZATION, OperationKind.UPDATE_AUTHORIZATION})


def app_history(operations: Iterable[LedgerOperation]) -> AppHistory:
    """What the app did to the Klarna order, from its ledger rows (DESIGN: the ledger is the record)."""
    ops = list(operations)

    def succeeded(kind: OperationKind) -> list[LedgerOperation]:
        return [op for op in ops if op.kind is kind and op.state is OperationState.SUCCEEDED]

    return AppHistory(
        capture_ids=frozenset(
            op.klarna_resource_id for op in succeeded(OperationKind.CAPTURE) if op.klarna_resource_id
        ),
        refund_ids=frozenset(op.klarna_resource_id for op in succeeded(OperationKind.REFUND) if op.klarna_resource_id),
        released=bool(succeeded(OperationKind.RELEASE)),
        cancelled=bool(succeeded(OperationKind.CANCEL)),
        updates=len(succeeded(OperationKind.UPDATE_AUTHORIZATION)),
        refused_update_amounts=frozenset(
            op.amount
            for op in ops
            if op.kind is OperationKind.UPDATE_AUTHORIZATION and op.state is OperationState.FAILED
        ),
    )


def seen_notes(seen: Iterable[SeenInKlarna], klarna_order_id: str) -> list[NoteDraft]:
    """One note per fact, ever: the fact's key (per capture, refund, release, cancel) is its dedupe."""
    return [NoteDraft(f"{fact.key}:{klarna_order_id}", fact.message) for fact in seen]


def blocked_note_key(blocked: Blocked, klarna_order_id: str) -> str:
    """Once per (code, reference, message): a block that says something new is told again."""
    key = f"blocked:{blocked.code}:{blocked.reference}:{klarna_order_id}"
    if blocked.code not in BLOCKED_VERB:
        return key  # the planner's own blocks keep the keys they always had
    return f"{key}:{hashlib.sha256(blocked.message.encode()).hexdigest()[:12]}"


def check_in(order: ShopOrder, klarna: KlarnaOrder, options: Options, now: datetime) -> float | None:
    """Seconds until the order's next scheduled check; None when nothing is authorized any more."""
    due = next_check_at(order, klarna, options, now)
    return None if due is None else max((due - now).total_seconds(), 0.0)


def extension_note(klarna: KlarnaOrder) -> str:
    if klarna.expires_at is None:
        return "Klarna: authorization extended."
    return f"Klarna: authorization extended; it now expires on {klarna.expires_at:%Y-%m-%d %H:%M} UTC."
