"""One device's life on one time axis: boots, faults, update executions, commands,
recall membership and warranty claims, newest first.

Each source is read with its own bounded query (newest ``limit`` rows), merged and cut
to ``limit``: the device page shows the recent story, the API lists keep the full one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.models import (
    CommandRecord,
    DeviceEvent,
    Execution,
    RecallCampaign,
    RecallDevice,
    WarrantyClaim,
)
from fleet_server.services.registry import get_device

LIMIT = 100


def _event_text(e: DeviceEvent) -> str:
    data = e.data or {}
    if e.kind == "boot":
        return f"boot ({data.get('reason', 'unknown reason')})"
    if e.kind in ("fault_raised", "fault_cleared"):
        message = data.get("message") or ""
        return f"{e.kind.replace('_', ' ')} {e.code or ''} {message}".strip()
    if e.kind == "update_state":
        return f"update {data.get('state', '')} {data.get('version', '')}".strip()
    return f"{e.kind} {e.code or ''}".strip()


def timeline(session: Session, device_id: str, limit: int = LIMIT) -> list[dict[str, Any]]:
    """``{at, kind, text, ref}`` entries, newest first (at most ``limit``)."""
    device = get_device(session, device_id)
    key = device.id
    out: list[dict[str, Any]] = []
    events = session.execute(
        select(DeviceEvent)
        .where(DeviceEvent.device_key == key)
        .order_by(DeviceEvent.ts.desc())
        .limit(limit)
    ).scalars()
    out += [{"at": e.ts, "kind": e.kind, "text": _event_text(e), "ref": None} for e in events]
    executions = session.execute(
        select(Execution)
        .where(Execution.device_key == key)
        .order_by(Execution.created_at.desc())
        .limit(limit)
    ).scalars()
    for x in executions:
        text = f"update to {x.bundle.version}: {x.status} ({x.phase})"
        if x.failure_class:
            text += f", {x.failure_class}: {x.reason}"
        out.append({"at": x.created_at, "kind": "execution", "text": text, "ref": x.rollout_id})
    commands = session.execute(
        select(CommandRecord)
        .where(CommandRecord.device_key == key)
        .order_by(CommandRecord.created_at.desc())
        .limit(limit)
    ).scalars()
    for c in commands:
        text = f"command {c.kind} by {c.created_by}: {c.status}"
        out.append({"at": c.created_at, "kind": "command", "text": text, "ref": None})
    recalls = session.execute(
        select(RecallDevice, RecallCampaign)
        .join(RecallCampaign, RecallCampaign.id == RecallDevice.campaign_id)
        .where(RecallDevice.device_key == key)
        .limit(limit)
    ).all()
    for member, campaign in recalls:
        text = f"recall {campaign.id} ({campaign.title}): {member.state}"
        out.append({"at": member.added_at, "kind": "recall", "text": text, "ref": campaign.id})
    claims = session.execute(
        select(WarrantyClaim)
        .where(WarrantyClaim.device_key == key)
        .order_by(WarrantyClaim.created_at.desc())
        .limit(limit)
    ).scalars()
    for w in claims:
        text = f"warranty claim {w.id}: {w.failure_mode}, {w.state}"
        out.append({"at": w.created_at, "kind": "claim", "text": text, "ref": None})
    out.sort(key=lambda entry: entry["at"], reverse=True)
    return out[:limit]
