"""The audit log: every mutating operation records who, what, when, before and after."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.models import AuditEntry
from fleet_server.services.paging import Page, PageParams, fetch_page


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


@dataclass(frozen=True)
class AuditFilter:
    """Which entries to read; ``action`` matches a prefix (``device.``), times are epoch
    seconds (``since`` inclusive, ``until`` exclusive). None = any."""

    action: str | None = None
    actor: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    since: float | None = None
    until: float | None = None


def list_entries(session: Session, filt: AuditFilter, params: PageParams) -> Page[AuditEntry]:
    """One page of audit entries matching ``filt``, newest first."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc())
    if filt.action:
        query = query.where(AuditEntry.action.startswith(filt.action, autoescape=True))
    for name in ("actor", "target_type", "target_id"):
        value = getattr(filt, name)
        if value:
            query = query.where(getattr(AuditEntry, name) == value)
    if filt.since is not None:
        query = query.where(AuditEntry.at >= filt.since)
    if filt.until is not None:
        query = query.where(AuditEntry.at < filt.until)
    return fetch_page(session, query, params, scalars=True)


def entry_view(entry: AuditEntry) -> dict[str, Any]:
    """Every column of an audit entry, as the API shows it."""
    return {c.key: getattr(entry, c.key) for c in AuditEntry.__table__.columns}
