"""Who a rollout targets: the selector, device by device eligibility, and the wave plan.

A selector is a :class:`DeviceFilter` over the registry; :func:`select_devices` matches it
and decides for every device whether it may take the bundle (and, if not, why), and
:func:`make_plan` turns the eligible ones into waves (the same plan ``start`` uses, so a
dry run shows exactly what starting would do). Reads only; nothing is written here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.models import Alarm, Bundle, Device, Execution
from fleet_server.domain.quarantine import QUARANTINING, quarantines
from fleet_server.errors import InvalidInputError
from fleet_server.rollouts.planner import Candidate, plan_waves
from fleet_server.rollouts.policy import Policy
from fleet_server.services.deployments import OPEN_STATUSES, compatibility_problem
from fleet_server.services.registry import DeviceFilter

LOW_DISK_PCT = 90.0
"""Devices whose disk is at least this full are left out (an update needs room)."""

STRATA_COLUMNS = {
    "hardware_revision": "hw_revision",
    "batch": "batch",
    "region": "region",
    "model": "model",
}


def parse_selector(data: dict[str, Any] | None) -> DeviceFilter:
    """A registry filter from JSON; unknown keys and bad values name the key."""
    data = dict(data or {})
    known = set(DeviceFilter.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInputError(
            "invalid_selector",
            f"selector: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
        )
    for key in ("produced_from", "produced_to", "activated_from", "activated_to"):
        if isinstance(data.get(key), str):
            try:
                data[key] = date.fromisoformat(data[key])
            except ValueError:
                raise InvalidInputError("invalid_selector", f"selector.{key}: not a date") from None
    for key in ("tags", "device_ids"):
        if key in data and not (
            isinstance(data[key], list) and all(isinstance(t, str) for t in data[key])
        ):
            if key == "device_ids" and data[key] is None:
                continue
            raise InvalidInputError("invalid_selector", f"selector.{key}: a list of strings")
    for key, value in data.items():
        if value is None or key in ("tags", "device_ids") or isinstance(value, date):
            continue
        if key == "has_open_faults":
            if not isinstance(value, bool):
                raise InvalidInputError("invalid_selector", f"selector.{key}: true or false")
        elif key in ("seen_after", "seen_before"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInputError("invalid_selector", f"selector.{key}: unix seconds")
        elif not isinstance(value, str) or len(value) > 256:
            raise InvalidInputError("invalid_selector", f"selector.{key}: a string")
    return DeviceFilter(**data)


def selector_to_dict(selector: DeviceFilter) -> dict[str, Any]:
    """The non-empty fields of a selector, JSON-ready."""
    out: dict[str, Any] = {}
    for name in DeviceFilter.__dataclass_fields__:
        value = getattr(selector, name)
        if value is None or (value == [] and name != "device_ids"):
            continue  # an empty device list matches nothing: kept
        out[name] = value.isoformat() if isinstance(value, date) else value
    return out


def strata_of(device: Device) -> dict[str, str]:
    """The device's value for every field a canary can be stratified by."""
    out: dict[str, str] = {}
    for name, column in STRATA_COLUMNS.items():
        value = getattr(device, column)
        if value is not None:
            out[name] = str(value)
    return out


@dataclass
class Selection:
    """Devices the selector matched, split into eligible ones and exclusions."""

    eligible: list[Device] = field(default_factory=list)
    excluded: list[tuple[Device, str, str]] = field(default_factory=list)


def _recall_holds(session: Session, rollout_id: str | None = None) -> set[int]:
    """Devices held by an open recall, except those the campaign's own remedy rollout
    (``rollout_id``) may update."""
    from fleet_server.services.recalls import recall_held_device_keys, remedy_rollout_exempt

    held = set(recall_held_device_keys(session))
    if rollout_id:
        held -= set(remedy_rollout_exempt(session, rollout_id))
    return held


