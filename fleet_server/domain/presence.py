"""Presence ordering: which presence message wins, and when a silent device is offline.

The agent publishes a retained ``online`` after each connect and registers a retained
``offline`` last will built just *before* that ``online`` (so the will's seq is lower).
Messages can arrive late (a will published by the broker after the device already
reconnected, a redelivery after an ingest restart), so the newest message is not the last
one received. The rule:

* **Same boot** (same ``boot_id`` as the presence we hold):
  an ``online`` wins when its seq is higher than the held presence seq.
  An ``offline`` (will) wins when its seq is higher than the *floor*: the seq of the
  presence message that preceded the current ``online`` in this boot. A will is built at
  connect time, after everything the previous connection sent, so a late will of an older
  connection is at or below the floor and is ignored, while the will of the current
  connection (lower than the current ``online`` but above the floor) applies.
* **Different boot**: the message wins when its ``ts`` is newer than the held one
  (a restart, or a device that lost its state and restarted its seq lower). An ``online``
  of a new boot also wins when its seq is higher (seq is persisted across reboots, so this
  covers a device clock that went backwards). The ingest passes ``ts`` corrected by the
  device's measured clock offset when that clock is not trusted (server receipt order),
  and a held ``ts`` in the server's future (stamped by a clock running ahead) never wins.
* **Timeout** (a backstop, not the source of presence): presence comes from the
  connection (the retained ``online``, the broker's last will). The sweep only covers a
  lost will (broker restart without persistence): a device silent for longer than
  ``timeout_factor`` times its *silence bound*, the longer of its MQTT keepalive and the
  publish interval it announces, is marked offline (reason ``timeout``); any later
  message from it marks it online again (reason ``traffic``). A will-offline device only
  comes back online with a presence ``online``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class PresenceReason(StrEnum):
    """Why a device has its current presence."""

    ONLINE = "online"
    OFFLINE = "offline"
    TIMEOUT = "timeout"
    TRAFFIC = "traffic"


@dataclass(frozen=True, slots=True)
class PresenceView:
    """The presence the server holds for one device."""

    online: bool | None
    reason: PresenceReason | None
    boot_id: str | None
    seq: int | None
    ts: float | None
    floor_seq: int | None


UNKNOWN = PresenceView(None, None, None, None, None, None)


@dataclass(frozen=True, slots=True)
class PresenceMessage:
    """A received presence message (online, or the offline will)."""

    online: bool
    boot_id: str
    seq: int
    ts: float


def apply_presence(
    held: PresenceView, msg: PresenceMessage, *, now: float | None = None, max_skew_s: float = 0.0
) -> PresenceView | None:
    """The new presence after ``msg``, or None when ``msg`` is stale and must be ignored.

    With ``now`` (server time), a held ``ts`` more than ``max_skew_s`` in the future was
    stamped by a clock running ahead: a message of another boot replaces it."""
    if held.boot_id is None or held.seq is None or held.ts is None:
        return _accept(held, msg, same_boot=False)
    if msg.boot_id == held.boot_id:
        if msg.online:
            return _accept(held, msg, same_boot=True) if msg.seq > held.seq else None
        floor = -1 if held.floor_seq is None else held.floor_seq
        if msg.seq > floor and not (held.online is False and msg.seq <= held.seq):
            return _accept(held, msg, same_boot=True)
        return None
    future = now is not None and held.ts > now + max_skew_s
    newer = msg.ts > held.ts or future or (msg.online and msg.seq > held.seq)
    return _accept(held, msg, same_boot=False) if newer else None


def _accept(held: PresenceView, msg: PresenceMessage, *, same_boot: bool) -> PresenceView:
    if msg.online:
        # The floor for this connection's will is the presence seq held before it.
        floor = held.seq if same_boot else -1
        reason = PresenceReason.ONLINE
    else:
        floor = held.floor_seq if same_boot else -1
        reason = PresenceReason.OFFLINE
    return PresenceView(msg.online, reason, msg.boot_id, msg.seq, msg.ts, floor)


def silence_bound(keepalive_s: float | None, interval_s: float | None, defaults: Defaults) -> float:
    """The longest a healthy connected device stays silent: the longer of its MQTT
    keepalive and its announced publish interval (server defaults where not announced)."""
    return max(
        keepalive_s if keepalive_s is not None else defaults.keepalive_s,
        interval_s if interval_s is not None else defaults.interval_s,
    )


@dataclass(frozen=True, slots=True)
class Defaults:
    """What the server assumes for a device that announced no keepalive or interval (the
    agent's own defaults: ``[presence]`` settings must agree with them)."""

    keepalive_s: float
    interval_s: float


def is_timed_out(last_seen: float | None, bound_s: float, factor: float, now: float) -> bool:
    """True when a device silent since ``last_seen`` is past ``factor`` x its silence
    bound (see :func:`silence_bound`)."""
    if last_seen is None:
        return False
    return now - last_seen > bound_s * factor


def mark_timeout(held: PresenceView) -> PresenceView:
    """The presence after the sweep found the device silent for too long."""
    return replace(held, online=False, reason=PresenceReason.TIMEOUT)


def mark_traffic(held: PresenceView) -> PresenceView | None:
    """A device that timed out sent something again: it is online (None if no change)."""
    if held.online is False and held.reason is PresenceReason.TIMEOUT:
        return replace(held, online=True, reason=PresenceReason.TRAFFIC)
    return None
