"""SQLAlchemy 2 models of the fleet server.

Times are stored as UTC unix seconds (``float``), the unit the protocol uses, so ingest
never converts and both back-ends compare them the same way. The API renders them as
ISO 8601.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeEngine

from protocol import SIGNALS, Signal

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT primary keys do not autoincrement on SQLite; INTEGER does, and is 64-bit there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention (stable migrations)."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, date: Date}  # noqa: RUF012


class Device(Base):
    """One device of the registry: identity, manufacturing facts, state and vitals."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), unique=True)
    serial: Mapped[str | None] = mapped_column(String(128), unique=True)
    model: Mapped[str | None] = mapped_column(String(128), index=True)
    hw_revision: Mapped[str | None] = mapped_column(String(64), index=True)
    batch: Mapped[str | None] = mapped_column(String(128), index=True)
    production_date: Mapped[date | None]
    activation_date: Mapped[date | None]
    region: Mapped[str | None] = mapped_column(String(64), index=True)
    timezone: Mapped[str | None] = mapped_column(String(64))
    """IANA time zone (e.g. ``Europe/Berlin``); rollout maintenance windows use it."""
    owner: Mapped[str | None] = mapped_column(String(256))
    channel: Mapped[str] = mapped_column(String(32), default="production")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(32), default="active", index=True)
    decommissioned_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    # reported by the device
    software_version: Mapped[str | None] = mapped_column(String(64), index=True)
    slot: Mapped[str | None] = mapped_column(String(16))
    agent_version: Mapped[str | None] = mapped_column(String(64))
    last_boot_id: Mapped[str | None] = mapped_column(String(64))
    last_seen: Mapped[float | None] = mapped_column(Float)
    vitals: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    vitals_ts: Mapped[float | None] = mapped_column(Float)
    dropped_total: Mapped[int] = mapped_column(BigInteger, default=0)
    open_faults: Mapped[int] = mapped_column(Integer, default=0)
    # presence (see fleet_server.domain.presence for the ordering rule)
    presence: Mapped[str] = mapped_column(String(16), default="unknown", index=True)
    presence_reason: Mapped[str | None] = mapped_column(String(16))
    presence_boot_id: Mapped[str | None] = mapped_column(String(64))
    presence_seq: Mapped[int | None] = mapped_column(BigInteger)
    presence_ts: Mapped[float | None] = mapped_column(Float)
    presence_floor_seq: Mapped[int | None] = mapped_column(BigInteger)
    presence_changed_at: Mapped[float | None] = mapped_column(Float)
    keepalive_s: Mapped[int | None] = mapped_column(Integer)
    interval_s: Mapped[float | None] = mapped_column(Float)
    """The publish interval the device announces in its ``online`` presence."""
    clock_offset_s: Mapped[float | None] = mapped_column(Float)
    """Device clock minus server receipt time, measured on every batch (positive: ahead)."""
    quarantine_cleared_at: Mapped[float | None] = mapped_column(Float)
    """Failures finished before this no longer quarantine a version on this device."""


class ReceivedMessage(Base):
    """Every accepted device message's identity: the dedupe key across restarts.

    ``device_key`` is a ``devices.id`` with no foreign key, as in ``telemetry``: the
    ingest writes a row here for every message, and reads or creates the batch's devices
    in the same transaction (migration ``0014_ingest_tables_no_fk``)."""

    __tablename__ = "received_messages"

    device_key: Mapped[int] = mapped_column(Integer, primary_key=True)
    boot_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    received_at: Mapped[float] = mapped_column(Float, index=True)

    __table_args__ = {"sqlite_with_rowid": False}  # noqa: RUF012


SIGNAL_COLUMN_TYPES: dict[type, type[TypeEngine[Any]]] = {
    float: Float,
    int: BigInteger,
    bool: Boolean,
}
"""The column type of a health signal, by the Python type declared on ``protocol.Sample``."""


def signal_column(signal: Signal) -> Column[Any]:
    """The telemetry column of one health signal (nullable: a device may lack the source)."""
    return Column(signal.name, SIGNAL_COLUMN_TYPES[signal.kind](), nullable=True)


