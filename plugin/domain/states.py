"""The ledger's state machine: operation kinds and the states of operations, notes and exceptions.

Each state enum has an explicit transition table; :func:`transition` is the only way code moves a
row from one state to another, and an illegal move raises :class:`IllegalTransition`. The values
are what the database stores (a CHECK constraint holds the columns to them), and the kind values
enter the idempotency key, so they never change once released.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar


class OperationKind(StrEnum):
    """What the app asks Klarna to do. The value is part of the idempotency key: never rename one."""

    CAPTURE = "capture"
    REFUND = "refund"
    CANCEL = "cancel"
    RELEASE = "release"  # release the remaining authorization after a partial capture
    # The authorization's life (issue 10, plugin/domain/lifecycle.py).
    EXTEND_AUTHORIZATION = "extend_authorization"  # push expires_at out before it lapses
    UPDATE_AUTHORIZATION = "update_authorization"  # new amount and lines after an edit before capture


class OperationState(StrEnum):
    PENDING = "pending"  # in the ledger with its key; sent or about to be, outcome not known yet
    SUCCEEDED = "succeeded"  # Klarna has it (its answer, or its order shows it)
    FAILED = "failed"  # Klarna refused for good (or gave up after the attempt budget); an exception is open
    SUPERSEDED = "superseded"  # never sent and no longer wanted: the order changed first


class NoteState(StrEnum):
    PENDING = "pending"  # queued in the outbox, not yet on the order
    WRITTEN = "written"  # Saleor has it
    SKIPPED = "skipped"  # the channel writes no notes


class ExceptionState(StrEnum):
    OPEN = "open"  # the admin must look at it
    RETRIED = "retried"  # the admin asked for another try; reopens if that is blocked again
    DISMISSED = "dismissed"  # the admin handled it elsewhere
    RESOLVED = "resolved"  # a later sync did what it was about


S = TypeVar("S", OperationState, NoteState, ExceptionState)

OPERATION_TRANSITIONS: Mapping[OperationState, frozenset[OperationState]] = {
    OperationState.PENDING: frozenset({OperationState.SUCCEEDED, OperationState.FAILED, OperationState.SUPERSEDED}),
    # A lost answer counted as a failure: Klarna's order shows the operation after all.
    # A retry from the exceptions list re-sends it under a new key generation.
    OperationState.FAILED: frozenset({OperationState.SUCCEEDED, OperationState.PENDING}),
    # Wanted again before it was ever sent: the same intent keeps its key.
    OperationState.SUPERSEDED: frozenset({OperationState.PENDING}),
    OperationState.SUCCEEDED: frozenset(),
}

NOTE_TRANSITIONS: Mapping[NoteState, frozenset[NoteState]] = {
    NoteState.PENDING: frozenset({NoteState.WRITTEN, NoteState.SKIPPED}),
    NoteState.WRITTEN: frozenset(),
    NoteState.SKIPPED: frozenset(),
}

EXCEPTION_TRANSITIONS: Mapping[ExceptionState, frozenset[ExceptionState]] = {
    ExceptionState.OPEN: frozenset({ExceptionState.RETRIED, ExceptionState.DISMISSED, ExceptionState.RESOLVED}),
    ExceptionState.RETRIED: frozenset({ExceptionState.OPEN, ExceptionState.RESOLVED, ExceptionState.DISMISSED}),
    ExceptionState.DISMISSED: frozenset(),
    ExceptionState.RESOLVED: frozenset(),
}

_TABLES: Mapping[type, Mapping[object, frozenset[object]]] = {
    OperationState: OPERATION_TRANSITIONS,  # type: ignore[dict-item]  # each table is keyed by its own enum
    NoteState: NOTE_TRANSITIONS,  # type: ignore[dict-item]  # as above
    ExceptionState: EXCEPTION_TRANSITIONS,  # type: ignore[dict-item]  # as above
}


class IllegalTransition(ValueError):
    """A move the state machine does not allow (a bug, never a merchant's input)."""


def can_transition(current: S, new: S) -> bool:
    return new in _TABLES[type(current)][current]


def transition(current: S, new: S) -> S:
    """``new`` if the table allows ``current -> new``; raises :class:`IllegalTransition` otherwise."""
    if type(current) is not type(new) or not can_transition(current, new):
        raise IllegalTransition(f"{type(current).__name__}: {current.value} -> {new.value} is not allowed")
    return new
