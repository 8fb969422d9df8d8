"""Response models of warranty coverage, claims, RMAs and parts.

Times are ISO 8601 UTC (:data:`~fleet_server.api.schema_times.Timestamp`); dates
(failure date) are ``YYYY-MM-DD``.
"""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, Field

from fleet_server.api.schema_times import OpenModel, Timestamp


class RuleOut(BaseModel):
    """Coverage of a model in a region (``*`` = any region without its own rule)."""

    id: int
    model: str
    region: str
    months: int = Field(description="months from activation")
    covers: list[str] = Field(description='failure modes / part kinds, or ["*"]')


class RuleList(BaseModel):
    """Every coverage rule."""

    items: list[RuleOut]


class ClaimCheck(BaseModel):
    """One automatic check: it informs the reviewer, it never decides."""

    name: str
    passed: bool
    detail: str


class ClaimEvidence(OpenModel):
    """Where the evidence is: the device's alarms mapped to the failure mode around the
    failure date, and links to its alarms and telemetry."""

    window_from: Timestamp | None = None
    window_to: Timestamp | None = None
    alarm_ids: list[int] = Field(default_factory=list)
    alarm_codes: list[str] = Field(default_factory=list)
    alarms_url: str | None = None
    telemetry_url: str | None = None
    checked_at: Timestamp | None = None


class TelemetrySummary(BaseModel):
    """Vitals around the failure: raw samples, else hourly aggregates."""

    source: str = Field(description="raw or hourly")
    samples: int
    max_temp_c: float | None
    max_cpu_pct: float | None


class ClaimOut(BaseModel):
    """A warranty claim with its automatic checks and evidence links."""

    id: int
    device_ref: str = Field(description="the device id or serial as filed")
    device_id: str | None = Field(description="the registered device it resolved to")
    failure_mode: str
    part_kind: str | None
    part_serial: str | None
    failure_date: date
    description: str
    state: str = Field(description="filed, approved or rejected")
    checks: list[ClaimCheck]
    checks_passed: bool
    evidence: ClaimEvidence
    created_at: Timestamp
    created_by: str
    decided_at: Timestamp | None
    decided_by: str | None
    decision_note: str


class ClaimDetail(ClaimOut):
    """A claim with a telemetry summary around the failure (null without a device or
    evidence window)."""

    telemetry_summary: TelemetrySummary | None


class ClaimPage(BaseModel):
    """A page of claims, newest first."""

    items: list[ClaimOut]
    next_cursor: str | None
    total: int


class HistoryEntry(OpenModel):
    """One state an RMA went through: when, by whom, with which note."""

    state: str
    at: Timestamp
    by: str
    note: str = ""


class RmaOut(BaseModel):
    """A return (RMA), its history and the moves allowed next."""

    id: int
    state: str
    claim_id: int | None
    device_id: str | None
    part_serial: str | None
    note: str
    history: list[HistoryEntry]
    allowed_next: list[str]
    created_at: Timestamp
    updated_at: Timestamp


class RmaPage(BaseModel):
    """A page of RMAs, newest first."""

    items: list[RmaOut]
    next_cursor: str | None
    total: int


class PartRepair(OpenModel):
    """A repair of a part (the RMA that refurbished it)."""

    rma_id: int | None = None
    at: Timestamp
    note: str = ""


class PartInstallation(BaseModel):
    """One stint of a part in a device."""

    device_id: str | None
    condition: str = Field(description="new or refurbished at install")
    installed_at: Timestamp
    removed_at: Timestamp | None
    failed: bool


class PartOut(BaseModel):
    """A serialised part with its genealogy."""

    serial: str
    kind: str
    condition: str
    stock_state: str
    installed_on: str | None
    hours_in_service: float
    reuse_count: int
    repairs: list[PartRepair]
    installations: list[PartInstallation]


class PartPage(BaseModel):
    """A page of parts, by serial."""

    items: list[PartOut]
    next_cursor: str | None
    total: int


class ConditionRate(BaseModel):
    """Failures of parts installed in one condition, per 1000 hours in service."""

    installations: int
    failures: int
    hours: float
    rate_per_1000h: float | None
    ci95: list[float | None] | None = Field(description="exact Poisson 95 % interval")


class RateRatio(BaseModel):
    """Refurbished / new failure-rate ratio with an exact 95 % interval."""

    refurbished_over_new: float | None
    ci95: list[float | None]


class PartsReliability(BaseModel):
    """Reused vs new parts: rates per condition and the refurbished / new ratio."""

    kind: str | None
    by_condition: dict[str, ConditionRate]
    ratio: RateRatio | None = Field(description="null without exposure in both conditions")
    unit: str
