"""A recall's progress: completion counts and rates, periodic snapshots, CSV exports.

Both rates are always shown with their definitions: the raw rate over the whole
population, and the adjusted rate that leaves out members nobody can reach.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet_server.db.models import Device, RecallCampaign, RecallDevice, RecallSnapshot
from fleet_server.domain.lifecycles import (
    RECALL_DEVICE,
    CampaignState,
    MemberEvent,
    MemberState,
)
from fleet_server.domain.recall_progress import Completion, is_unreachable
from fleet_server.services.recall_population import population, recall_device_view


def completion(session: Session, campaign_id: str) -> Completion:
    """Counts of the population by state, as a :class:`Completion`."""
    counts = dict(
        session.execute(
            select(RecallDevice.state, func.count())
            .where(RecallDevice.campaign_id == campaign_id)
            .group_by(RecallDevice.state)
        ).all()
    )
    return Completion(
        population=int(sum(counts.values())),
        remedied=int(counts.get("remedied", 0)),
        not_needed=int(counts.get("not_needed", 0)),
        unreachable=int(counts.get("unreachable", 0)),
    )


def completion_now(
    session: Session, campaign_id: str, *, now: float, offline_days: float
) -> Completion:
    """Completion computed on demand at ``now``: like :func:`completion`, but a notified
    member whose device is gone or silent longer than ``offline_days`` counts as
    unreachable now (and an unreachable one that reappeared does not), without waiting
    for the hourly snapshot job to move it. Nothing is written."""
    counts: dict[str, int] = {}
    rows = session.execute(
        select(RecallDevice.state, Device.status, Device.presence, Device.last_seen)
        .join(Device, Device.id == RecallDevice.device_key)
        .where(RecallDevice.campaign_id == campaign_id)
    ).all()
    for state, status, presence, last_seen in rows:
        if state in (MemberState.NOTIFIED, MemberState.UNREACHABLE):
            gone = is_unreachable(status, presence, last_seen, now, offline_days)
            state = MemberState.UNREACHABLE if gone else MemberState.NOTIFIED
        key = str(getattr(state, "value", state))
        counts[key] = counts.get(key, 0) + 1
    return Completion(
        population=len(rows),
        remedied=counts.get("remedied", 0),
        not_needed=counts.get("not_needed", 0),
        unreachable=counts.get("unreachable", 0),
    )


def completion_view(c: Completion) -> dict[str, Any]:
    """Completion with both rates, labelled."""
    return {
        "population": c.population,
        "remedied": c.remedied,
        "not_needed": c.not_needed,
        "unreachable": c.unreachable,
        "raw_rate": c.raw_rate,
        "adjusted_rate": c.adjusted_rate,
        "raw_rate_definition": "(remedied + not needed) / population",
        "adjusted_rate_definition": "(remedied + not needed) / (population - unreachable)",
    }


def refresh_unreachable(session: Session, *, now: float, offline_days: float) -> int:
    """Mark notified members of open campaigns unreachable when gone from the registry or
    offline too long, and bring back ones that reappeared. Returns how many changed."""
    changed = 0
    rows = session.execute(
        select(RecallDevice, Device)
        .join(Device, Device.id == RecallDevice.device_key)
        .join(RecallCampaign, RecallCampaign.id == RecallDevice.campaign_id)
        .where(
            RecallCampaign.state == CampaignState.OPEN,
            RecallDevice.state.in_((MemberState.NOTIFIED, MemberState.UNREACHABLE)),
        )
    ).all()
    for rd, d in rows:
        why = is_unreachable(d.status, d.presence, d.last_seen, now, offline_days)
        if why and rd.state == MemberState.NOTIFIED:
            rd.state = RECALL_DEVICE.apply(rd.state, MemberEvent.LOSE).value
            rd.note, rd.state_changed_at = why, now
            changed += 1
        elif not why and rd.state == MemberState.UNREACHABLE:
            rd.state = RECALL_DEVICE.apply(rd.state, MemberEvent.FIND).value
            rd.note, rd.state_changed_at = "reachable again", now
            changed += 1
    return changed


def take_snapshots(session: Session, *, now: float, offline_days: float) -> int:
    """The snapshot job: refresh unreachable members, then record one progress snapshot
    per open campaign. Returns the number of snapshots written."""
    refresh_unreachable(session, now=now, offline_days=offline_days)
    session.flush()
    n = 0
    for c in session.execute(
        select(RecallCampaign).where(RecallCampaign.state == CampaignState.OPEN)
    ).scalars():
        comp = completion(session, c.id)
        session.add(
            RecallSnapshot(
                campaign_id=c.id,
                at=now,
                population=comp.population,
                remedied=comp.remedied,
                not_needed=comp.not_needed,
                unreachable=comp.unreachable,
                raw_rate=comp.raw_rate,
                adjusted_rate=comp.adjusted_rate,
            )
        )
        n += 1
    return n


def snapshots(session: Session, campaign_id: str) -> list[RecallSnapshot]:
    """The campaign's progress series, oldest first."""
    return list(
        session.execute(
            select(RecallSnapshot)
            .where(RecallSnapshot.campaign_id == campaign_id)
            .order_by(RecallSnapshot.at, RecallSnapshot.id)
        ).scalars()
    )


def snapshot_view(s: RecallSnapshot) -> dict[str, Any]:
    """One snapshot as the API shows it."""
    return {
        "at": s.at,
        "population": s.population,
        "remedied": s.remedied,
        "not_needed": s.not_needed,
        "unreachable": s.unreachable,
        "raw_rate": s.raw_rate,
        "adjusted_rate": s.adjusted_rate,
    }


AFFECTED_COLUMNS = (
    "device_id",
    "serial",
    "model",
    "batch",
    "software_version",
    "state",
    "added_how",
    "matched",
    "remedied_via",
    "note",
    "owner",
    "region",
    "location",
)


def device_location(d: Device) -> str:
    """Where the device is, for field service: its ``location:`` (or ``site:``) tag, else
    its time zone (the registry has no address field)."""
    for prefix in ("location:", "site:"):
        for tag in d.tags or ():
            if tag.startswith(prefix):
                return tag[len(prefix) :]
    return d.timezone or ""


PROGRESS_COLUMNS = (
    "at",  # ISO 8601 UTC, like every time the API gives
    "population",
    "remedied",
    "not_needed",
    "unreachable",
    "raw_rate (done/population)",
    "adjusted_rate (done/(population-unreachable))",
)


def _cell(value: Any) -> Any:
    """Neutralise spreadsheet formulas in free-text cells (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def affected_csv(session: Session, campaign_id: str) -> str:
    """The affected list as CSV (one row per population member, reason included)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(AFFECTED_COLUMNS)
    for rd, d in population(session, campaign_id):
        v = recall_device_view(rd, d)
        v.update(owner=d.owner or "", region=d.region or "", location=device_location(d))
        w.writerow(
            [_cell(v[c] if c != "matched" else "; ".join(v["matched"])) for c in AFFECTED_COLUMNS]
        )
    return buf.getvalue()


def progress_csv(session: Session, campaign_id: str) -> str:
    """The progress report (snapshots) as CSV, rates labelled with their definitions."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(PROGRESS_COLUMNS)
    for s in snapshots(session, campaign_id):
        w.writerow(
            [
                datetime.fromtimestamp(s.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                s.population,
                s.remedied,
                s.not_needed,
                s.unreachable,
                f"{s.raw_rate:.4f}",
                "" if s.adjusted_rate is None else f"{s.adjusted_rate:.4f}",
            ]
        )
    return buf.getvalue()
