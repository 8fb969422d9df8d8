"""Warranty coverage rules and claims with automatic checks shown to the reviewer.

The functions the API calls (:func:`set_rule`, :func:`create_claim`, :func:`decide_claim`,
:func:`recheck_claim`) commit and return the API's view; the others never commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from fleet_server.db.models import (
    Alarm,
    Device,
    Part,
    PartInstallation,
    TelemetryHourly,
    TelemetrySample,
    WarrantyClaim,
    WarrantyRule,
)
from fleet_server.domain.lifecycles import CLAIM
from fleet_server.domain.warranty_checks import (
    Coverage,
    DeviceFacts,
    PartFacts,
    check_claim,
    check_part,
)
from fleet_server.domain.webhooks import EventType
from fleet_server.errors import InvalidInputError, NotFoundError
from fleet_server.services import audit, webhooks
from fleet_server.services.audit import Actor
from fleet_server.services.paging import Page, PageParams, fetch_page

EVIDENCE_DAYS = 14
"""Alarms this many days before the failure date (through its end) count as evidence."""


def _day(ts: float) -> date:
    return datetime.fromtimestamp(ts, UTC).date()


def _start(d: date) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def rule_view(r: WarrantyRule) -> dict[str, Any]:
    """A coverage rule as the API shows it."""
    return {
        "id": r.id,
        "model": r.model,
        "region": r.region,
        "months": r.months,
        "covers": list(r.covers),
    }


def set_rule(
    session: Session,
    actor: Actor,
    *,
    model: str,
    region: str,
    months: int,
    covers: list[str],
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Create or replace the coverage of ``model`` in ``region`` (``*`` = any region);
    committed."""
    if not model or not region:
        raise InvalidInputError("invalid_request", "model and region must not be empty")
    if not 0 < months <= 240:
        raise InvalidInputError("invalid_request", "months: must be between 1 and 240")
    if not covers or not all(isinstance(c, str) and c for c in covers):
        raise InvalidInputError(
            "invalid_request", 'covers: list failure modes / part kinds, or ["*"] for all'
        )
    r = session.execute(
        select(WarrantyRule).where(WarrantyRule.model == model, WarrantyRule.region == region)
    ).scalar_one_or_none()
    before = rule_view(r) if r else None
    if r is None:
        r = WarrantyRule(model=model, region=region, months=months, covers=covers, created_at=now)
        session.add(r)
    else:
        r.months, r.covers = months, covers
    session.flush()
    audit.record(
        session,
        actor,
        "warranty.rule",
        "warranty_rule",
        f"{model}/{region}",
        now=now,
        before=before,
        after=rule_view(r),
        request_id=request_id,
    )
    session.commit()
    return rule_view(r)


def rules(session: Session) -> list[WarrantyRule]:
    """Every coverage rule."""
    return list(
        session.execute(
            select(WarrantyRule).order_by(WarrantyRule.model, WarrantyRule.region)
        ).scalars()
    )


def coverage_for(session: Session, model: str | None, region: str | None) -> WarrantyRule | None:
    """The rule for the model in the device's region, else the model's ``*`` rule."""
    if model is None:
        return None
    found = {
        r.region: r
        for r in session.execute(
            select(WarrantyRule).where(
                WarrantyRule.model == model, WarrantyRule.region.in_([region or "", "*"])
            )
        ).scalars()
    }
    return found.get(region or "") or found.get("*")


def find_device(session: Session, ref: str) -> Device | None:
    """A device by device id or serial."""
    return (
        session.execute(select(Device).where(or_(Device.device_id == ref, Device.serial == ref)))
        .scalars()
        .first()
    )


def claim_view(c: WarrantyClaim, device_id: str | None) -> dict[str, Any]:
    """A claim as the API shows it (checks included, never hidden)."""
    return {
        "id": c.id,
        "device_ref": c.device_ref,
        "device_id": device_id,
        "failure_mode": c.failure_mode,
        "part_kind": c.part_kind,
        "part_serial": c.part_serial,
        "failure_date": c.failure_date.isoformat(),
        "description": c.description,
        "state": c.state,
        "checks": list(c.checks),
        "checks_passed": all(ch["passed"] for ch in c.checks),
        "evidence": dict(c.evidence),
        "created_at": c.created_at,
        "created_by": c.created_by,
        "decided_at": c.decided_at,
        "decided_by": c.decided_by,
        "decision_note": c.decision_note,
    }


def evidence_codes(failure_mode: str, alarm_map: Mapping[str, Sequence[str]] | None) -> list[str]:
    """The alarm codes that are evidence for ``failure_mode``: the mode's own code and
    those the mapping (``[warranty] failure_mode_alarms``) lists for it, in order."""
    codes = [failure_mode, *((alarm_map or {}).get(failure_mode, ()))]
    return list(dict.fromkeys(codes))


