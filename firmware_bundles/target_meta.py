"""Edgefleet's custom metadata on a TUF target: what a device needs to decide on a bundle.

The server writes it when it publishes a bundle (``TargetFile.custom == {"edgefleet":
{...}}``); the agent reads it from the *signed* targets metadata, so it can refuse a
bundle for the wrong hardware or with a lower release counter before downloading it.
This module is pure (msgspec) and shared by the server and the agent.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from firmware_bundles.manifest import (
    HardwareRevision,
    Manifest,
    ManifestError,
    Slug,
    is_semver,
)

CUSTOM_KEY = "edgefleet"
"""Key under ``TargetFile.custom`` that holds the Edgefleet fields."""


class TargetMeta(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """Edgefleet fields of one published bundle (unknown fields ignored: newer servers)."""

    product: Slug
    model: Slug
    version: str
    hardware_revisions: Annotated[list[HardwareRevision], msgspec.Meta(min_length=1)]
    release_counter: Annotated[int, msgspec.Meta(ge=0)]
    channel: Slug
    min_agent_version: str

    def __post_init__(self) -> None:
        for field in ("version", "min_agent_version"):
            if not is_semver(getattr(self, field)):
                raise ManifestError(f"{field} is not a semantic version")

    def to_custom(self) -> dict[str, Any]:
        """The ``custom`` object to store on the TUF ``TargetFile``."""
        return {CUSTOM_KEY: msgspec.to_builtins(self)}

    def compatible_with(self, hardware_revision: str) -> bool:
        """True when the bundle lists ``hardware_revision``."""
        return hardware_revision in self.hardware_revisions


def target_meta_for(manifest: Manifest, channel: str) -> TargetMeta:
    """The custom metadata to publish for a bundle with ``manifest`` on ``channel``.

    Raises:
        ManifestError: ``channel`` is not a slug (lowercase letters, digits, dashes).
    """
    fields = {
        "product": manifest.product,
        "model": manifest.model,
        "version": manifest.version,
        "hardware_revisions": list(manifest.hardware_revisions),
        "release_counter": manifest.release_counter,
        "channel": channel,
        "min_agent_version": manifest.min_agent_version,
    }
    try:
        return msgspec.convert(fields, type=TargetMeta)
    except msgspec.ValidationError as exc:
        raise ManifestError(f"invalid target metadata: {exc}") from None


def parse_target_custom(custom: object) -> TargetMeta:
    """Read the Edgefleet fields from a ``TargetFile.custom`` value.

    Raises:
        ManifestError: missing ``edgefleet`` object or invalid fields.
    """
    if not isinstance(custom, dict) or not isinstance(custom.get(CUSTOM_KEY), dict):
        raise ManifestError(f"target has no '{CUSTOM_KEY}' custom metadata")
    try:
        return msgspec.convert(custom[CUSTOM_KEY], type=TargetMeta)
    except msgspec.ValidationError as exc:
        raise ManifestError(f"invalid target custom metadata: {exc}") from None