telemetry_table = Table(
    "telemetry",
    Base.metadata,
    Column("device_key", Integer, primary_key=True),  # a devices.id, no foreign key (0014)
    Column("ts", Float, primary_key=True),
    *(signal_column(s) for s in SIGNALS),
    Column("custom", JSON(none_as_null=True), nullable=True),
    sqlite_with_rowid=False,
)


class TelemetrySample(Base):
    """One raw health sample: one column per signal of ``protocol.Sample`` (generated from
    its declarations, :data:`protocol.SIGNALS`), JSON for the custom ones.

    Clustered on ``(device_key, ts)`` (``WITHOUT ROWID`` on SQLite), so the primary key is
    the only index and a sample costs its values and little else. A new signal needs a
    migration adding its column; a test compares the migrated table with the declaration.
    """

    __table__ = telemetry_table


class TelemetryHourly(Base):
    """Hourly min/avg/max of the main vitals, kept after raw samples expire."""

    __tablename__ = "telemetry_hourly"

    device_key: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    """Start of the hour, unix seconds."""
    samples: Mapped[int] = mapped_column(Integer)
    cpu_min: Mapped[float | None] = mapped_column(Float)
    cpu_avg: Mapped[float | None] = mapped_column(Float)
    cpu_max: Mapped[float | None] = mapped_column(Float)
    mem_min: Mapped[float | None] = mapped_column(Float)
    mem_avg: Mapped[float | None] = mapped_column(Float)
    mem_max: Mapped[float | None] = mapped_column(Float)
    disk_min: Mapped[float | None] = mapped_column(Float)
    disk_avg: Mapped[float | None] = mapped_column(Float)
    disk_max: Mapped[float | None] = mapped_column(Float)
    temp_min: Mapped[float | None] = mapped_column(Float)
    temp_avg: Mapped[float | None] = mapped_column(Float)
    temp_max: Mapped[float | None] = mapped_column(Float)

    __table_args__ = {"sqlite_with_rowid": False}  # noqa: RUF012


class DeviceEvent(Base):
    """An event a device reported (faults, boots, update transitions, command acks)."""

    __tablename__ = "device_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_key: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    boot_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32))
    code: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_device_events_device_ts", "device_key", "ts"),)


class Alarm(Base):
    """A fault turned into an alarm; at most one open alarm per (device, code)."""

    __tablename__ = "alarms"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_key: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(String(64), index=True)
    severity: Mapped[str] = mapped_column(String(16), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    raised_at: Mapped[float] = mapped_column(Float)
    raised_seq: Mapped[int] = mapped_column(BigInteger)
    raised_boot_id: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text, default="")
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    cleared_at: Mapped[float | None] = mapped_column(Float)
    acked_at: Mapped[float | None] = mapped_column(Float)
    acked_by: Mapped[str | None] = mapped_column(String(128))
    software_version: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index(
            "uq_alarms_open_device_code",
            "device_key",
            "code",
            unique=True,
            sqlite_where=text("state = 'open'"),
            postgresql_where=text("state = 'open'"),
        ),
    )


class ApiToken(Base):
    """An API token: only the sha256 of the secret is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str | None] = mapped_column(String(128))
    revoked_at: Mapped[float | None] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float)
    """Refused from this time on; None = until revoked."""


class AuditEntry(Base):
    """Who did what to what, when, with the state before and after."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    actor_role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(128))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    request_id: Mapped[str | None] = mapped_column(String(64))


class CommandRecord(Base):
    """A command sent to a device and the device's latest answer."""

    __tablename__ = "commands"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_key: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[float] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class DiagnosticBundle(Base):
    """A diagnostics upload slot (one-time token) and, once used, the uploaded bytes."""

    __tablename__ = "diagnostic_bundles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_key: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), index=True
    )
    command_id: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    uploaded_at: Mapped[float | None] = mapped_column(Float)
    size: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    content_type: Mapped[str | None] = mapped_column(String(128))
    content: Mapped[bytes | None] = mapped_column(LargeBinary)


