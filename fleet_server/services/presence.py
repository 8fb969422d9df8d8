"""The backstop sweep: devices silent past their silence bound go offline.

Presence comes from the connection (retained ``online``, the broker's last will); the
sweep only catches a will that was lost. See :mod:`fleet_server.domain.presence`.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from fleet_server.db.models import Device
from fleet_server.domain.presence import Defaults, PresenceReason, is_timed_out, silence_bound


def sweep_presence(
    session: Session,
    *,
    now: float,
    default_keepalive_s: float,
    factor: float,
    default_interval_s: float | None = None,
) -> list[str]:
    """Mark offline (reason ``timeout``) every online device whose last message is older
    than ``factor`` x its silence bound (the longer of its keepalive and the publish
    interval it announced, or the defaults); return their device ids.

    With the broker's last will covering a cut link at 1.5x keepalive, the sweep is the
    backstop when the will is lost (broker restart without persistence, ingest down).
    """
    defaults = Defaults(default_keepalive_s, default_interval_s or default_keepalive_s)
    # Every bound is at least the keepalive: a cheap SQL pre-filter, then the exact rule.
    floor = now - factor * func.coalesce(Device.keepalive_s, default_keepalive_s)
    rows = session.execute(
        select(Device.id, Device.device_id, Device.last_seen, Device.keepalive_s, Device.interval_s)
        .where(Device.presence == "online", Device.last_seen.is_not(None), Device.last_seen < floor)
        .with_for_update(skip_locked=True)
    ).all()
    stale = [
        r
        for r in rows
        if is_timed_out(
            r.last_seen, silence_bound(r.keepalive_s, r.interval_s, defaults), factor, now
        )
    ]
    if stale:
        session.execute(
            update(Device)
            .where(Device.id.in_([r.id for r in stale]), Device.presence == "online")
            .values(
                presence="offline",
                presence_reason=PresenceReason.TIMEOUT.value,
                presence_changed_at=now,
            )
        )
    return [r.device_id for r in stale]


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
