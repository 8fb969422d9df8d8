"""Recall scope predicates: parse, evaluate and explain, without I/O.

A scope is JSON kept with the campaign, every clause optional but at least one given,
all clauses must match (AND)::

    {"models": ["thermo-1"], "hw_revisions": ["rev-a"], "batches": ["lot-7"],
     "serial_range": {"from": "SN0100", "to": "SN0199"},
     "production_window": {"from": "2026-01-01", "to": "2026-01-31"},
     "software_versions": ["2.0.0"]}

Serial ranges compare naturally (``SN99 < SN100``) and include both ends; the production
window includes both dates. :func:`explain` says which clauses a device matched, which is
what the frozen population stores per device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from fleet_server.errors import InvalidInputError

CLAUSES = (
    "models",
    "hw_revisions",
    "batches",
    "serial_range",
    "production_window",
    "software_versions",
)
_LIST_FIELDS = {
    "models": "model",
    "hw_revisions": "hw_revision",
    "batches": "batch",
    "software_versions": "software_version",
}


class ScopeError(InvalidInputError):
    """The scope JSON is not a valid predicate (422 ``invalid_request``); the message
    names the clause."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_request", message)


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key comparing digit runs as numbers (``SN99`` < ``SN100``)."""
    parts = re.findall(r"\d+|\D+", text)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


@dataclass(frozen=True)
class Scope:
    """A validated scope predicate."""

    lists: dict[str, tuple[str, ...]]
    serial_from: str | None = None
    serial_to: str | None = None
    produced_from: date | None = None
    produced_to: date | None = None

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON form (what the campaign stores)."""
        out: dict[str, Any] = {k: list(v) for k, v in self.lists.items()}
        if self.serial_from is not None or self.serial_to is not None:
            out["serial_range"] = {"from": self.serial_from, "to": self.serial_to}
        if self.produced_from is not None or self.produced_to is not None:
            out["production_window"] = {
                "from": self.produced_from.isoformat() if self.produced_from else None,
                "to": self.produced_to.isoformat() if self.produced_to else None,
            }
        return out


def _date(value: Any, where: str) -> date | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ScopeError(f"{where}: must be a date YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ScopeError(f"{where}: {value!r} is not a date YYYY-MM-DD") from None


def parse_scope(data: Any) -> Scope:
    """Validate scope JSON; raise :class:`ScopeError` naming the bad clause."""
    if not isinstance(data, dict):
        raise ScopeError("scope: must be an object of clauses")
    unknown = sorted(set(data) - set(CLAUSES))
    if unknown:
        raise ScopeError(f"scope: unknown clause(s) {unknown}; known: {', '.join(CLAUSES)}")
    lists: dict[str, tuple[str, ...]] = {}
    for key in _LIST_FIELDS:
        if key not in data or data[key] is None:
            continue
        values = data[key]
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) and v for v in values)
        ):
            raise ScopeError(f"scope.{key}: must be a non-empty list of non-empty strings")
        lists[key] = tuple(values)
    serial_from = serial_to = None
    if data.get("serial_range") is not None:
        rng = data["serial_range"]
        if not isinstance(rng, dict) or set(rng) - {"from", "to"}:
            raise ScopeError('scope.serial_range: must be {"from": serial, "to": serial}')
        serial_from, serial_to = rng.get("from"), rng.get("to")
        for name, v in (("from", serial_from), ("to", serial_to)):
            if v is not None and (not isinstance(v, str) or not v):
                raise ScopeError(f"scope.serial_range.{name}: must be a non-empty string")
        if serial_from is None and serial_to is None:
            raise ScopeError("scope.serial_range: give from, to or both")
        if serial_from and serial_to and natural_key(serial_from) > natural_key(serial_to):
            raise ScopeError(f"scope.serial_range: from {serial_from} is after to {serial_to}")
    produced_from = produced_to = None
    if data.get("production_window") is not None:
        win = data["production_window"]
        if not isinstance(win, dict) or set(win) - {"from", "to"}:
            raise ScopeError('scope.production_window: must be {"from": date, "to": date}')
        produced_from = _date(win.get("from"), "scope.production_window.from")
        produced_to = _date(win.get("to"), "scope.production_window.to")
        if produced_from is None and produced_to is None:
            raise ScopeError("scope.production_window: give from, to or both")
        if produced_from and produced_to and produced_from > produced_to:
            raise ScopeError("scope.production_window: from is after to")
    scope = Scope(lists, serial_from, serial_to, produced_from, produced_to)
    if not scope.to_json():
        raise ScopeError("scope: give at least one clause (a recall of every device is a mistake)")
    return scope


def explain(scope: Scope, device: dict[str, Any]) -> tuple[bool, list[str], list[str]]:
    """Evaluate ``scope`` on a device's registry fields.

    Returns ``(matches, matched_clauses, failed_clauses)``, each clause rendered for
    people, e.g. ``"batch lot-7 in [lot-7, lot-8]"``.
    """
    matched: list[str] = []
    failed: list[str] = []
    for key, field in _LIST_FIELDS.items():
        if key not in scope.lists:
            continue
        value = device.get(field)
        ok = value in scope.lists[key]
        listed = ", ".join(scope.lists[key])
        (matched if ok else failed).append(f"{field} {value} {'in' if ok else 'not in'} [{listed}]")
    if scope.serial_from is not None or scope.serial_to is not None:
        serial = device.get("serial")
        lo, hi = scope.serial_from or "", scope.serial_to or ""
        ok = serial is not None and (
            (scope.serial_from is None or natural_key(serial) >= natural_key(scope.serial_from))
            and (scope.serial_to is None or natural_key(serial) <= natural_key(scope.serial_to))
        )
        (matched if ok else failed).append(
            f"serial {serial} {'in' if ok else 'not in'} [{lo or '...'}, {hi or '...'}]"
        )
    if scope.produced_from is not None or scope.produced_to is not None:
        produced = device.get("production_date")
        if isinstance(produced, str):
            produced = date.fromisoformat(produced)
        ok = produced is not None and (
            (scope.produced_from is None or produced >= scope.produced_from)
            and (scope.produced_to is None or produced <= scope.produced_to)
        )
        window = f"[{scope.produced_from or '...'}, {scope.produced_to or '...'}]"
        (matched if ok else failed).append(
            f"production_date {produced} {'in' if ok else 'not in'} {window}"
        )
    return not failed, matched, failed
