"""Alarms from fault events, and the fleet views over them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, func, select, update
from sqlalchemy.orm import Session

import protocol as p
from fleet_server.db.models import Alarm, Device
from fleet_server.domain.alarms import AlarmState, more_severe

GROUPABLE = ("model", "hw_revision", "batch", "software_version", "region")
"""Device fields the fault-rate view can group by."""


def apply_fault_events(
    session: Session, faults: list[tuple[int, str | None, p.FaultRaised | p.FaultCleared]]
) -> None:
    """Open, update or close alarms for ``(device_key, software_version, event)`` items,
    in order, keeping the devices' ``open_faults`` counts in step.

    The batch's open alarms are read in one query, then kept in step as events apply."""
    if not faults:
        return
    open_alarms: dict[tuple[int, str], Alarm] = {
        (a.device_key, a.code): a
        for a in session.execute(
            select(Alarm).where(
                Alarm.state == AlarmState.OPEN.value,
                Alarm.device_key.in_({key for key, _version, _msg in faults}),
            )
        ).scalars()
    }
    for device_key, software_version, msg in faults:
        current = open_alarms.get((device_key, msg.code))
        if isinstance(msg, p.FaultRaised):
            if current is not None:
                current.occurrences += 1
                current.severity = more_severe(current.severity, msg.severity.value)
                current.value = msg.value
                current.threshold = msg.threshold
                current.message = msg.message
                continue
            alarm = Alarm(
                device_key=device_key,
                code=msg.code,
                severity=msg.severity.value,
                state=AlarmState.OPEN.value,
                raised_at=msg.ts,
                raised_seq=msg.seq,
                raised_boot_id=msg.boot_id,
                value=msg.value,
                threshold=msg.threshold,
                message=msg.message,
                occurrences=1,
                software_version=software_version,
            )
            session.add(alarm)
            open_alarms[(device_key, msg.code)] = alarm
            session.flush()
            _bump_open(session, device_key, +1)
        elif current is not None:
            current.state = AlarmState.CLEARED.value
            current.cleared_at = msg.ts
            del open_alarms[(device_key, msg.code)]
            session.flush()
            _bump_open(session, device_key, -1)


def _bump_open(session: Session, device_key: int, delta: int) -> None:
    # SQLite's two-argument max() is PostgreSQL's greatest().
    clamp = func.max if session.get_bind().dialect.name == "sqlite" else func.greatest
    session.execute(
        update(Device)
        .where(Device.id == device_key)
        .values(open_faults=clamp(Device.open_faults + delta, 0))
    )


def fault_rates(session: Session, by: str, since: float | None = None) -> list[dict[str, Any]]:
    """Per value of the device field ``by``: devices, devices with an alarm raised (since
    ``since`` if given), alarms raised, open alarms, and the share of faulty devices.

    For ``software_version`` the alarm side uses the version the device ran when the
    alarm was raised, so a fault is charged to the release that had it.
    """
    if by not in GROUPABLE:
        raise ValueError(f"cannot group by {by!r}; choose one of {', '.join(GROUPABLE)}")
    dev_col = getattr(Device, by)
    totals = dict(
        session.execute(
            select(dev_col, func.count()).where(Device.status != "decommissioned").group_by(dev_col)
        ).all()
    )
    alarm_col = Alarm.software_version if by == "software_version" else dev_col
    q = (
        select(
            alarm_col,
            func.count(func.distinct(Alarm.device_key)),
            func.count(),
            func.sum((Alarm.state == AlarmState.OPEN.value).cast(Integer)),
        )
        .join(Device, Device.id == Alarm.device_key)
        .group_by(alarm_col)
    )
    if since is not None:
        q = q.where(Alarm.raised_at >= since)
    alarm_stats = {row[0]: row[1:] for row in session.execute(q).all()}
    out = []
    for value in sorted(set(totals) | set(alarm_stats), key=lambda v: (v is None, str(v))):
        devices = int(totals.get(value, 0))
        faulty, raised, open_ = alarm_stats.get(value, (0, 0, 0))
        out.append(
            {
                "value": value,
                "devices": devices,
                "faulty_devices": int(faulty),
                "alarms": int(raised),
                "open_alarms": int(open_ or 0),
                "fault_rate": (int(faulty) / devices) if devices else None,
            }
        )
    return out
