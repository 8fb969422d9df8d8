"""Recall completion rates and the unreachable rule, as plain functions."""

from __future__ import annotations

from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

GONE_STATUSES = frozenset({"decommissioned", "scrapped", "exported"})
"""Registry statuses that make a device unreachable for a recall."""


@dataclass(frozen=True)
class Completion:
    """Counts and the two rates: raw = remedied / population; adjusted = remedied /
    (population - unreachable), None when every device is unreachable. Devices inspected
    and found not to need the remedy count as remedied in both rates."""

    population: int
    remedied: int
    not_needed: int
    unreachable: int

    @property
    def done(self) -> int:
        """Devices for which the recall is finished (remedied or not needed)."""
        return self.remedied + self.not_needed

    @property
    def raw_rate(self) -> float:
        """Done / population (0 for an empty population)."""
        return self.done / self.population if self.population else 0.0

    @property
    def adjusted_rate(self) -> float | None:
        """Done / (population - unreachable)."""
        reachable = self.population - self.unreachable
        return self.done / reachable if reachable > 0 else None


def is_unreachable(
    status: str,
    presence: str,
    last_seen: float | None,
    now: float,
    offline_days: float,
) -> str | None:
    """Why a device counts as unreachable (``None`` when it is reachable): gone from the
    registry (decommissioned, scrapped, exported), or offline / never seen for longer than
    ``offline_days``. A device never seen at all is judged by ``last_seen`` = None only
    when it is offline; registered-but-silent devices stay reachable."""
    if status in GONE_STATUSES:
        return f"registry status {status}"
    if presence == "offline" and (last_seen is None or now - last_seen > offline_days * 86400):
        days = "ever" if last_seen is None else f"{(now - last_seen) / 86400:.0f} days"
        return f"offline for {days} (limit {offline_days:g} days)"
    return None


def version_at_least(reported: str | None, wanted: str) -> bool:
    """True when ``reported`` is ``wanted`` or a higher release (PEP 440 ordering; for
    versions that do not parse, only equality counts)."""
    if not reported:
        return False
    try:
        return Version(reported) >= Version(wanted)
    except InvalidVersion:
        return reported == wanted
