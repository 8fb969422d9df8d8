"""A rollout's history: every state change and engine decision is one ``RolloutEvent`` row.

Both the operator actions (:mod:`fleet_server.services.rollouts`) and the engine's store
(:mod:`fleet_server.rollouts.store`) record through here, and every lifecycle move goes
through :func:`move`, which checks it against the transition table.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from fleet_server.db.models import Bundle
from fleet_server.db.rollout_models import Rollout
from fleet_server.domain.webhooks import ROLLOUT_EVENTS
from fleet_server.errors import ConflictError
from fleet_server.rollouts.lifecycle import IllegalTransitionError, RolloutState, transition
from fleet_server.rollouts.lifecycle import RolloutEvent as Event
from fleet_server.services import webhooks
from fleet_server.services.history import rollout_event as record_event

__all__ = ["move", "record_event"]


def move(
    session: Session,
    rollout: Rollout,
    event: Event | str,
    *,
    now: float,
    actor: str,
    message: str = "",
) -> None:
    """Apply a lifecycle event (raises ``illegal_transition``, a conflict) and record it."""
    before = rollout.state
    try:
        after = transition(before, event)
    except (IllegalTransitionError, ValueError) as exc:  # or an unknown state or event
        raise ConflictError("illegal_transition", str(exc)) from None
    rollout.state = after.value
    rollout.updated_at = now
    if after is RolloutState.RUNNING and rollout.started_at is None:
        rollout.started_at = now
    if after.value in ("completed", "cancelled", "rolled_back"):
        rollout.finished_at = now
    record_event(
        session,
        rollout,
        str(Event(event).value),
        now=now,
        actor=actor,
        message=message,
        from_state=before,
        to_state=after.value,
        wave=rollout.current_wave,
    )
    if after.value in ROLLOUT_EVENTS:
        _notify(session, rollout, before, actor=actor, message=message, now=now)


def _notify(
    session: Session, rollout: Rollout, before: str, *, actor: str, message: str, now: float
) -> None:
    """Queue the webhook of a halt, completion or rollback in the move's transaction."""
    bundle = session.get(Bundle, rollout.bundle_id)
    payload = {
        "rollout_id": rollout.id,
        "name": rollout.name,
        "bundle": bundle.name if bundle else None,
        "version": bundle.version if bundle else None,
        "from_state": before,
        "to_state": rollout.state,
        "reason": message or None,
        "halt_stratum": rollout.halt_stratum,
        "halt_class": rollout.halt_class,
        "wave": rollout.current_wave,
        "waves_total": rollout.waves_total,
        "actor": actor,
    }
    webhooks.notify(session, ROLLOUT_EVENTS[rollout.state], payload, now=now)
