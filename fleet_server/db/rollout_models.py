"""Tables of staged rollouts: the rollout itself, its exclusions and its event history.

Which device is in which wave, and how far it got, lives on the deployment executions
(``executions.rollout_id`` / ``executions.wave``): a rollout is a plan over the same
per-device primitive a single-device update uses.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleet_server.db.models import Base, BigId


class Rollout(Base):
    """A bundle, a target selection and a policy, with the engine's progress."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    bundle_id: Mapped[int] = mapped_column(ForeignKey("bundles.id"), index=True)
    selector: Mapped[dict[str, Any]] = mapped_column(JSON)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    channel: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True)
    seed: Mapped[str] = mapped_column(String(40))
    waves_total: Mapped[int] = mapped_column(Integer, default=0)
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    wave_started_at: Mapped[float | None] = mapped_column(Float)
    bake_started_at: Mapped[float | None] = mapped_column(Float)
    halt_reason: Mapped[str | None] = mapped_column(Text)
    halt_stratum: Mapped[str | None] = mapped_column(String(160))
    halt_class: Mapped[str | None] = mapped_column(String(32))
    rollback_version: Mapped[str | None] = mapped_column(String(64))
    resumed_at: Mapped[float | None] = mapped_column(Float)
    """Set when an operator resumes a halted rollout: failures that ended before it are
    acknowledged and left out of later verdicts."""
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    force_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class RolloutExclusion(Base):
    """A device the target selected but the rollout left out, and why."""

    __tablename__ = "rollout_exclusions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), index=True
    )
    device_key: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        Index("uq_rollout_exclusions_rollout_device", "rollout_id", "device_key", unique=True),
    )


class RolloutEvent(Base):
    """Everything that happened to a rollout: operator actions and engine decisions."""

    __tablename__ = "rollout_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    wave: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128))
