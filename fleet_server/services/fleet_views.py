"""Fleet-wide views for people: the overview's counters and charts, sortable device lists.

The console's overview page and ``GET /api/v1/fleet/overview`` both read
:func:`fleet_overview`, so every number on the page is one the API reports. Each count is
computed by one aggregate query (no rows are loaded to be counted in Python), so the page
stays fast at 100,000 devices; each counter names the device-list filter that lists the
devices it counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session, aliased

from fleet_server.db.models import (
    Alarm,
    Device,
    Execution,
    RecallCampaign,
    RecallDevice,
    Rma,
    WarrantyClaim,
)
from fleet_server.db.rollout_models import Rollout
from fleet_server.domain.quarantine import QUARANTINING
from fleet_server.errors import InvalidInputError
from fleet_server.services import alarms, groups
from fleet_server.services.paging import Page, PageParams, fetch_page
from fleet_server.services.registry import DeviceFilter

ACTIVE_ROLLOUTS = ("scheduled", "running", "paused", "halted")
SORTABLE = (
    "device_id",
    "model",
    "hw_revision",
    "batch",
    "region",
    "software_version",
    "presence",
    "last_seen",
    "open_faults",
)
DAY_S = 86400.0


def _last_update_failed() -> Any:
    """Device keys whose most recent update execution failed (a subquery)."""
    latest = (
        select(Execution.device_key, func.max(Execution.created_at).label("at"))
        .group_by(Execution.device_key)
        .subquery()
    )
    return (
        select(Execution.device_key)
        .join(
            latest,
            and_(latest.c.device_key == Execution.device_key, latest.c.at == Execution.created_at),
        )
        .where(Execution.status == "failed")
    )


def _quarantined() -> Any:
    """Device keys with a version quarantined on them (a subquery; the rule of
    :func:`fleet_server.domain.quarantine.quarantines`: a failed install, boot or health
    check finished after the operator last cleared the device's quarantine)."""
    d = aliased(Device)
    return (
        select(Execution.device_key)
        .join(d, d.id == Execution.device_key)
        .where(
            Execution.status == "failed",
            Execution.failure_class.in_(QUARANTINING),
            or_(d.quarantine_cleared_at.is_(None), Execution.finished_at > d.quarantine_cleared_at),
        )
    )


def _in_open_recall() -> Any:
    """Device keys in the frozen population of an open recall (a subquery)."""
    return (
        select(RecallDevice.device_key)
        .join(RecallCampaign, RecallCampaign.id == RecallDevice.campaign_id)
        .where(RecallCampaign.state == "open")
    )


def _open_recall_members(session: Session) -> int:
    """Active devices under an open recall: the open campaigns' distinct members less
    the decommissioned ones among them (the status index finds those few), which spares
    PostgreSQL a registry lookup per member (tens of thousands at fleet scale)."""
    members = _in_open_recall().subquery()
    everyone = session.execute(select(func.count(func.distinct(members.c.device_key)))).scalar()
    retired = session.execute(
        select(func.count(func.distinct(Device.id))).where(
            Device.status == "decommissioned", Device.id.in_(_in_open_recall())
        )
    ).scalar()
    return int(everyone or 0) - int(retired or 0)


@dataclass
class DeviceQuery:
    """A device list as people ask for it: registry filters, the problem filters the
    overview links to, and a sort column."""

    filt: DeviceFilter
    last_update_failed: bool = False
    in_open_recall: bool = False
    quarantined: bool = False
    sort: str = "device_id"
    descending: bool = False
    include_decommissioned: bool = False
    """Decommissioned devices are left out (as the overview's counts leave them out)
    unless asked for or a ``status`` filter is set."""

    def statement(self) -> Any:
        """The ``SELECT`` of the matching devices in the asked order."""
        if self.sort not in SORTABLE:
            raise InvalidInputError(
                "validation_error", f"sort: one of {', '.join(SORTABLE)}", {"sort": self.sort}
            )
        query = select(Device).where(*self.filt.clauses())
        if not self.include_decommissioned and self.filt.status is None:
            query = query.where(Device.status != "decommissioned")
        if self.last_update_failed:
            query = query.where(Device.id.in_(_last_update_failed()))
        if self.in_open_recall:
            query = query.where(Device.id.in_(_in_open_recall()))
        if self.quarantined:
            query = query.where(Device.id.in_(_quarantined()))
        column = getattr(Device, self.sort)
        order = column.desc() if self.descending else column.asc()
        return query.order_by(order, Device.device_id)


def device_page(
    session: Session, query: DeviceQuery, params: PageParams, group: str | None = None
) -> Page[Device]:
    """One page of the devices of ``query`` (only members of the saved ``group`` when one
    is named) and their total."""
    statement = query.statement()
    if group:
        statement = groups.narrow_to_group(session, statement, group)
    return fetch_page(session, statement, params, scalars=True)


def _count(session: Session, query: Any) -> int:
    return int(session.execute(select(func.count()).select_from(query.subquery())).scalar_one())


def _month_start(now: float) -> float:
    day = datetime.fromtimestamp(now, UTC)
    return datetime(day.year, day.month, 1, tzinfo=UTC).timestamp()


def open_alarms_by_day(session: Session, now: float, days: int = 7) -> list[list[float]]:
    """``[t, n]``: alarms open at each of the last ``days`` day ends (UTC) and now."""
    today = int(now // DAY_S) * DAY_S
    ends = [today - k * DAY_S for k in range(days - 1, -1, -1)] + [now]
    columns = [
        func.sum(
            case(
                (
                    and_(
                        Alarm.raised_at <= t,
                        or_(Alarm.cleared_at.is_(None), Alarm.cleared_at > t),
                    ),
                    1,
                ),
                else_=0,
            )
        )
        for t in ends
    ]
    row = session.execute(select(*columns).where(Alarm.raised_at <= now)).one()
    return [[t, int(n or 0)] for t, n in zip(ends, row, strict=True)]


def rollout_progress(session: Session, limit: int = 10) -> list[dict[str, Any]]:
    """The active rollouts (newest first) with their executions per status."""
    rollouts = session.execute(
        select(Rollout)
        .where(Rollout.state.in_(ACTIVE_ROLLOUTS))
        .order_by(Rollout.created_at.desc())
        .limit(limit)
    ).scalars()
    out = []
    for r in rollouts:
        counts = dict(
            session.execute(
                select(Execution.status, func.count())
                .where(Execution.rollout_id == r.id)
                .group_by(Execution.status)
            ).all()
        )
        out.append(
            {
                "id": r.id,
                "name": r.name,
                "state": r.state,
                "current_wave": r.current_wave,
                "waves_total": r.waves_total,
                "executions": {k: int(v) for k, v in counts.items()},
            }
        )
    return out


def _versions(rows: list[tuple[str | None, str | None, int]]) -> dict[str, list[dict[str, Any]]]:
    per_model: dict[str, list[dict[str, Any]]] = {}
    for model, version, n in sorted(rows, key=lambda r: (r[0] or "", -r[2], r[1] or "")):
        per_model.setdefault(model or "-", []).append({"version": version, "devices": int(n)})
    return per_model


def versions_per_model(session: Session) -> dict[str, list[dict[str, Any]]]:
    """Active devices per software version, per model (most common version first)."""
    rows = session.execute(
        select(Device.model, Device.software_version, func.count())
        .where(Device.status != "decommissioned")
        .group_by(Device.model, Device.software_version)
    ).all()
    return _versions([(m, v, int(n)) for m, v, n in rows])


def failure_modes(session: Session) -> list[str]:
    """The failure modes claimed so far, by name."""
    query = select(WarrantyClaim.failure_mode).distinct().order_by(WarrantyClaim.failure_mode)
    return list(session.execute(query).scalars())


def rmas_by_state(session: Session) -> dict[str, int]:
    """RMAs per lifecycle state."""
    rows = session.execute(select(Rma.state, func.count()).group_by(Rma.state)).all()
    return {state: int(n) for state, n in rows}


PRESENCE_STATES = ("online", "offline", "unknown")


def _registry_summary(session: Session) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Head counts and versions per model from one scan of the registry: devices grouped
    by (model, version) with ``FILTER`` counts per presence state, open faults and
    decommissioning (a few dozen rows; one scan instead of one for the counters and one
    for the versions)."""
    active = Device.status != "decommissioned"
    rows = session.execute(
        select(
            Device.model,
            Device.software_version,
            func.count().filter(active),
            func.count().filter(~active),
            func.count().filter(active, Device.open_faults > 0),
            *(func.count().filter(active, Device.presence == state) for state in PRESENCE_STATES),
        ).group_by(Device.model, Device.software_version)
    ).all()
    totals = [sum(int(row[k]) for row in rows) for k in range(2, 5 + len(PRESENCE_STATES))]
    counts = {
        "devices": totals[0],
        "decommissioned": totals[1],
        "with_open_faults": totals[2],
        "presence": dict(zip(PRESENCE_STATES, totals[3:], strict=True)),
    }
    return counts, _versions([(m, v, int(n)) for m, v, n, *_rest in rows if n])


def fleet_overview(session: Session, now: float) -> dict[str, Any]:
    """Presence, problem counters (each with the device-list query that lists them),
    software versions per model, active rollouts and open alarms over the last 7 days.
    The head counts match ``GET /api/v1/fleet/summary``; the registry is scanned once
    for them (at 100,000 devices a scan per counter is what made the page slow)."""
    counts, versions = _registry_summary(session)
    by_severity = alarms.open_alarms_by_severity(session)
    active = Device.status != "decommissioned"
    failed = _count(session, select(Device.id).where(active, Device.id.in_(_last_update_failed())))
    recalled = _open_recall_members(session)
    quarantined = _count(session, select(Device.id).where(active, Device.id.in_(_quarantined())))
    claims = _count(
        session, select(WarrantyClaim.id).where(WarrantyClaim.created_at >= _month_start(now))
    )
    return {
        "devices": counts["devices"],
        "decommissioned": counts["decommissioned"],
        "presence": counts["presence"],
        "open_alarms": sum(by_severity.values()),
        "open_alarms_by_severity": by_severity,
        "problems": {
            "offline": {"count": counts["presence"]["offline"], "query": "presence=offline"},
            "with_open_faults": {
                "count": counts["with_open_faults"],
                "query": "has_open_faults=true",
            },
            "failed_last_update": {"count": failed, "query": "last_update=failed"},
            "in_quarantine": {"count": quarantined, "query": "quarantine=yes"},
            "under_open_recall": {"count": recalled, "query": "recall=open"},
        },
        "claims_this_month": claims,
        "versions_by_model": versions,
        "active_rollouts": rollout_progress(session),
        "open_alarms_by_day": open_alarms_by_day(session, now),
    }
