"""Alarms from fault events, and the fleet views over them."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, func, select, update
from sqlalchemy.orm import Session, sessionmaker

import protocol as p
from fleet_server.db.models import Alarm, Device
from fleet_server.domain.alarms import AlarmState, more_severe
from fleet_server.domain.webhooks import EventType
from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError
from fleet_server.services import audit, webhooks
from fleet_server.services.audit import Actor
from fleet_server.services.paging import Page, PageParams, fetch_page
from fleet_server.services.presence import presence_counts

RATE_LIMITED = "ingest_rate_limited"
"""Code of the warning alarm the ingest opens on a device that sends over its budget."""

GROUPABLE = ("model", "hw_revision", "batch", "software_version", "region")
"""Device fields the fault-rate view can group by."""


def apply_fault_events(
    session: Session,
    faults: list[tuple[int, str | None, p.FaultRaised | p.FaultCleared]],
    now: float | None = None,
) -> None:
    """Open, update or close alarms for ``(device_key, software_version, event)`` items,
    in order, keeping the devices' ``open_faults`` counts in step. A new alarm queues the
    ``alarm.raised`` webhook (at ``now``, the server's time; default: the clock).

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
            _notify_raised(session, alarm, time.time() if now is None else now)
        elif current is not None:
            current.state = AlarmState.CLEARED.value
            current.cleared_at = msg.ts
            del open_alarms[(device_key, msg.code)]
            session.flush()
            _bump_open(session, device_key, -1)


def record_throttled(
    session: Session, excess: Mapping[str, tuple[int, int]], now: float, limit: str
) -> None:
    """Open or bump the warning alarm ``ingest_rate_limited`` of each device in
    ``excess`` (``device_id -> (messages, bytes)`` acked over budget and not stored);
    ``value`` totals the messages, ``limit`` says what the budget is. Unknown devices are
    skipped (the metric still counts them). The caller commits."""
    if not excess:
        return
    keys = dict(
        session.execute(
            select(Device.device_id, Device.id).where(Device.device_id.in_(set(excess)))
        ).all()
    )
    open_alarms = {
        a.device_key: a
        for a in session.execute(
            select(Alarm).where(
                Alarm.state == AlarmState.OPEN.value,
                Alarm.code == RATE_LIMITED,
                Alarm.device_key.in_(set(keys.values())),
            )
        ).scalars()
    }
    for device_id, (messages, nbytes) in sorted(excess.items()):
        key = keys.get(device_id)
        if key is None:
            continue
        alarm = open_alarms.get(key) or _open_warning(session, key, RATE_LIMITED, now)
        alarm.occurrences += 1 if messages else 0
        alarm.value = (alarm.value or 0.0) + messages
        alarm.message = (
            f"{int(alarm.value)} messages over the ingest budget ({limit}) were acknowledged "
            f"and not stored (last report: {messages} messages, {nbytes} bytes)"
        )


def close_throttled(session: Session, device_ids: list[str], now: float) -> int:
    """Close the ``ingest_rate_limited`` alarms of devices quiet again; returns how many.
    The caller commits."""
    if not device_ids:
        return 0
    rows = session.execute(
        select(Alarm)
        .join(Device, Device.id == Alarm.device_key)
        .where(
            Alarm.state == AlarmState.OPEN.value,
            Alarm.code == RATE_LIMITED,
            Device.device_id.in_(device_ids),
        )
    ).scalars()
    closed = 0
    for alarm in rows:
        alarm.state = AlarmState.CLEARED.value
        alarm.cleared_at = now
        session.flush()
        _bump_open(session, alarm.device_key, -1)
        closed += 1
    return closed


def apply_throttle_reports(
    sessions: sessionmaker[Session],
    excess: Mapping[str, tuple[int, int]],
    quiet: list[str],
    now: float,
    limit: str,
) -> None:
    """:func:`record_throttled` and :func:`close_throttled` in one transaction."""
    if not excess and not quiet:
        return
    with sessions() as session, session.begin():
        record_throttled(session, excess, now, limit)
        close_throttled(session, quiet, now)


def throttled_devices(session: Session) -> list[str]:
    """Devices with an open ``ingest_rate_limited`` alarm (the ingest watches them at start)."""
    return list(
        session.execute(
            select(Device.device_id)
            .join(Alarm, Alarm.device_key == Device.id)
            .where(Alarm.state == AlarmState.OPEN.value, Alarm.code == RATE_LIMITED)
        ).scalars()
    )


def set_condition(
    session: Session,
    device_key: int,
    code: str,
    *,
    active: bool,
    now: float,
    message: str,
    value: float,
) -> None:
    """Open (or refresh) the server-raised warning alarm ``code`` of one device while the
    condition is ``active``; clear it when it no longer is. The caller commits."""
    alarm = session.execute(
        select(Alarm).where(
            Alarm.state == AlarmState.OPEN.value,
            Alarm.code == code,
            Alarm.device_key == device_key,
        )
    ).scalar_one_or_none()
    if not active:
        if alarm is not None:
            alarm.state, alarm.cleared_at = AlarmState.CLEARED.value, now
            session.flush()
            _bump_open(session, device_key, -1)
        return
    if alarm is None:
        alarm = _open_warning(session, device_key, code, now)
        alarm.occurrences, alarm.value, alarm.message = 1, value, message
        _notify_raised(session, alarm, now)
    alarm.value, alarm.message = value, message


def _open_warning(session: Session, device_key: int, code: str, now: float) -> Alarm:
    """A new open warning alarm raised by the server (not by a device fault event)."""
    alarm = Alarm(
        device_key=device_key,
        code=code,
        severity=p.Severity.WARNING.value,
        state=AlarmState.OPEN.value,
        raised_at=now,
        raised_seq=0,
        raised_boot_id="",
        value=0.0,
        occurrences=0,
    )
    session.add(alarm)
    session.flush()
    _bump_open(session, device_key, +1)
    return alarm


def _notify_raised(session: Session, alarm: Alarm, now: float) -> None:
    device_id = session.execute(
        select(Device.device_id).where(Device.id == alarm.device_key)
    ).scalar_one()
    webhooks.notify(session, EventType.ALARM_RAISED, alarm_view(alarm, device_id), now=now)


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
        raise InvalidInputError(
            "validation_error", f"by: must be one of {', '.join(GROUPABLE)}", {"by": by}
        )
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


def alarm_view(a: Alarm, device_id: str) -> dict[str, Any]:
    """An alarm as the API shows it."""
    return {
        "id": a.id,
        "device_id": device_id,
        "code": a.code,
        "severity": a.severity,
        "state": a.state,
        "raised_at": a.raised_at,
        "cleared_at": a.cleared_at,
        "acked_at": a.acked_at,
        "acked_by": a.acked_by,
        "value": a.value,
        "threshold": a.threshold,
        "message": a.message,
        "occurrences": a.occurrences,
        "software_version": a.software_version,
    }


@dataclass(frozen=True)
class AlarmFilter:
    """Which alarms to list: ``state`` ``open`` (default), ``cleared`` or ``all``; None
    fields do not filter."""

    state: str | None = "open"
    severity: str | None = None
    code: str | None = None
    device_id: str | None = None
    acked: bool | None = None


def list_alarms(session: Session, filt: AlarmFilter, params: PageParams) -> Page[dict[str, Any]]:
    """One page of alarms matching ``filt``, newest first, as :func:`alarm_view` shows them."""
    query = (
        select(Alarm, Device.device_id)
        .join(Device, Device.id == Alarm.device_key)
        .order_by(Alarm.raised_at.desc(), Alarm.id.desc())
    )
    if filt.state and filt.state != "all":
        query = query.where(Alarm.state == filt.state)
    if filt.severity:
        query = query.where(Alarm.severity == filt.severity)
    if filt.code:
        query = query.where(Alarm.code == filt.code)
    if filt.device_id:
        query = query.where(Device.device_id == filt.device_id)
    if filt.acked is not None:
        query = query.where(Alarm.acked_at.is_not(None) if filt.acked else Alarm.acked_at.is_(None))
    return fetch_page(session, query, params).map(lambda row: alarm_view(row[0], row[1]))


def device_alarms(session: Session, device: Device, params: PageParams) -> Page[dict[str, Any]]:
    """One page of a device's open and cleared alarms, newest first."""
    query = select(Alarm).where(Alarm.device_key == device.id).order_by(Alarm.raised_at.desc())
    page = fetch_page(session, query, params, scalars=True)
    return page.map(lambda a: alarm_view(a, device.device_id))


def acknowledge(
    session: Session, alarm_id: int, *, actor: Actor, now: float, request_id: str | None = None
) -> dict[str, Any]:
    """Record who acknowledged alarm ``alarm_id`` (it stays open until the device clears
    it), audit and commit; return its view. 404 when unknown, 409 when already acked."""
    row = session.execute(
        select(Alarm, Device.device_id)
        .join(Device, Device.id == Alarm.device_key)
        .where(Alarm.id == alarm_id)
    ).first()
    if row is None:
        raise NotFoundError("not_found", f"alarm {alarm_id} does not exist")
    alarm, device_id = row
    if alarm.acked_at is not None:
        raise ConflictError("conflict", f"alarm {alarm_id} was already acknowledged")
    before = alarm_view(alarm, device_id)
    alarm.acked_at = now
    alarm.acked_by = actor.label
    after = alarm_view(alarm, device_id)
    audit.record(
        session,
        actor,
        "alarm.ack",
        "alarm",
        str(alarm_id),
        now=now,
        before=before,
        after=after,
        request_id=request_id,
    )
    session.commit()
    return after


def open_alarms_by_severity(session: Session) -> dict[str, int]:
    """Open alarms per severity."""
    rows = session.execute(
        select(Alarm.severity, func.count())
        .where(Alarm.state == AlarmState.OPEN.value)
        .group_by(Alarm.severity)
    ).all()
    return {severity: int(n) for severity, n in rows}


def fleet_summary(session: Session) -> dict[str, Any]:
    """Head counts: active and decommissioned devices, devices per presence state, open
    alarms in total and per severity."""

    def devices(where: Any) -> int:
        query = select(func.count()).select_from(Device).where(where)
        return int(session.execute(query).scalar_one())

    by_sev = open_alarms_by_severity(session)
    return {
        "devices": devices(Device.status != "decommissioned"),
        "decommissioned": devices(Device.status == "decommissioned"),
        "presence": presence_counts(session),
        "open_alarms": int(sum(by_sev.values())),
        "open_alarms_by_severity": {k: int(v) for k, v in by_sev.items()},
    }
