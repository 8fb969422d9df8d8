"""History rows: what happened to an execution, a rollout or a return, written one way.

Every lifecycle keeps an append-only history beside its current state (the audit log
says *who asked*, the history says *what happened*, including what devices reported).
These helpers add one entry to the session without flushing or committing: the service
that moves the state owns the transaction.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.orm import Session

from fleet_server.db.models import Execution, ExecutionEvent
from fleet_server.db.rollout_models import Rollout, RolloutEvent

Row = TypeVar("Row")


def add(session: Session, row: Row) -> Row:
    """Add one history row to the session (not flushed, not committed)."""
    session.add(row)
    return row


def execution_event(
    session: Session,
    execution: Execution,
    state: str,
    *,
    now: float,
    device_ts: float | None = None,
    failure_class: str | None = None,
    reason: str = "",
    attack: str | None = None,
) -> ExecutionEvent:
    """Record a state of ``execution``: reported by the device (with its ``device_ts``)
    or decided by the server (sent, timed out, cancelled...)."""
    return add(
        session,
        ExecutionEvent(
            execution_id=execution.id,
            state=state,
            device_ts=device_ts,
            received_at=now,
            failure_class=failure_class,
            reason=reason,
            attack=attack,
        ),
    )


def rollout_event(
    session: Session,
    rollout: Rollout,
    kind: str,
    *,
    now: float,
    actor: str,
    message: str = "",
    from_state: str | None = None,
    to_state: str | None = None,
    wave: int | None = None,
) -> RolloutEvent:
    """Record what happened to ``rollout`` (a transition, a wave, a halt reason...)."""
    return add(
        session,
        RolloutEvent(
            rollout_id=rollout.id,
            at=now,
            kind=kind,
            from_state=from_state,
            to_state=to_state,
            wave=wave,
            message=message,
            actor=actor,
        ),
    )


def appended(
    history: list[dict[str, Any]], state: str, *, now: float, by: str, note: str = ""
) -> list[dict[str, Any]]:
    """``history`` (a JSON column) with one more ``{state, at, by, note}`` entry; a new
    list, so SQLAlchemy sees the column change."""
    return [*history, {"state": state, "at": now, "by": by, "note": note}]
