"""Request and response models: the API contract as it appears in OpenAPI."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model

from fleet_server.domain.roles import Role
from protocol import SIGNALS, Signal

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A page of results; pass ``next_cursor`` back as ``cursor`` for the next one."""

    items: list[T]
    next_cursor: str | None
    total: int


class DeviceIn(BaseModel):
    """A device to register (same fields as a factory CSV row)."""

    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(description="MQTT identity: 1-64 letters, digits, '.', '_' or '-'")
    serial: str | None = None
    model: str | None = None
    hw_revision: str | None = None
    batch: str | None = None
    production_date: date | None = None
    activation_date: date | None = None
    region: str | None = None
    timezone: str | None = Field(default=None, description="IANA time zone, e.g. Europe/Berlin")
    owner: str | None = None
    channel: Literal["production", "pre-production"] | None = None
    tags: list[str] | None = None


class DevicePatch(BaseModel):
    """Registry fields to change; omitted fields stay as they are."""

    model_config = ConfigDict(extra="forbid")

    serial: str | None = None
    model: str | None = None
    hw_revision: str | None = None
    batch: str | None = None
    production_date: date | None = None
    activation_date: date | None = None
    region: str | None = None
    timezone: str | None = Field(default=None, description="IANA time zone, e.g. Europe/Berlin")
    owner: str | None = None
    channel: Literal["production", "pre-production"] | None = None
    tags: list[str] | None = None


class DeviceOut(BaseModel):
    """A device: registry facts, reported software, presence and latest vitals."""

    device_id: str
    serial: str | None
    model: str | None
    hw_revision: str | None
    batch: str | None
    production_date: date | None
    activation_date: date | None
    region: str | None
    timezone: str | None = None
    owner: str | None
    channel: str
    tags: list[str]
    status: Literal["active", "decommissioned"]
    decommissioned_at: datetime | None
    created_at: datetime
    software_version: str | None
    slot: str | None
    agent_version: str | None
    presence: Literal["online", "offline", "unknown"]
    presence_reason: str | None
    presence_changed_at: datetime | None
    last_seen: datetime | None
    keepalive_s: int | None
    interval_s: float | None = None
    """The publish interval the device announced (presence timeout backstop)."""
    clock_offset_s: float | None = None
    """Device clock minus server time at the last batch (positive: the device is ahead)."""
    quarantine_cleared_at: datetime | None = None
    open_faults: int
    vitals: dict[str, Any] | None
    dropped_total: int


class DecommissionIn(BaseModel):
    """Why the device leaves the fleet (kept in the audit log)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=1024)


class ImportResult(BaseModel):
    """How many devices a CSV import added (all rows or none)."""

    imported: int


def _signal_field(signal: Signal) -> Any:
    """A health signal as an optional response field, described from its declaration."""
    unit = f" [{signal.unit}]" if signal.unit else ""
    return (
        signal.kind | None,
        Field(default=None, title=signal.label, description=f"{signal.description}{unit}"),
    )


TelemetryOut: type[BaseModel] = create_model(
    "TelemetryOut",
    __doc__="One raw telemetry sample: a field per health signal of ``protocol.Sample``.",
    ts=(datetime, ...),
    **{s.name: _signal_field(s) for s in SIGNALS},
    custom=(dict[str, float] | None, None),
)


class HourlyOut(BaseModel):
    """Hourly aggregate of the main vitals (after raw samples expired)."""

    hour: datetime
    samples: int
    cpu_min: float | None
    cpu_avg: float | None
    cpu_max: float | None
    mem_min: float | None
    mem_avg: float | None
    mem_max: float | None
    disk_min: float | None
    disk_avg: float | None
    disk_max: float | None
    temp_min: float | None
    temp_avg: float | None
    temp_max: float | None


class TelemetryPage(Page[TelemetryOut]):
    """Raw samples, newest first, plus hourly aggregates for the same window."""

    hourly: list[HourlyOut] = []


class EventOut(BaseModel):
    """A device event as stored."""

    id: int
    boot_id: str
    seq: int
    ts: datetime
    kind: str
    code: str | None
    data: dict[str, Any]
    received_at: datetime


class AlarmOut(BaseModel):
    """An alarm: open while the fault is raised; history is kept after it clears."""

    id: int
    device_id: str
    code: str
    severity: str
    state: Literal["open", "cleared"]
    raised_at: datetime
    cleared_at: datetime | None
    acked_at: datetime | None
    acked_by: str | None
    value: float | None
    threshold: float | None
    message: str
    occurrences: int
    software_version: str | None


class FaultRateRow(BaseModel):
    """Fault statistics for one value of the grouping field."""

    value: str | None
    devices: int
    faulty_devices: int
    alarms: int
    open_alarms: int
    fault_rate: float | None = Field(description="faulty_devices / devices")


class FaultRates(BaseModel):
    """Fault rates grouped by one device field."""

    by: str
    since: datetime | None
    rows: list[FaultRateRow]


class FleetSummary(BaseModel):
    """Head counts of the fleet."""

    devices: int
    decommissioned: int
    presence: dict[str, int]
    open_alarms: int
    open_alarms_by_severity: dict[str, int]


class CommandIn(BaseModel):
    """A command to send; ``reboot`` needs operator, ``collect_diagnostics`` technician."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["reboot", "collect_diagnostics", "check_update"]
    ttl_s: int | None = Field(default=None, ge=10, le=7 * 86400)
    reason: str = Field(default="", max_length=1024)


