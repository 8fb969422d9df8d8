"""The heartbeat sweep: devices silent past their keepalive deadline go offline."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from fleet_server.db.models import Device
from fleet_server.domain.presence import PresenceReason


def sweep_presence(
    session: Session, *, now: float, default_keepalive_s: float, factor: float
) -> list[str]:
    """Mark offline (reason ``timeout``) every online device whose last message is older
    than ``factor`` x its keepalive (or the default); return their device ids.

    With the broker's last will covering a cut link at 1.5x keepalive, the sweep is the
    backstop when the will is lost (broker restart without persistence, ingest down).
    """
    deadline = now - factor * func.coalesce(Device.keepalive_s, default_keepalive_s)
    stale = (
        Device.presence == "online",
        Device.last_seen.is_not(None),
        Device.last_seen < deadline,
    )
    ids = list(session.execute(select(Device.device_id).where(*stale)).scalars())
    if ids:
        session.execute(
            update(Device)
            .where(*stale)
            .values(
                presence="offline",
                presence_reason=PresenceReason.TIMEOUT.value,
                presence_changed_at=now,
            )
        )
    return ids


def presence_counts(session: Session) -> dict[str, int]:
    """Active devices per presence state (``online``, ``offline``, ``unknown``)."""
    rows = session.execute(
        select(Device.presence, func.count())
        .where(Device.status != "decommissioned")
        .group_by(Device.presence)
    ).all()
    counts = {"online": 0, "offline": 0, "unknown": 0}
    counts.update({state: int(n) for state, n in rows})
    return counts
