"""Response models of ``/api/v1/recalls``: campaigns, their population and progress.

Times are ISO 8601 UTC (:data:`~fleet_server.api.schema_times.Timestamp`); rates are
fractions in [0, 1] (or null with an empty denominator), each with its definition.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from fleet_server.api.schema_times import OpenModel, Timestamp


class RecallRemedy(BaseModel):
    """What fixes a member: a software release, blocked versions, a physical action."""

    software_version: str | None
    blocked_versions: list[str]
    physical_action: str | None
    rollout_id: str | None = Field(description="the rollout carrying the software remedy")


class CompletionCounts(BaseModel):
    """Members per outcome and both completion rates."""

    population: int
    remedied: int
    not_needed: int
    unreachable: int
    raw_rate: float | None = Field(description="(remedied + not needed) / population")
    adjusted_rate: float | None = Field(
        description="(remedied + not needed) / (population - unreachable)"
    )


class RecallCompletion(CompletionCounts, OpenModel):
    """Completion of a campaign: counts and both rates, labelled."""

    raw_rate_definition: str
    adjusted_rate_definition: str
    computed_at: Timestamp | None = Field(
        default=None, description="set when computed on demand (progress), not a snapshot"
    )


class RecallOut(BaseModel):
    """A recall campaign, its remedies and completion."""

    id: str
    title: str
    description: str
    state: str = Field(description="draft, open, closed or cancelled")
    safety_critical: bool
    scope: dict[str, Any] = Field(description="the population predicate as written")
    remedy: RecallRemedy
    created_at: Timestamp
    created_by: str
    opened_at: Timestamp | None
    closed_at: Timestamp | None
    completion: RecallCompletion


class RecallPage(BaseModel):
    """A page of recall campaigns, newest first."""

    items: list[RecallOut]
    next_cursor: str | None
    total: int


class BlockedVersions(BaseModel):
    """Versions blocked by recalls: version -> campaign id."""

    blocked: dict[str, str]


class PreviewDevice(BaseModel):
    """A device the scope matches, with the clauses it matched."""

    device_id: str
    matched: list[str]


class RecallPreview(BaseModel):
    """Who opening would freeze (draft) or who matches now but is not a member (open)."""

    campaign_id: str
    state: str
    new_only: bool
    count: int
    devices: list[PreviewDevice]


class RecallAdded(BaseModel):
    """Devices added after opening and the completion afterwards."""

    added: list[str]
    completion: RecallCompletion


class RecallMember(BaseModel):
    """A member of the frozen population, its state and why it is in."""

    device_id: str
    serial: str | None
    model: str | None
    batch: str | None
    software_version: str | None
    state: str = Field(description="notified, remedied, not_needed or unreachable")
    matched: list[str]
    added_how: str
    added_at: Timestamp
    state_changed_at: Timestamp | None
    remedied_via: str | None
    note: str | None
    safe_mode_command_id: str | None


class RecallMemberPage(BaseModel):
    """A page of the frozen population, by device id."""

    items: list[RecallMember]
    next_cursor: str | None
    total: int


class RecallExplain(BaseModel):
    """Why a device is (or is not) in a campaign, frozen and evaluated now."""

    campaign_id: str
    device_id: str
    in_population: bool
    state: str | None
    frozen_reason: list[str] | None
    added_how: str | None
    matches_now: bool
    matched_now: list[str]
    failed_now: list[str]


class RemedyTargets(BaseModel):
    """Members that still need the software remedy."""

    campaign_id: str
    remedy_version: str | None
    device_ids: list[str]


class OutcomesImported(BaseModel):
    """How many member outcomes a field-service CSV applied, per state."""

    campaign_id: str
    applied: int
    by_state: dict[str, int]


class RecallSnapshot(CompletionCounts):
    """Completion at one moment (taken by the hourly job)."""

    at: Timestamp


class RecallProgress(BaseModel):
    """Completion now and over time."""

    campaign_id: str
    current: RecallCompletion
    snapshots: list[RecallSnapshot]


class SafeModeSent(BaseModel):
    """A safe-mode command sent to one member."""

    device_id: str
    command_id: str


class SafeModeSkipped(BaseModel):
    """A member that got no safe-mode command, and why."""

    device_id: str
    why: str


class SafeModeResult(BaseModel):
    """The safe-mode commands sent for a safety recall."""

    campaign_id: str
    sent: list[SafeModeSent]
    skipped: list[SafeModeSkipped]
    publish_failed: list[str] = Field(description="devices whose command was not published")