# --- OTA deployments: bundle catalogue and per-device executions -------------------------


class Bundle(Base):
    """A firmware bundle published to the TUF repository (the catalogue row)."""

    __tablename__ = "bundles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(512), unique=True)
    """The TUF target name (``<product>-<model>-<version>-r<counter>.tar.gz``)."""
    product: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64), index=True)
    hardware_revisions: Mapped[list[str]] = mapped_column(JSON)
    release_counter: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(64), index=True)
    min_agent_version: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    published_at: Mapped[float] = mapped_column(Float)
    published_by: Mapped[str] = mapped_column(String(128))
    preprod_completed_at: Mapped[float | None] = mapped_column(Float)


class Execution(Base):
    """One device asked to install one bundle, and where that stands."""

    __tablename__ = "executions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_key: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    bundle_id: Mapped[int] = mapped_column(ForeignKey("bundles.id"), index=True)
    rollout_id: Mapped[str | None] = mapped_column(String(64))
    wave: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    phase: Mapped[str] = mapped_column(String(16))
    phase_at: Mapped[float] = mapped_column(Float)
    failure_class: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    attack: Mapped[str | None] = mapped_column(String(64))
    command_id: Mapped[str | None] = mapped_column(String(64))
    from_version: Mapped[str | None] = mapped_column(String(64))
    timeouts: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    sent_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))

    device: Mapped[Device] = relationship(lazy="joined", innerjoin=True)
    bundle: Mapped[Bundle] = relationship(lazy="joined", innerjoin=True)

    __table_args__ = (
        Index("ix_executions_device_status", "device_key", "status"),
        Index("ix_executions_rollout_wave_status", "rollout_id", "wave", "status"),
        # At most one open execution per device, enforced by the database as well.
        Index(
            "uq_executions_open_device",
            "device_key",
            unique=True,
            sqlite_where=text("status IN ('pending', 'sent', 'in_progress')"),
            postgresql_where=text("status IN ('pending', 'sent', 'in_progress')"),
        ),
    )


class ExecutionEvent(Base):
    """One state a device reported for an execution (or the server's timeout/cancel)."""

    __tablename__ = "execution_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    execution_id: Mapped[str] = mapped_column(
        ForeignKey("executions.id", ondelete="CASCADE"), index=True
    )
    state: Mapped[str] = mapped_column(String(16))
    device_ts: Mapped[float | None] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)
    failure_class: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    attack: Mapped[str | None] = mapped_column(String(64))


# --- end of OTA deployments ----------------------------------------------------------------
# --- recalls, warranty, RMA and parts (migration 0003) --------------------------------


class RecallCampaign(Base):
    """A recall: scope predicate, remedies, lifecycle (draft -> open -> closed)."""

    __tablename__ = "recall_campaigns"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), index=True)
    safety_critical: Mapped[bool] = mapped_column(Boolean, default=False)
    scope: Mapped[dict[str, Any]] = mapped_column(JSON)
    remedy_version: Mapped[str | None] = mapped_column(String(64))
    """Software remedy: devices reporting this version (or a higher release) are remedied."""
    blocked_versions: Mapped[list[str]] = mapped_column(JSON, default=list)
    physical_action: Mapped[str | None] = mapped_column(String(16))
    """return / replace / inspect, or None for a software-only recall."""
    remedy_rollout_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    opened_at: Mapped[float | None] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float)


