"""Automatic checks on a warranty claim, as a pure function of what the server knows.

The checks inform the reviewer; they never decide. Each result is ``(name, passed,
detail)`` and is stored with the claim, so the reviewer sees why a check failed.
"""

from __future__ import annotations

import calendar
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any


@dataclass(frozen=True)
class CheckResult:
    """One automatic check: its name, outcome and an explanation for the reviewer."""

    name: str
    passed: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        """Stored form."""
        return asdict(self)


@dataclass(frozen=True)
class DeviceFacts:
    """The registry facts a claim is checked against."""

    device_id: str
    model: str | None
    region: str | None
    status: str
    activation_date: date | None
    decommissioned_on: date | None


@dataclass(frozen=True)
class Coverage:
    """The coverage rule that applies (model + region or ``*``)."""

    model: str
    region: str
    months: int
    covers: tuple[str, ...]


def add_months(start: date, months: int) -> date:
    """``start`` plus ``months`` calendar months, clamped to the month's last day."""
    month0 = start.month - 1 + months
    year, month = start.year + month0 // 12, month0 % 12 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


@dataclass(frozen=True)
class PartFacts:
    """What the parts registry knows about a claimed part."""

    serial: str
    kind: str
    device_ids: tuple[str, ...]
    """Devices the part is or was installed on."""


def check_part(
    part_serial: str, part_kind: str | None, part: PartFacts | None, device_id: str | None
) -> CheckResult:
    """The claim's part against the parts registry: it must be registered, of the kind
    the claim names (when named), and installed (now or before) on the claimed device."""
    if part is None:
        return CheckResult(
            "part_registered", False, f"part {part_serial} is not in the parts registry"
        )
    if part_kind and part.kind != part_kind:
        return CheckResult(
            "part_registered",
            False,
            f"part {part_serial} is a {part.kind}, the claim says {part_kind}",
        )
    if device_id is not None and device_id not in part.device_ids:
        where = ", ".join(part.device_ids) or "no device"
        return CheckResult(
            "part_registered",
            False,
            f"part {part_serial} was never installed on {device_id} (installed on: {where})",
        )
    return CheckResult(
        "part_registered", True, f"part {part_serial} ({part.kind}) installed on {device_id}"
    )


def check_claim(
    *,
    device_ref: str,
    device: DeviceFacts | None,
    coverage: Coverage | None,
    failure_date: date,
    failure_mode: str,
    part_kind: str | None,
    alarm_count: int,
    evidence_days: int,
    today: date,
) -> list[CheckResult]:
    """Run every check; later checks that need a missing fact fail with that reason."""
    out: list[CheckResult] = []
    if failure_date > today:
        out.append(
            CheckResult("failure_date", False, f"failure date {failure_date} is in the future")
        )
    if device is None:
        out.append(
            CheckResult("device_exists", False, f"no device with id or serial {device_ref!r}")
        )
        out.append(CheckResult("device_active", False, "unknown device"))
        out.append(CheckResult("in_coverage", False, "unknown device"))
        out.append(CheckResult("failure_covered", False, "unknown device"))
        out.append(CheckResult("telemetry_evidence", False, "unknown device"))
        return out
    out.append(CheckResult("device_exists", True, f"device {device.device_id}"))
    if device.activation_date is None:
        out.append(CheckResult("device_active", False, "device was never activated"))
    elif device.activation_date > failure_date:
        out.append(
            CheckResult(
                "device_active",
                False,
                f"failure {failure_date} before activation {device.activation_date}",
            )
        )
    elif device.decommissioned_on is not None and device.decommissioned_on < failure_date:
        out.append(
            CheckResult(
                "device_active",
                False,
                f"device was decommissioned on {device.decommissioned_on}, before the failure",
            )
        )
    else:
        out.append(CheckResult("device_active", True, f"active since {device.activation_date}"))
    if coverage is None:
        out.append(
            CheckResult(
                "in_coverage",
                False,
                f"no warranty rule for model {device.model} in region {device.region}",
            )
        )
        out.append(CheckResult("failure_covered", False, "no warranty rule"))
    else:
        if device.activation_date is None:
            out.append(CheckResult("in_coverage", False, "no activation date to count from"))
        else:
            end = add_months(device.activation_date, coverage.months)
            ok = failure_date <= end
            out.append(
                CheckResult(
                    "in_coverage",
                    ok,
                    f"{coverage.months} months from {device.activation_date} "
                    f"(rule {coverage.model}/{coverage.region}) end {end}; failure {failure_date}",
                )
            )
        wanted = {failure_mode} | ({part_kind} if part_kind else set())
        covered = "*" in coverage.covers or bool(wanted & set(coverage.covers))
        out.append(
            CheckResult(
                "failure_covered",
                covered,
                f"rule covers {', '.join(coverage.covers) or 'nothing'}; claim is "
                f"{failure_mode}{f' / part {part_kind}' if part_kind else ''}",
            )
        )
    out.append(
        CheckResult(
            "telemetry_evidence",
            alarm_count > 0,
            f"{alarm_count} alarm(s) of {failure_mode} in the {evidence_days} days up to "
            f"the failure",
        )
    )
    return out
