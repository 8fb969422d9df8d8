"""Health evidence of a bake, per stratum, from a rollout view (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fleet_server.rollouts.evidence import StratumHealth
from fleet_server.rollouts.policy import Policy
from fleet_server.rollouts.view import DeviceView, ExecutionView


def _since(rows: Mapping[int, Sequence[float]], key: int, t0: float) -> int:
    return sum(1 for at in rows.get(key, ()) if at >= t0)


def health_evidence(
    executions: Sequence[ExecutionView],
    policy: Policy,
    *,
    start: float,
    now: float,
    faults: Mapping[int, Sequence[float]],
    reboots: Mapping[int, Sequence[float]],
) -> list[StratumHealth]:
    """Per stratum, during the bake that began at ``start``: faults and error reboots per
    device-hour and the latest temperatures of updated devices (after they committed)
    against devices of the same stratum not updated yet and online (an offline control
    adds hours but cannot report a fault, which would make updated devices look worse)."""
    updated = {
        ex.device.key: max(ex.finished_at or start, start)
        for ex in executions
        if ex.status == "committed"
    }
    control = {ex.device.key for ex in executions if ex.status == "pending" and ex.device.online}
    if not updated or not control:
        return []
    keys = set(updated) | control
    devices: dict[int, DeviceView] = {
        ex.device.key: ex.device for ex in executions if ex.device.key in keys
    }
    groups: dict[str, list[int]] = {"fleet": sorted(keys)}
    for name in policy.stratify_by:
        for key in sorted(keys):
            value = devices[key].strata.get(name)
            if value is not None:
                groups.setdefault(f"{name}={value}", []).append(key)
    evidence = []
    for label, members in groups.items():
        item: dict[str, Any] = {
            "updated_faults": 0,
            "control_faults": 0,
            "updated_reboots": 0,
            "control_reboots": 0,
            "updated_hours": 0.0,
            "control_hours": 0.0,
        }
        updated_temps: list[float] = []
        control_temps: list[float] = []
        for key in members:
            temp = devices[key].temp_c
            if key in updated:
                t0 = updated[key]
                item["updated_hours"] += max(now - t0, 0.0) / 3600.0
                item["updated_faults"] += _since(faults, key, t0)
                item["updated_reboots"] += _since(reboots, key, t0)
                if temp is not None and (devices[key].vitals_ts or 0) >= t0:
                    updated_temps.append(temp)
            else:
                item["control_hours"] += max(now - start, 0.0) / 3600.0
                item["control_faults"] += _since(faults, key, start)
                item["control_reboots"] += _since(reboots, key, start)
                if temp is not None:
                    control_temps.append(temp)
        evidence.append(
            StratumHealth(label, **item, updated_temps=updated_temps, control_temps=control_temps)
        )
    return evidence
