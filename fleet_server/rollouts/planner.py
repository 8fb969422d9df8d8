"""Who goes in which wave: wave sizes, stratified canaries, late joiners, windows.

Pure and deterministic: the same candidates, policy and seed always give the same plan,
so ``dry-run`` shows exactly what ``start`` will do.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fleet_server.rollouts.policy import MaintenanceWindow, Policy, minutes_of_day

DEFAULT_GROWTH = 8.0
"""Growth factor between waves when the policy gives neither explicit nor exponential waves."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A device eligible for the rollout, with the attributes it is stratified by."""

    device_id: str
    strata: Mapping[str, str] = field(default_factory=dict)


def wave_sizes(total: int, policy: Policy) -> list[int]:
    """Number of devices in each wave for a target of ``total`` devices (sums to total).

    The first wave is never smaller than ``min_sample`` (when the target allows), so the
    canary can be judged. Explicit waves that do not cover the target get a final wave
    with the rest.
    """
    if total <= 0:
        return []
    sizes: list[int] = []
    if policy.waves:
        for wave in policy.waves:
            if wave.count is not None:
                sizes.append(wave.count)
            else:
                sizes.append(math.ceil(total * (wave.percent or 0) / 100.0))
    else:
        first = (
            policy.exponential.first
            if policy.exponential
            else math.ceil(total * policy.canary_percent / 100.0)
        )
        factor = policy.exponential.factor if policy.exponential else DEFAULT_GROWTH
        sizes.append(max(first, 1))
        while sum(sizes) < total:
            sizes.append(max(1, math.ceil(sizes[-1] * factor)))
    sizes[0] = max(sizes[0], policy.min_sample)
    return _fit(sizes, total)


def _fit(sizes: list[int], total: int) -> list[int]:
    """Trim or extend wave sizes so they are positive and add up to ``total``."""
    fitted: list[int] = []
    remaining = total
    for size in sizes:
        take = min(size, remaining)
        if take > 0:
            fitted.append(take)
            remaining -= take
    if remaining > 0:
        fitted.append(remaining)
    return fitted


def _order_key(seed: str, device_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{device_id}".encode()).digest()


def priority_order(candidates: Sequence[Candidate], policy: Policy, seed: str) -> list[str]:
    """Device ids in the order they should be updated: first ``min_per_stratum`` devices of
    every value of every ``stratify_by`` field (so each hardware revision and batch is
    tried early), then the rest in a pseudo-random order derived from ``seed`` (the
    rollout id), so no group of devices is always first."""
    return _prioritise(candidates, policy, seed)[0]


def _prioritise(
    candidates: Sequence[Candidate], policy: Policy, seed: str
) -> tuple[list[str], int]:
    """The update order and how many devices at its head are stratified canary picks."""
    ordered = sorted(candidates, key=lambda c: _order_key(seed, c.device_id))
    first: list[str] = []
    chosen: set[str] = set()
    for field_name in policy.stratify_by:
        have: dict[str, int] = {}
        for candidate in ordered:
            if candidate.device_id in chosen:
                value = candidate.strata.get(field_name)
                if value is not None:
                    have[value] = have.get(value, 0) + 1
        for candidate in ordered:
            value = candidate.strata.get(field_name)
            if value is None or candidate.device_id in chosen:
                continue
            if have.get(value, 0) < policy.min_per_stratum:
                first.append(candidate.device_id)
                chosen.add(candidate.device_id)
                have[value] = have.get(value, 0) + 1
    return first + [c.device_id for c in ordered if c.device_id not in chosen], len(first)


def plan_waves(candidates: Sequence[Candidate], policy: Policy, seed: str) -> list[list[str]]:
    """Assign every candidate to a wave, in :func:`priority_order`.

    The first wave holds at least ``min_per_stratum`` devices of every value of every
    ``stratify_by`` field present in the target (it grows if it must), so each hardware
    revision and batch is canaried; each wave lists its devices in update order.
    """
    sizes = wave_sizes(len(candidates), policy)
    if not sizes:
        return []
    order, stratified = _prioritise(candidates, policy, seed)
    first_size = max(sizes[0], stratified)
    waves = [order[:first_size]]
    rest = order[first_size:]
    start = 0
    for size in _fit(sizes[1:], len(rest)) if rest else []:
        waves.append(rest[start : start + size])
        start += size
    return waves


def wave_for_late_joiner(started: Sequence[bool]) -> int:
    """The wave a device that joined the target after the start enters: the earliest wave
    that has not started yet, or else the last wave. It never skips ahead of a wave that
    is still being judged."""
    for index, has_started in enumerate(started):
        if not has_started:
            return index
    return max(len(started) - 1, 0)


def in_maintenance_window(window: MaintenanceWindow | None, now_utc: datetime, tz: str) -> bool:
    """True when an install may start now on a device in time zone ``tz``.

    ``now_utc`` must be timezone-aware. A window whose end is before its start wraps past
    midnight (``22:00``–``04:00``); then ``days`` names the day the window opened. An
    unknown time zone falls back to UTC (the registry validates zones on write).
    """
    if window is None:
        return True
    if now_utc.tzinfo is None:
        raise ValueError("now_utc must be timezone-aware")
    try:
        zone = ZoneInfo(tz) if tz else ZoneInfo("UTC")
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    local = now_utc.astimezone(zone)
    minute = local.hour * 60 + local.minute
    start, end = minutes_of_day(window.start), minutes_of_day(window.end)
    days = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    if start < end:
        opened_on = local
        inside = start <= minute < end
    elif minute >= start:
        opened_on, inside = local, True
    elif minute < end:
        opened_on, inside = local - timedelta(days=1), True
    else:
        return False
    if not inside:
        return False
    return not window.days or days[opened_on.weekday()] in window.days
