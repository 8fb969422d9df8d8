"""The audit log: every mutating operation records who, what, when, before and after."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from fleet_server.db.models import AuditEntry


@dataclass(frozen=True)
class Actor:
    """Who is acting: an API token (name + role), a local CLI user, or a device."""

    name: str
    role: str
    token_id: int | None = None

    @property
    def label(self) -> str:
        """``name (role)`` for people reading the audit log."""
        return f"{self.name} ({self.role})"


SYSTEM = Actor("fleet-server", "system")
"""The server itself (jobs, ``fleet-server`` commands run locally)."""


def record(
    session: Session,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str | None,
    *,
    now: float,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> AuditEntry:
    """Add an audit row to the caller's transaction (it commits with the change)."""
    entry = AuditEntry(
        at=now,
        actor=actor.name,
        actor_role=actor.role,
        action=action,
        target_type=target_type,
        target_id=target_id,
        before=before,
        after=after,
        request_id=request_id,
    )
    session.add(entry)
    return entry
