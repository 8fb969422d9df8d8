"""``explain``: why a device is (not) updating, rollout by rollout, in plain sentences.

For the rollout named, or every active one: whether the selector matches (and which
fields do not), the exclusion and its reason, the wave and whether it started, the
maintenance window now in the device's time zone, quarantine, the execution's state and
any rollback. Reads only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from fleet_server.db.models import Bundle, Device, Execution
from fleet_server.db.rollout_models import Rollout, RolloutExclusion
from fleet_server.domain.quarantine import quarantines
from fleet_server.rollouts.lifecycle import ACTIVE
from fleet_server.rollouts.planner import in_maintenance_window
from fleet_server.rollouts.policy import parse_policy
from fleet_server.rollouts.view import rollback_id
from fleet_server.services import registry
from fleet_server.services.registry import DeviceFilter
from fleet_server.services.rollouts import get_rollout
from fleet_server.services.rollouts_selection import parse_selector, select_devices


def explain(
    session: Session, device_id: str, *, now: float, rollout_id: str | None = None
) -> dict[str, Any]:
    """:func:`explain_device` for the registered device ``device_id`` (``not_found``)."""
    device = registry.get_device(session, device_id)
    return explain_device(session, device, now=now, rollout_id=rollout_id)


def _selector_mismatches(device: Device, selector: DeviceFilter) -> list[str]:
    """Selector fields the device does not satisfy (empty when it matches)."""
    misses = []
    for name in DeviceFilter.__dataclass_fields__:
        value = getattr(selector, name)
        if value is None or value == []:
            continue
        single = DeviceFilter(**{name: value})
        ok = all(_clause_holds(device, clause) for clause in single.clauses())
        if not ok:
            misses.append(name)
    return misses


def _clause_holds(device: Device, clause: Any) -> bool:
    session = object_session(device)
    if session is None:
        return True
    return (
        session.execute(select(Device.id).where(Device.id == device.id, clause)).first() is not None
    )


def explain_device(
    session: Session, device: Device, *, now: float, rollout_id: str | None = None
) -> dict[str, Any]:
    """Why the device is (not) updating: for each relevant rollout (the one named, or every
    active one), whether the selector matches, the exclusion and its reason, the wave and
    whether it started, the maintenance window now, quarantine, and the execution's state."""
    if rollout_id:
        rollouts = [get_rollout(session, rollout_id)]
    else:
        rollouts = list(
            session.execute(
                select(Rollout).where(Rollout.state.in_([s.value for s in ACTIVE]))
            ).scalars()
        )
    report: dict[str, Any] = {
        "device_id": device.device_id,
        "presence": device.presence,
        "software_version": device.software_version,
        "status": device.status,
        "rollouts": [],
    }
    for rollout in rollouts:
        bundle = session.get(Bundle, rollout.bundle_id)
        assert bundle is not None
        policy = parse_policy(rollout.policy)
        selector = parse_selector(rollout.selector)
        item: dict[str, Any] = {
            "rollout_id": rollout.id,
            "name": rollout.name,
            "state": rollout.state,
            "version": bundle.version,
        }
        misses = _selector_mismatches(device, selector)
        item["matches_selector"] = not misses
        if misses:
            item["verdict"] = "not targeted: the selector does not match " + ", ".join(
                f"{m}={getattr(selector, m)!r}" for m in misses
            )
            report["rollouts"].append(item)
            continue
        exclusion = session.execute(
            select(RolloutExclusion).where(
                RolloutExclusion.rollout_id == rollout.id, RolloutExclusion.device_key == device.id
            )
        ).scalar_one_or_none()
        execution = (
            session.execute(
                select(Execution)
                .where(Execution.rollout_id == rollout.id, Execution.device_key == device.id)
                .order_by(Execution.created_at.desc())
            )
            .unique()
            .scalars()
            .first()
        )
        in_window = in_maintenance_window(
            policy.maintenance_window,
            datetime.fromtimestamp(now, tz=UTC),
            device.timezone or "UTC",
        )
        item["maintenance_window_open"] = in_window
        if exclusion is not None:
            item["excluded"] = {"reason": exclusion.reason, "detail": exclusion.detail}
            item["verdict"] = f"excluded ({exclusion.reason}): {exclusion.detail}"
        elif execution is None:
            probe = select_devices(
                session, bundle, DeviceFilter(device_id=device.device_id), rollout_id=rollout.id
            )
            if device.status != "active":
                item["verdict"] = f"not eligible: the device is {device.status}"
            elif probe.excluded:
                _d, reason, detail = probe.excluded[0]
                item["verdict"] = f"would be excluded ({reason}): {detail}"
            elif rollout.state == "running":
                item["verdict"] = (
                    "eligible; joins the earliest wave that has not started (or the last "
                    "wave) at the next tick"
                )
            else:
                item["verdict"] = f"eligible; the rollout is {rollout.state}"
        else:
            wave = execution.wave or 0
            started = wave <= rollout.current_wave and rollout.state != "draft"
            item["wave"] = wave
            item["wave_started"] = started
            item["execution"] = {
                "id": execution.id,
                "status": execution.status,
                "phase": execution.phase,
                "failure_class": execution.failure_class,
                "reason": execution.reason,
            }
            if execution.status == "pending":
                if rollout.state != "running":
                    why = f"waiting: the rollout is {rollout.state}"
                    if rollout.halt_reason:
                        why += f" ({rollout.halt_reason})"
                elif not started:
                    why = f"waiting for wave {wave} (wave {rollout.current_wave} is running)"
                elif device.presence != "online":
                    why = "waiting for the device to come online"
                elif not in_window:
                    why = "waiting for its maintenance window (device time zone)"
                else:
                    why = "queued: the install is sent at the next tick (concurrency cap)"
                item["verdict"] = why
            elif execution.status in ("sent", "in_progress"):
                item["verdict"] = f"updating: {execution.phase}"
            elif execution.status == "committed":
                item["verdict"] = f"updated to {bundle.version}"
            elif execution.status == "failed":
                quarantine = (
                    f"; quarantined for {bundle.version}"
                    if quarantines(
                        execution.failure_class,
                        execution.finished_at,
                        device.quarantine_cleared_at,
                    )
                    else ""
                )
                item["verdict"] = (
                    f"failed ({execution.failure_class}): {execution.reason}{quarantine}"
                )
            else:
                item["verdict"] = f"cancelled: {execution.reason}"
        back = (
            session.execute(
                select(Execution)
                .where(
                    Execution.rollout_id == rollback_id(rollout.id),
                    Execution.device_key == device.id,
                )
                .order_by(Execution.created_at.desc())
            )
            .unique()
            .scalars()
            .first()
        )
        if back is not None:
            item["rollback"] = {"id": back.id, "status": back.status, "phase": back.phase}
            item["verdict"] += f"; rolled back to {back.bundle.version}: {back.status}"
        report["rollouts"].append(item)
    if not rollouts:
        report["verdict"] = "no active rollout"
    return report
