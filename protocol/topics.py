"""MQTT topic names of the fleet protocol: builders, parser and subscription filters.

All device traffic lives under ``fleet/v1/{device_id}/{kind}``. The device id in the topic
is the identity the broker authenticated (ACLs are written on it), so it is the one the
server trusts; the payload's copy must agree.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache

from protocol.errors import ProtocolDecodeError, Reason

TOPIC_ROOT = "fleet/v1"

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)


class Kind(StrEnum):
    """The four topic kinds and their direction."""

    TELEMETRY = "telemetry"  # device -> cloud, QoS 1
    EVENT = "event"  # device -> cloud, QoS 1
    PRESENCE = "presence"  # device -> cloud, QoS 1, retained; also the last will
    COMMAND = "command"  # cloud -> device, QoS 1


DEVICE_TO_CLOUD = (Kind.TELEMETRY, Kind.EVENT, Kind.PRESENCE)

QOS: dict[Kind, int] = {kind: 1 for kind in Kind}
RETAINED: dict[Kind, bool] = {kind: kind is Kind.PRESENCE for kind in Kind}


def is_valid_device_id(device_id: str) -> bool:
    """True when ``device_id`` can be used in a topic and as a certificate subject.

    Letters, digits, ``.``, ``_`` and ``-``; 1 to 64 characters; no MQTT wildcards or
    separators, so one device can never name a filter that matches another.
    """
    return bool(_DEVICE_ID_RE.match(device_id))


def topic(device_id: str, kind: Kind | str) -> str:
    """The topic a message of ``kind`` for ``device_id`` is published on."""
    if not is_valid_device_id(device_id):
        raise ValueError(f"invalid device id {device_id!r}: expected {DEVICE_ID_PATTERN}")
    return f"{TOPIC_ROOT}/{device_id}/{Kind(kind).value}"


@lru_cache(maxsize=1 << 16)
def parse_topic(name: str) -> tuple[str, Kind]:
    """Split a concrete topic into ``(device_id, kind)``.

    Raises :class:`ProtocolDecodeError` with ``Reason.BAD_TOPIC`` for anything that is
    not exactly ``fleet/v1/{valid device id}/{known kind}``. The answers for the last
    65,536 valid topics are remembered (a server sees the same topics again and again).
    """
    parts = name.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT:
        raise ProtocolDecodeError(
            Reason.BAD_TOPIC, f"topic {name[:120]!r} is not {TOPIC_ROOT}/<device_id>/<kind>"
        )
    device_id, kind = parts[2], parts[3]
    if not is_valid_device_id(device_id):
        raise ProtocolDecodeError(
            Reason.BAD_TOPIC, f"device id {device_id[:80]!r} in topic is not valid"
        )
    try:
        return device_id, Kind(kind)
    except ValueError:
        raise ProtocolDecodeError(
            Reason.BAD_TOPIC,
            f"unknown topic kind {kind[:40]!r}; expected one of "
            + ", ".join(k.value for k in Kind),
        ) from None


def subscription(kind: Kind | str, device_id: str = "+") -> str:
    """A subscription filter for ``kind`` messages of one device, or all (``+``)."""
    if device_id != "+" and not is_valid_device_id(device_id):
        raise ValueError(f"invalid device id {device_id!r}")
    return f"{TOPIC_ROOT}/{device_id}/{Kind(kind).value}"


def shared_subscription(group: str, kind: Kind | str) -> str:
    """An MQTT 5 shared subscription, so several ingest workers split the load.

    ``shared_subscription("ingest", Kind.TELEMETRY)`` gives
    ``$share/ingest/fleet/v1/+/telemetry``.
    """
    if not group or any(c in group for c in "/+#"):
        raise ValueError(f"invalid shared subscription group {group!r}")
    return f"$share/{group}/{subscription(kind)}"
