"""Tables of software composition: bundle components, licence policies, waivers and
reviews, OSV advisories, their matches to bundles, VEX statements and exposure events."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleet_server.db.models import Base, BigId, Device

# "Devices running release X" (inventory, exposure) looks devices up by model and version;
# with the status the count is answered from the index alone.
Index("ix_devices_model_software_version", Device.model, Device.software_version, Device.status)


class BundleComponent(Base):
    """One component of a published bundle (from its SBOM)."""

    __tablename__ = "bundle_components"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    bundle_id: Mapped[int] = mapped_column(ForeignKey("bundles.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[str] = mapped_column(String(200))
    purl: Mapped[str | None] = mapped_column(String(1000))
    purl_type: Mapped[str | None] = mapped_column(String(32))
    package: Mapped[str | None] = mapped_column(String(500))
    """Lower-case ``namespace/name`` of the purl: the key advisories match on."""
    licence: Mapped[str | None] = mapped_column(String(1000))
    supplier: Mapped[str | None] = mapped_column(String(500))
    hashes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (
        Index("ix_bundle_components_bundle", "bundle_id"),
        Index("ix_bundle_components_package", "purl_type", "package"),
    )


class LicencePolicy(Base):
    """One model's licence policy document (see ``domain/licence_policy``)."""

    __tablename__ = "licence_policies"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str] = mapped_column(String(128))


class LicenceWaiver(Base):
    """An admin's waiver of a denied component (``name@version`` or a purl) for a model."""

    __tablename__ = "licence_waivers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    component: Mapped[str] = mapped_column(String(1000))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))


class LicenceReview(Base):
    """A bundle's licence review: ``not_required``, ``pending``, ``approved`` or
    ``rejected``; production needs ``not_required`` or ``approved``."""

    __tablename__ = "licence_reviews"

    bundle_id: Mapped[int] = mapped_column(
        ForeignKey("bundles.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[str] = mapped_column(String(16), index=True)
    evaluation: Mapped[dict[str, Any]] = mapped_column(JSON)
    decided_at: Mapped[float | None] = mapped_column(Float)
    decided_by: Mapped[str | None] = mapped_column(String(128))
    note: Mapped[str] = mapped_column(Text, default="")


class AdvisoryRow(Base):
    """One imported OSV advisory."""

    __tablename__ = "advisories"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    summary: Mapped[str] = mapped_column(Text, default="")
    severity: Mapped[str] = mapped_column(String(16), index=True)
    score: Mapped[float | None] = mapped_column(Float)
    vector: Mapped[str | None] = mapped_column(String(256))
    modified: Mapped[str] = mapped_column(String(64))
    withdrawn: Mapped[bool] = mapped_column(default=False)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    imported_at: Mapped[float] = mapped_column(Float)
    matched_at: Mapped[float | None] = mapped_column(Float, index=True)
    """When the jobs process last matched it; None = (re-)match on the next run."""


class AdvisoryPackage(Base):
    """A package an advisory names (purl type + lower-case name): the match index."""

    __tablename__ = "advisory_packages"

    advisory_id: Mapped[str] = mapped_column(
        ForeignKey("advisories.id", ondelete="CASCADE"), primary_key=True
    )
    purl_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    package: Mapped[str] = mapped_column(String(500), primary_key=True)

    __table_args__ = (Index("ix_advisory_packages_package", "purl_type", "package"),)


class AdvisoryMatch(Base):
    """An advisory affecting a component of a bundle; VEX may suppress it."""

    __tablename__ = "advisory_matches"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    advisory_id: Mapped[str] = mapped_column(ForeignKey("advisories.id", ondelete="CASCADE"))
    bundle_id: Mapped[int] = mapped_column(ForeignKey("bundles.id", ondelete="CASCADE"))
    component_id: Mapped[int] = mapped_column(
        ForeignKey("bundle_components.id", ondelete="CASCADE")
    )
    status: Mapped[str] = mapped_column(String(32))
    justification: Mapped[str | None] = mapped_column(Text)
    fixed_in: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        Index("ix_advisory_matches_advisory", "advisory_id", "bundle_id"),
        Index("ix_advisory_matches_bundle", "bundle_id"),
    )


class BundleMatchState(Base):
    """When a bundle was last matched against every advisory (absent: not yet)."""

    __tablename__ = "bundle_match_state"

    bundle_id: Mapped[int] = mapped_column(
        ForeignKey("bundles.id", ondelete="CASCADE"), primary_key=True
    )
    matched_at: Mapped[float] = mapped_column(Float)


class VexRecord(Base):
    """A VEX statement attached to a bundle."""

    __tablename__ = "vex_statements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bundle_id: Mapped[int] = mapped_column(ForeignKey("bundles.id", ondelete="CASCADE"), index=True)
    vulnerability: Mapped[str] = mapped_column(String(128))
    purl: Mapped[str | None] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(32))
    justification: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(128))


class ExposureEvent(Base):
    """A fleet event: a critical advisory newly exposes devices (alarm-like, one per
    advisory while open)."""

    __tablename__ = "exposure_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    advisory_id: Mapped[str] = mapped_column(
        ForeignKey("advisories.id", ondelete="CASCADE"), index=True
    )
    severity: Mapped[str] = mapped_column(String(16))
    exposed_devices: Mapped[int] = mapped_column(Integer)
    bundles: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)
    raised_at: Mapped[float] = mapped_column(Float)
    acked_at: Mapped[float | None] = mapped_column(Float)
    acked_by: Mapped[str | None] = mapped_column(String(128))
