"""Encoding and strict decoding of protocol messages.

``encode`` gives compact, deterministic JSON bytes (fixed field order, sorted dict keys,
no whitespace). ``decode`` accepts a topic and raw payload and returns a typed message or
raises exactly one exception type, :class:`~protocol.errors.ProtocolDecodeError`, whose
``reason`` says what was wrong. It never raises anything else, whatever the bytes.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from protocol.errors import ProtocolDecodeError, Reason
from protocol.messages import (
    SCHEMA_MAJOR,
    DeviceCommand,
    DeviceEvent,
    Envelope,
    Presence,
    Telemetry,
)
from protocol.topics import Kind, parse_topic

MAX_PAYLOAD_BYTES: dict[Kind, int] = {
    Kind.TELEMETRY: 256 * 1024,
    Kind.EVENT: 64 * 1024,
    Kind.PRESENCE: 4 * 1024,
    Kind.COMMAND: 64 * 1024,
}
"""Largest accepted payload per topic kind, checked before any parsing."""

_VERSION_RE = re.compile(r"^(\d{1,4})\.(\d{1,4})$")
_ENCODER = msgspec.json.Encoder(order="deterministic")

_DECODERS: dict[Kind, msgspec.json.Decoder[Any]] = {
    Kind.TELEMETRY: msgspec.json.Decoder(Telemetry),
    Kind.EVENT: msgspec.json.Decoder(DeviceEvent),
    Kind.PRESENCE: msgspec.json.Decoder(Presence),
    Kind.COMMAND: msgspec.json.Decoder(DeviceCommand),
}
_TAGGED = (Kind.EVENT, Kind.COMMAND)


class _Head(msgspec.Struct):
    """The few fields read before full validation; typed ``Any`` so this never fails
    on a JSON object, whatever its contents."""

    v: Any = None
    device_id: Any = None
    kind: Any = None
    id: Any = None


_HEAD_DECODER = msgspec.json.Decoder(_Head)


def encode(message: Envelope) -> bytes:
    """Serialise a message to its wire bytes (compact, deterministic JSON)."""
    return _ENCODER.encode(message)


def kind_of(message: Envelope) -> Kind:
    """The topic kind a message is published on."""
    if isinstance(message, Telemetry):
        return Kind.TELEMETRY
    if isinstance(message, Presence):
        return Kind.PRESENCE
    if isinstance(message, DeviceEvent):
        return Kind.EVENT
    if isinstance(message, DeviceCommand):
        return Kind.COMMAND
    raise TypeError(f"not a protocol message: {type(message).__name__}")


def decode(topic: str, payload: bytes | bytearray | memoryview) -> Any:
    """Decode the payload received on ``topic`` into its typed message.

    Checks, in order: topic shape, size limit, JSON syntax, object shape, schema
    version, field types and ranges, and that the payload's ``device_id`` equals the
    topic's. The first failure raises :class:`ProtocolDecodeError`.
    """
    device_id, kind = parse_topic(topic)
    return decode_payload(kind, device_id, payload)


def decode_payload(kind: Kind, device_id: str, payload: bytes | bytearray | memoryview) -> Any:
    """Decode ``payload`` as a ``kind`` message that must belong to ``device_id``."""
    limit = MAX_PAYLOAD_BYTES[kind]
    size = len(payload)
    if size > limit:
        raise ProtocolDecodeError(
            Reason.OVERSIZE, f"{kind.value} payload is {size} bytes; the limit is {limit}"
        )
    try:
        head = _HEAD_DECODER.decode(payload)
    except msgspec.ValidationError:
        raise ProtocolDecodeError(
            Reason.NOT_AN_OBJECT, "payload is valid JSON but not a JSON object"
        ) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ProtocolDecodeError(Reason.MALFORMED_JSON, _short(str(exc))) from None

    message_id = head.id if isinstance(head.id, str) and len(head.id) <= 128 else None
    if not (type(head.v) is str and head.v in _GOOD_VERSIONS):
        _check_version(head.v, message_id)

    try:
        message = _DECODERS[kind].decode(payload)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if kind in _TAGGED and isinstance(head.kind, str) and text.endswith("`$.kind`"):
            raise ProtocolDecodeError(
                Reason.UNKNOWN_KIND,
                f"unknown {kind.value} kind {head.kind[:64]!r}",
                message_id=message_id,
            ) from None
        raise ProtocolDecodeError(
            Reason.INVALID_FIELD, _short(text), message_id=message_id
        ) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ProtocolDecodeError(Reason.MALFORMED_JSON, _short(str(exc))) from None

    if message.device_id != device_id:
        raise ProtocolDecodeError(
            Reason.DEVICE_MISMATCH,
            f"payload device_id {message.device_id!r} does not match topic device {device_id!r}",
            message_id=message_id,
        )
    return message


_GOOD_VERSIONS: set[str] = set()
"""Version strings that passed :func:`_check_version` (a few at most)."""


def _check_version(v: object, message_id: str | None) -> None:
    if not isinstance(v, str) or not (match := _VERSION_RE.match(v)):
        raise ProtocolDecodeError(
            Reason.MISSING_VERSION,
            'schema version field "v" must be a "MAJOR.MINOR" string',
            message_id=message_id,
        )
    major = int(match.group(1))
    if major != SCHEMA_MAJOR:
        raise ProtocolDecodeError(
            Reason.UNSUPPORTED_VERSION,
            f"schema major version {major} is not supported (this build speaks {SCHEMA_MAJOR})",
            message_id=message_id,
        )
    if len(_GOOD_VERSIONS) < 16:
        _GOOD_VERSIONS.add(v)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