def part_facts(session: Session, serial: str) -> PartFacts | None:
    """The parts registry's facts on ``serial`` (kind, devices it was installed on)."""
    part = session.execute(select(Part).where(Part.serial == serial)).scalar_one_or_none()
    if part is None:
        return None
    devices = session.execute(
        select(Device.device_id)
        .join(PartInstallation, PartInstallation.device_key == Device.id)
        .where(PartInstallation.part_id == part.id)
        .order_by(PartInstallation.installed_at)
    ).scalars()
    return PartFacts(part.serial, part.kind, tuple(dict.fromkeys(devices)))


def run_checks(
    session: Session,
    c: WarrantyClaim,
    now: float,
    alarm_map: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """(Re)compute the claim's checks and evidence links from the registry, the coverage
    rules and the device's alarms around the failure date (alarms whose code
    :func:`evidence_codes` maps to the claim's failure mode)."""
    codes = evidence_codes(c.failure_mode, alarm_map)
    device = session.get(Device, c.device_key) if c.device_key is not None else None
    facts = rule = None
    alarm_ids: list[int] = []
    window_from = _start(c.failure_date - timedelta(days=EVIDENCE_DAYS))
    window_to = _start(c.failure_date + timedelta(days=1))
    if device is not None:
        facts = DeviceFacts(
            device.device_id,
            device.model,
            device.region,
            device.status,
            device.activation_date,
            _day(device.decommissioned_at) if device.decommissioned_at else None,
        )
        r = coverage_for(session, device.model, device.region)
        if r is not None:
            rule = Coverage(r.model, r.region, r.months, tuple(r.covers))
        alarm_ids = list(
            session.execute(
                select(Alarm.id)
                .where(
                    Alarm.device_key == device.id,
                    Alarm.code.in_(codes),
                    Alarm.raised_at >= window_from,
                    Alarm.raised_at < window_to,
                )
                .order_by(Alarm.raised_at)
            ).scalars()
        )
    results = check_claim(
        device_ref=c.device_ref,
        device=facts,
        coverage=rule,
        failure_date=c.failure_date,
        failure_mode=c.failure_mode,
        part_kind=c.part_kind,
        alarm_count=len(alarm_ids),
        evidence_days=EVIDENCE_DAYS,
        today=_day(now),
    )
    if c.part_serial:
        results.append(
            check_part(
                c.part_serial,
                c.part_kind,
                part_facts(session, c.part_serial),
                device.device_id if device is not None else None,
            )
        )
    c.checks = [r.to_json() for r in results]
    c.evidence = {
        "window_from": window_from,
        "window_to": window_to,
        "alarm_ids": alarm_ids,
        "alarm_codes": codes,
        "alarms_url": (
            f"/api/v1/devices/{device.device_id}/alarms" if device is not None else None
        ),
        "telemetry_url": (
            f"/api/v1/devices/{device.device_id}/telemetry" if device is not None else None
        ),
        "checked_at": now,
    }


def telemetry_summary(session: Session, c: WarrantyClaim) -> dict[str, Any] | None:
    """Vitals around the failure (raw samples, else hourly aggregates) for the reviewer."""
    if c.device_key is None:
        return None
    lo, hi = c.evidence.get("window_from"), c.evidence.get("window_to")
    if lo is None or hi is None:
        return None
    raw = session.execute(
        select(
            func.count(), func.max(TelemetrySample.temp_c), func.max(TelemetrySample.cpu_pct)
        ).where(
            TelemetrySample.device_key == c.device_key,
            TelemetrySample.ts >= lo,
            TelemetrySample.ts < hi,
        )
    ).one()
    if raw[0]:
        return {
            "source": "raw",
            "samples": int(raw[0]),
            "max_temp_c": raw[1],
            "max_cpu_pct": raw[2],
        }
    hourly = session.execute(
        select(
            func.sum(TelemetryHourly.samples),
            func.max(TelemetryHourly.temp_max),
            func.max(TelemetryHourly.cpu_max),
        ).where(
            TelemetryHourly.device_key == c.device_key,
            TelemetryHourly.hour >= lo,
            TelemetryHourly.hour < hi,
        )
    ).one()
    return {
        "source": "hourly",
        "samples": int(hourly[0] or 0),
        "max_temp_c": hourly[1],
        "max_cpu_pct": hourly[2],
    }


def create_claim(
    session: Session,
    actor: Actor,
    *,
    device_ref: str,
    failure_mode: str,
    failure_date: date,
    now: float,
    part_kind: str | None = None,
    part_serial: str | None = None,
    description: str = "",
    request_id: str | None = None,
    alarm_map: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """File a claim (committed); it is accepted even when checks fail (the reviewer
    decides). ``alarm_map``: failure mode -> alarm codes counted as evidence."""
    if not device_ref or not failure_mode:
        raise InvalidInputError("invalid_request", "device and failure_mode must not be empty")
    device = find_device(session, device_ref)
    c = WarrantyClaim(
        device_ref=device_ref,
        device_key=device.id if device else None,
        failure_mode=failure_mode,
        part_kind=part_kind,
        part_serial=part_serial,
        failure_date=failure_date,
        description=description,
        state=CLAIM.initial.value,
        created_at=now,
        created_by=actor.label,
        checks=[],
        evidence={},
    )
    session.add(c)
    run_checks(session, c, now, alarm_map)
    session.flush()
    device_id = device.device_id if device else None
    view = claim_view(c, device_id)
    webhooks.notify(session, EventType.CLAIM_FILED, view, now=now)
    audit.record(
        session,
        actor,
        "claim.create",
        "claim",
        str(c.id),
        now=now,
        after=claim_view(c, device_id),
        request_id=request_id,
    )
    session.commit()
    return claim_view(c, device_id)


def get_claim(session: Session, claim_id: int) -> tuple[WarrantyClaim, str | None]:
    """A claim with its device id, or a 404."""
    c = session.get(WarrantyClaim, claim_id)
    if c is None:
        raise NotFoundError("not_found", f"claim {claim_id} does not exist")
    device = session.get(Device, c.device_key) if c.device_key is not None else None
    return c, device.device_id if device else None


def decide_claim(
    session: Session,
    actor: Actor,
    claim_id: int,
    decision: str,
    *,
    note: str,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Approve or reject a claim (a reviewer's call, with a note; the checks stay);
    committed. ``decision`` names the next state."""
    c, device_id = get_claim(session, claim_id)
    before = claim_view(c, device_id)
    decision = CLAIM.move_to(c.state, decision).value
    c.state, c.decided_at, c.decided_by, c.decision_note = decision, now, actor.label, note
    audit.record(
        session,
        actor,
        {"approved": "claim.approve", "rejected": "claim.reject"}[decision],
        "claim",
        str(c.id),
        now=now,
        before=before,
        after=claim_view(c, device_id),
        request_id=request_id,
    )
    session.commit()
    return claim_view(c, device_id)


def recheck_claim(
    session: Session,
    actor: Actor,
    claim_id: int,
    *,
    now: float,
    request_id: str | None = None,
    alarm_map: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Run the checks again (alarms buffered on an offline device may arrive after the
    claim was filed; a device may have been registered since). Allowed in any state: the
    result informs, it never changes the decision."""
    c, _device_id = get_claim(session, claim_id)
    if c.device_key is None:
        found = find_device(session, c.device_ref)
        c.device_key = found.id if found else None
    before = {"checks": list(c.checks), "evidence": dict(c.evidence)}
    run_checks(session, c, now, alarm_map)
    c, device_id = get_claim(session, claim_id)
    audit.record(
        session,
        actor,
        "claim.recheck",
        "claim",
        str(c.id),
        now=now,
        before=before,
        after={"checks": list(c.checks), "evidence": dict(c.evidence)},
        request_id=request_id,
    )
    session.commit()
    return claim_view(c, device_id)


def claim_detail(session: Session, claim_id: int) -> dict[str, Any]:
    """A claim with its checks, evidence links and a telemetry summary around the
    failure."""
    c, device_id = get_claim(session, claim_id)
    return {**claim_view(c, device_id), "telemetry_summary": telemetry_summary(session, c)}


def claims_query(
    state: str | None = None, failure_mode: str | None = None
) -> Select[tuple[WarrantyClaim, str]]:
    """(claim, device id) rows, newest first, for a paged list."""
    q = select(WarrantyClaim, Device.device_id).outerjoin(
        Device, Device.id == WarrantyClaim.device_key
    )
    if state:
        q = q.where(WarrantyClaim.state == state)
    if failure_mode:
        q = q.where(WarrantyClaim.failure_mode == failure_mode)
    return q.order_by(WarrantyClaim.id.desc())


def list_claims(
    session: Session, params: PageParams, state: str | None = None, failure_mode: str | None = None
) -> Page[dict[str, Any]]:
    """One page of claims, newest first, with their check results."""
    page = fetch_page(session, claims_query(state, failure_mode), params)
    return page.map(lambda row: claim_view(row[0], row[1]))
