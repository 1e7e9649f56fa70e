"""The ledger's state machine (plugin/domain/states.py) and the per-kind table (plugin/services/kinds.py)."""

from __future__ import annotations

import itertools

import pytest

from plugin.domain.model import KlarnaOrder, KlarnaOrderId, PlannedOperation
from plugin.domain.states import (
    EXCEPTION_TRANSITIONS,
    NOTE_TRANSITIONS,
    OPERATION_TRANSITIONS,
    ExceptionState,
    IllegalTransition,
    NoteState,
    OperationKind,
    OperationState,
    transition,
)
from plugin.services.kinds import KINDS
from plugin.services.sync import idempotency_key

TABLES = [
    (OperationState, OPERATION_TRANSITIONS),
    (NoteState, NOTE_TRANSITIONS),
    (ExceptionState, EXCEPTION_TRANSITIONS),
]


def test_the_stored_values_are_the_ones_the_ledger_has_always_written() -> None:
    assert [k.value for k in OperationKind] == [
        "capture", "refund", "cancel", "release", "extend_authorization", "update_authorization"
    ]  # fmt: skip
    assert [s.value for s in OperationState] == ["pending", "succeeded", "failed", "superseded"]
    assert [s.value for s in NoteState] == ["pending", "written", "skipped"]
    assert [s.value for s in ExceptionState] == ["open", "retried", "dismissed", "resolved"]


@pytest.mark.parametrize(("states", "table"), TABLES, ids=["operation", "note", "exception"])
def test_every_move_is_allowed_exactly_when_the_table_says(states, table) -> None:  # type: ignore[no-untyped-def]  # parametrized enum class and its table
    assert set(table) == set(states)
    for current, new in itertools.product(states, states):
        if new in table[current]:
            assert transition(current, new) is new
        else:
            with pytest.raises(IllegalTransition, match=f"{current.value} -> {new.value}"):
                transition(current, new)


def test_a_succeeded_operation_never_moves_and_a_failed_one_can_be_retried() -> None:
    assert OPERATION_TRANSITIONS[OperationState.SUCCEEDED] == frozenset()
    assert transition(OperationState.FAILED, OperationState.PENDING) is OperationState.PENDING
    assert transition(ExceptionState.RETRIED, ExceptionState.OPEN) is ExceptionState.OPEN


def test_states_of_different_machines_do_not_mix() -> None:
    with pytest.raises(IllegalTransition):
        transition(OperationState.PENDING, NoteState.WRITTEN)  # type: ignore[type-var]  # a deliberately mixed pair: transition must refuse it


def test_every_kind_has_a_row() -> None:
    assert set(KINDS) == set(OperationKind)


def test_an_idempotency_key_derives_as_before_the_enum() -> None:
    # a key stored by the previous release (kinds were plain strings) must derive the same
    op = PlannedOperation(OperationKind.CAPTURE, "RnVsZmlsbG1lbnQ6MQ==", 13000)
    key = idempotency_key("https://shop.example.com/graphql/", "T3JkZXI6MQ==", "kid-1", op, 0)
    # uuid5(KEY_NAMESPACE, "<url>|<order>|kid-1|capture|<reference>|13000|0"), computed from plain strings
    assert key == "c6056d79-c874-53bc-ba7c-8c29123515b7"


def test_klarna_shows_each_kind_done_the_way_the_table_says() -> None:
    from plugin.domain.ledger import LedgerOperation
    from plugin.domain.model import KlarnaCapture

    state = KlarnaOrder(
        KlarnaOrderId("k"), "PART_CAPTURED", "ACCEPTED", "EUR", 100, 40, 0, 60, None,
        captures=(KlarnaCapture("cap-1", "ful-1", 40),),
    )  # fmt: skip

    def op(kind: OperationKind, reference: str = "k") -> LedgerOperation:
        return LedgerOperation(1, kind, reference, 40, "EUR", "k", "key", 0, OperationState.PENDING)

    assert KINDS[OperationKind.CAPTURE].done_in(op(OperationKind.CAPTURE, "ful-1"), state).resource_id == "cap-1"  # type: ignore[union-attr]  # done_in finds the capture here
    assert KINDS[OperationKind.CAPTURE].done_in(op(OperationKind.CAPTURE, "ful-2"), state) is None
    assert KINDS[OperationKind.REFUND].done_in(op(OperationKind.REFUND, "ful-1"), state) is None
    assert KINDS[OperationKind.CANCEL].done_in(op(OperationKind.CANCEL), state) is None
    assert KINDS[OperationKind.RELEASE].done_in(op(OperationKind.RELEASE), state) is None
    released = KlarnaOrder(KlarnaOrderId("k"), "CAPTURED", "ACCEPTED", "EUR", 100, 40, 0, 0, None)
    assert KINDS[OperationKind.RELEASE].done_in(op(OperationKind.RELEASE), released) is not None