class RecallDevice(Base):
    """A device of a recall's frozen population, why it matched and where it stands."""

    __tablename__ = "recall_devices"

    campaign_id: Mapped[str] = mapped_column(
        ForeignKey("recall_campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    device_key: Mapped[int] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    state: Mapped[str] = mapped_column(String(16), index=True)
    matched: Mapped[list[str]] = mapped_column(JSON)
    """The predicate clauses this device matched (the explanation)."""
    added_at: Mapped[float] = mapped_column(Float)
    added_how: Mapped[str] = mapped_column(String(16))
    """``opening`` (frozen population) or ``added`` (found later, added explicitly)."""
    state_changed_at: Mapped[float] = mapped_column(Float)
    remedied_via: Mapped[str | None] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(Text, default="")
    safe_mode_command_id: Mapped[str | None] = mapped_column(String(64))


class RecallSnapshot(Base):
    """Completion of a recall at one moment (the progress-over-time series)."""

    __tablename__ = "recall_snapshots"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[str] = mapped_column(
        ForeignKey("recall_campaigns.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[float] = mapped_column(Float)
    population: Mapped[int] = mapped_column(Integer)
    remedied: Mapped[int] = mapped_column(Integer)
    not_needed: Mapped[int] = mapped_column(Integer)
    unreachable: Mapped[int] = mapped_column(Integer)
    raw_rate: Mapped[float] = mapped_column(Float)
    adjusted_rate: Mapped[float | None] = mapped_column(Float)


class WarrantyRule(Base):
    """Coverage for a model in a region (``*`` = any region): months from activation."""

    __tablename__ = "warranty_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    region: Mapped[str] = mapped_column(String(64), default="*")
    months: Mapped[int] = mapped_column(Integer)
    covers: Mapped[list[str]] = mapped_column(JSON, default=list)
    """Failure modes or part kinds covered; ``["*"]`` covers everything."""
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("uq_warranty_rules_model_region", "model", "region", unique=True),)


class WarrantyClaim(Base):
    """A warranty claim with its automatic check results and links to evidence."""

    __tablename__ = "warranty_claims"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_ref: Mapped[str] = mapped_column(String(128))
    """What the claimant gave (device id or serial), kept even when unknown."""
    device_key: Mapped[int | None] = mapped_column(
        ForeignKey("devices.id", ondelete="SET NULL"), index=True
    )
    failure_mode: Mapped[str] = mapped_column(String(64), index=True)
    part_kind: Mapped[str | None] = mapped_column(String(64))
    part_serial: Mapped[str | None] = mapped_column(String(128))
    failure_date: Mapped[date]
    description: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), index=True)
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    decided_at: Mapped[float | None] = mapped_column(Float)
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decision_note: Mapped[str] = mapped_column(Text, default="")


class Part(Base):
    """A serialised part with its genealogy (installations, repairs) and stock state."""

    __tablename__ = "parts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    condition: Mapped[str] = mapped_column(String(16))
    stock_state: Mapped[str] = mapped_column(String(16), index=True)
    installed_on: Mapped[int | None] = mapped_column(
        ForeignKey("devices.id", ondelete="SET NULL"), index=True
    )
    hours_in_service: Mapped[float] = mapped_column(Float, default=0.0)
    """Hours in service over finished installations (the current one is added on read)."""
    repairs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[float] = mapped_column(Float)


class PartInstallation(Base):
    """One stint of a part in a device: the unit of exposure for reliability."""

    __tablename__ = "part_installations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    part_id: Mapped[int] = mapped_column(ForeignKey("parts.id", ondelete="CASCADE"), index=True)
    device_key: Mapped[int | None] = mapped_column(ForeignKey("devices.id", ondelete="SET NULL"))
    condition: Mapped[str] = mapped_column(String(16))
    """Condition of the part when installed (new / refurbished): reuse is tracked here."""
    installed_at: Mapped[float] = mapped_column(Float)
    removed_at: Mapped[float | None] = mapped_column(Float)
    failed: Mapped[bool] = mapped_column(Boolean, default=False)


class Rma(Base):
    """A return: claimed -> approved -> returned -> inspected -> refurbished | scrapped."""

    __tablename__ = "rmas"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    claim_id: Mapped[int | None] = mapped_column(
        ForeignKey("warranty_claims.id", ondelete="SET NULL"), index=True
    )
    device_key: Mapped[int | None] = mapped_column(
        ForeignKey("devices.id", ondelete="SET NULL"), index=True
    )
    part_id: Mapped[int | None] = mapped_column(
        ForeignKey("parts.id", ondelete="SET NULL"), index=True
    )
    state: Mapped[str] = mapped_column(String(16), index=True)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


# --- end of recalls, warranty, RMA and parts -------------------------------------------