class CommandOut(BaseModel):
    """A command and the device's latest answer."""

    id: str
    device_id: str
    kind: str
    status: Literal["pending", "sent", "accepted", "completed", "rejected", "failed", "expired"]
    created_at: datetime
    expires_at: datetime
    created_by: str
    updated_at: datetime
    reason: str | None
    detail: str
    result: dict[str, Any] | None


class DiagnosticsBundleOut(BaseModel):
    """A diagnostics upload slot; ``uploaded_at`` is set once the device sent it."""

    id: int
    command_id: str
    created_at: datetime
    expires_at: datetime
    uploaded_at: datetime | None
    size: int | None
    sha256: str | None
    content_type: str | None


class UploadOut(BaseModel):
    """Receipt of a diagnostics upload."""

    id: int
    size: int
    sha256: str


class AuditOut(BaseModel):
    """One audit log entry."""

    id: int
    at: datetime
    actor: str
    actor_role: str
    action: str
    target_type: str
    target_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None


class TokenIn(BaseModel):
    """A token to create."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    role: Role
    ttl_days: float | None = Field(
        default=None, gt=0, le=3650, description="days until it expires (default: never)"
    )


class TokenOut(BaseModel):
    """A token as listed (never the secret)."""

    id: int
    name: str
    role: Role
    prefix: str
    created_at: datetime
    created_by: str | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    expires_at: datetime | None = None


class TokenCreated(TokenOut):
    """A new token; ``secret`` is shown this once and cannot be recovered."""

    secret: str


class WhoAmI(BaseModel):
    """The caller's identity."""

    name: str
    role: Role


class IngestHealth(BaseModel):
    """The MQTT ingest of this process: ready, or why not, and what it observed."""

    ready: bool
    reasons: list[str]
    connected: bool
    recent_disconnects: int
    last_commit_age_s: float | None
    backlog: int
    broker_heartbeat_age_s: float | None
    broker_dropped_messages: int | None


class Health(BaseModel):
    """Liveness, database reachability and (when this process runs one) the ingest."""

    status: Literal["ok", "degraded"]
    database: bool
    version: str
    mode: Literal["demo", "production"] = "production"
    warning: str | None = None
    """Set in demo mode: the server is not secured."""
    ingest: IngestHealth | None = None
    """None when this process runs no ingest (``fleet-server api``)."""


class Readiness(BaseModel):
    """``/readyz``: ready to do its job, or the reasons it is not."""

    ready: bool
    reasons: list[str]
