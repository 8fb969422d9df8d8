"""Lifecycles as data: the generic state machine and every table built on it."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_server.domain.lifecycles import (
    CAMPAIGN,
    CLAIM,
    EXECUTION,
    PART_STOCK,
    RECALL_DEVICE,
    RMA,
    IllegalTransitionError,
    StateMachine,
)
from fleet_server.errors import ConflictError
from fleet_server.rollouts import lifecycle as rollout


class Door(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    LOCKED = "locked"
    GONE = "gone"


class Act(StrEnum):
    CLOSE = "close"
    OPEN = "open"
    LOCK = "lock"
    UNLOCK = "unlock"
    BURN = "burn"


DOOR: StateMachine[Door, Act] = StateMachine(
    "door",
    Door,
    Act,
    Door.CLOSED,
    {
        (Door.OPEN, Act.CLOSE): Door.CLOSED,
        (Door.CLOSED, Act.OPEN): Door.OPEN,
        (Door.CLOSED, Act.LOCK): Door.LOCKED,
        (Door.CLOSED, Act.BURN): Door.GONE,
        (Door.LOCKED, Act.UNLOCK): Door.CLOSED,
        (Door.LOCKED, Act.BURN): Door.GONE,
    },
)

MACHINES: list[StateMachine[Any, Any]] = [
    CAMPAIGN,
    RECALL_DEVICE,
    CLAIM,
    RMA,
    PART_STOCK,
    EXECUTION,
]
IDS = [m.name for m in MACHINES]


def _every_pair(machine: StateMachine[Any, Any]) -> list[tuple[Any, Any]]:
    return [(s, e) for s in machine.states for e in machine.events]


@pytest.mark.parametrize("machine", [DOOR, *MACHINES], ids=["door", *IDS])
def test_every_table_entry_is_legal_and_everything_else_names_the_allowed_events(
    machine: StateMachine[Any, Any],
) -> None:
    for state, event in _every_pair(machine):
        if (state, event) in machine.transitions:
            assert machine.apply(state, event) == machine.transitions[(state, event)]
            assert machine.apply(state.value, event.value) == machine.transitions[(state, event)]
            continue
        allowed = tuple(e for (s, e) in machine.transitions if s == state)
        with pytest.raises(IllegalTransitionError) as err:
            machine.apply(state, event)
        refusal = err.value
        assert isinstance(refusal, ConflictError)
        assert (refusal.status, refusal.code) == (409, "conflict")
        assert refusal.allowed == allowed
        assert refusal.details == {
            "current": state.value,
            "wanted": event.value,
            "allowed": [e.value for e in allowed],
        }
        if allowed:
            assert f"allowed: {', '.join(sorted(allowed))}" in refusal.message
        else:
            assert f"{state.value} is final" in refusal.message


@pytest.mark.parametrize("machine", [DOOR, *MACHINES], ids=["door", *IDS])
def test_moving_to_a_named_state_finds_the_event_or_names_the_next_states(
    machine: StateMachine[Any, Any],
) -> None:
    for state in machine.states:
        targets = {t for (s, _e), t in machine.transitions.items() if s == state}
        for wanted in [*machine.states, "bogus"]:
            if wanted in targets:
                assert machine.move_to(state, wanted) == wanted
                continue
            with pytest.raises(IllegalTransitionError) as err:
                machine.move_to(state, wanted)
            assert err.value.allowed == machine.next_states(state)
            assert err.value.details["allowed"] == [s.value for s in machine.next_states(state)]
            assert err.value.details["wanted"] == str(wanted)


def test_unknown_events_are_refused_and_unknown_states_are_bugs() -> None:
    with pytest.raises(IllegalTransitionError, match="allowed: burn, lock, open"):
        DOOR.apply(Door.CLOSED, "fly")
    with pytest.raises(ValueError, match="door: unknown state 'ajar'"):
        DOOR.apply("ajar", Act.OPEN)


def test_terminal_states_and_queries() -> None:
    assert DOOR.terminal == {Door.GONE}
    assert DOOR.allowed_events(Door.LOCKED) == (Act.UNLOCK, Act.BURN)
    assert DOOR.next_states(Door.CLOSED) == (Door.OPEN, Door.LOCKED, Door.GONE)
    assert DOOR.is_final(Door.GONE)
    assert not DOOR.is_final("open")
    assert EXECUTION.terminal == {"committed", "failed", "cancelled"}
    assert RMA.terminal == {"refurbished", "scrapped", "rejected"}
    assert CAMPAIGN.terminal == {"closed", "cancelled"}


@pytest.mark.parametrize("machine", MACHINES, ids=IDS)
@given(data=st.data())
def test_random_event_sequences_stay_inside_the_table(
    machine: StateMachine[Any, Any], data: st.DataObject
) -> None:
    reachable = {machine.initial} | set(machine.transitions.values())
    state = machine.initial
    events = data.draw(st.lists(st.sampled_from(list(machine.events)), max_size=30))
    for event in events:
        try:
            after = machine.apply(state, event)
        except IllegalTransitionError as err:
            assert event not in err.allowed
            continue
        assert (state, event) in machine.transitions
        assert after in reachable
        state = after
    if machine.is_final(state):
        for event in machine.events:
            with pytest.raises(IllegalTransitionError):
                machine.apply(state, event)


def test_rollout_table_adopts_the_generic_machine_unchanged() -> None:
    """The rollout lifecycle can be expressed with the generic machine with no change in
    outcome or message."""
    machine = StateMachine(
        "rollout",
        rollout.RolloutState,
        rollout.RolloutEvent,
        rollout.RolloutState.DRAFT,
        rollout.TRANSITIONS,
    )
    for state in rollout.RolloutState:
        for event in rollout.RolloutEvent:
            try:
                expected = rollout.transition(state, event)
            except rollout.IllegalTransitionError as old:
                with pytest.raises(IllegalTransitionError) as new:
                    machine.apply(state, event)
                assert str(new.value) == str(old)
                continue
            assert machine.apply(state, event) == expected
    assert machine.terminal == {rollout.RolloutState.CANCELLED, rollout.RolloutState.ROLLED_BACK}