def select_devices(
    session: Session,
    bundle: Bundle,
    selector: DeviceFilter,
    *,
    rollout_id: str | None = None,
    known: set[int] | None = None,
) -> Selection:
    """Match the selector against the registry and decide, device by device, who may take
    ``bundle``. ``known`` device keys (already planned or excluded) are skipped."""
    query = select(Device).where(*selector.clauses(), Device.status == "active")
    devices = [d for d in session.execute(query).scalars() if not known or d.id not in known]
    if not devices:
        return Selection()
    keys = [d.id for d in devices]
    critical = set(
        session.execute(
            select(Alarm.device_key).where(
                Alarm.device_key.in_(keys), Alarm.state == "open", Alarm.severity == "critical"
            )
        ).scalars()
    )
    busy = {
        row.device_key: row
        for row in session.execute(
            select(Execution.device_key, Execution.rollout_id, Execution.id).where(
                Execution.device_key.in_(keys), Execution.status.in_(OPEN_STATUSES)
            )
        )
    }
    cleared = {d.id: d.quarantine_cleared_at for d in devices}
    failed_before = {
        row.device_key
        for row in session.execute(
            select(Execution.device_key, Execution.failure_class, Execution.finished_at).where(
                Execution.device_key.in_(keys),
                Execution.bundle_id == bundle.id,
                Execution.status == "failed",
                Execution.failure_class.in_(QUARANTINING),
            )
        )
        if quarantines(row.failure_class, row.finished_at, cleared[row.device_key])
    }
    holds = _recall_holds(session, rollout_id)
    result = Selection()
    for device in devices:
        reason = _exclusion(device, bundle, critical, busy, failed_before, holds, rollout_id)
        if reason is None:
            result.eligible.append(device)
        else:
            result.excluded.append((device, reason[0], reason[1]))
    return result


def _exclusion(
    device: Device,
    bundle: Bundle,
    critical: set[int],
    busy: dict[int, Any],
    failed_before: set[int],
    holds: set[int],
    rollout_id: str | None,
) -> tuple[str, str] | None:
    problem = compatibility_problem(
        device.model, device.hw_revision, bundle.model, list(bundle.hardware_revisions)
    )
    if problem:
        return "incompatible", problem
    if device.software_version == bundle.version:
        return "up_to_date", f"already runs {bundle.version}"
    if device.id in failed_before:
        return "quarantined", f"{bundle.version} already failed on this device"
    if device.id in critical:
        return "critical_fault", "has an open critical alarm"
    disk = (device.vitals or {}).get("disk_pct")
    if isinstance(disk, int | float) and disk >= LOW_DISK_PCT:
        return "low_disk", f"disk {disk:.0f}% full (limit {LOW_DISK_PCT:.0f}%)"
    if device.id in holds:
        return "recall_hold", "held by an open recall campaign"
    if device.id in busy and busy[device.id].rollout_id != rollout_id:
        other = busy[device.id].rollout_id or busy[device.id].id
        return "busy", f"already updating in {other}"
    return None


@dataclass
class Plan:
    """Who goes in which wave and who is left out (and why)."""

    waves: list[list[str]]
    excluded: list[dict[str, str]]
    strata: dict[str, dict[str, str]]

    def summary(self) -> dict[str, Any]:
        """JSON-ready plan: waves with their strata counts, exclusions by reason."""
        waves = []
        for index, wave in enumerate(self.waves):
            by_revision = Counter(self.strata[d].get("hardware_revision", "?") for d in wave)
            waves.append(
                {
                    "wave": index,
                    "size": len(wave),
                    "devices": wave,
                    "hardware_revisions": dict(sorted(by_revision.items())),
                }
            )
        reasons = Counter(e["reason"] for e in self.excluded)
        return {
            "waves": waves,
            "targeted": sum(len(w) for w in self.waves),
            "excluded": self.excluded,
            "excluded_by_reason": dict(sorted(reasons.items())),
        }


def make_plan(
    session: Session, bundle: Bundle, selector: DeviceFilter, policy: Policy, seed: str
) -> Plan:
    """The plan a rollout with these parameters would start with (no writes)."""
    selection = select_devices(session, bundle, selector)
    candidates = [Candidate(d.device_id, strata_of(d)) for d in selection.eligible]
    return Plan(
        waves=plan_waves(candidates, policy, seed),
        excluded=[
            {"device_id": d.device_id, "reason": r, "detail": detail}
            for d, r, detail in selection.excluded
        ],
        strata={c.device_id: dict(c.strata) for c in candidates},
    )
