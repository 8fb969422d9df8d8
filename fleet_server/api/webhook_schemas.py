"""Request and response models of ``/api/v1/webhooks`` (as they appear in OpenAPI)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet_server.domain.webhooks import SUBSCRIBABLE

EventName = Literal[
    "rollout.halted",
    "rollout.completed",
    "rollout.rolled_back",
    "alarm.raised",
    "device.offline",
    "recall.state_changed",
    "claim.filed",
    "advisory.exposure",
    "ticket.created",
    "ticket.sla_warning",
    "ticket.sla_breached",
    "slo.alert",
]
assert set(EventName.__args__) == set(SUBSCRIBABLE)  # type: ignore[attr-defined]


class WebhookIn(BaseModel):
    """A subscription: where to POST which events."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    url: str = Field(min_length=1, max_length=2048, description="http:// or https:// URL")
    events: list[EventName] = Field(min_length=1)
    min_severity: Literal["info", "warning", "minor", "major", "critical"] | None = Field(
        default=None, description="alarm.raised only at or above this severity"
    )
    offline_after_s: float | None = Field(
        default=None,
        gt=0,
        le=30 * 86400,
        description="device.offline once a device has been offline this long (default 300)",
    )


class WebhookPatch(BaseModel):
    """Enable (resets the failure count; pending deliveries resume) or disable."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool


class WebhookOut(BaseModel):
    """A subscription (its secret is never shown again after creation)."""

    id: int
    name: str
    url: str
    events: list[str]
    min_severity: str | None
    offline_after_s: float | None
    enabled: bool
    consecutive_failures: int
    disabled_at: datetime | None
    disabled_reason: str | None
    created_at: datetime
    created_by: str
    deliveries: dict[str, int] | None = Field(
        default=None, description="deliveries per status (show only)"
    )


class WebhookCreated(WebhookOut):
    """The new subscription with its signing secret, shown this once."""

    secret: str = Field(description="HMAC-SHA256 key; store it now, it is not shown again")


class AttemptOut(BaseModel):
    """One HTTP attempt of a delivery."""

    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveryOut(BaseModel):
    """One event for one subscription and where it stands."""

    id: int
    subscription_id: int
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]
    attempt_log: list[AttemptOut] = []
