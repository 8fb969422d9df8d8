"""Typed decode errors: the one exception family the protocol raises on bad input.

Every rejection carries a machine-readable :class:`Reason` so the server can count
rejections per reason (``fleet_ingest_rejected_total{reason=...}``) and the agent can
acknowledge a bad command with a precise cause.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a message was rejected. The values are stable: they are metric labels."""

    BAD_TOPIC = "bad_topic"
    """The topic is not ``fleet/v1/{device_id}/{kind}`` with a valid device id and kind."""
    OVERSIZE = "oversize"
    """The payload is larger than the limit for its topic."""
    MALFORMED_JSON = "malformed_json"
    """The payload is not a UTF-8 JSON document."""
    NOT_AN_OBJECT = "not_an_object"
    """The payload is JSON but not a JSON object."""
    MISSING_VERSION = "missing_version"
    """The schema version field ``v`` is absent or not a ``"MAJOR.MINOR"`` string."""
    UNSUPPORTED_VERSION = "unsupported_version"
    """The major schema version is not one this code understands."""
    UNKNOWN_KIND = "unknown_kind"
    """An event or command ``kind`` that this schema version does not define."""
    INVALID_FIELD = "invalid_field"
    """A field is missing, has the wrong type or is out of range."""
    DEVICE_MISMATCH = "device_mismatch"
    """The ``device_id`` in the payload differs from the one in the topic."""


class ProtocolDecodeError(ValueError):
    """A message could not be accepted.

    ``reason`` is the counted code; ``detail`` is a human sentence naming the field
    or limit at fault; ``message_id`` is the command id when one could still be read
    (so a device can acknowledge an unknown or invalid command by id).
    """

    def __init__(self, reason: Reason, detail: str, *, message_id: str | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.message_id = message_id
