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
  covers a device clock that went backwards).
* **Timeout**: a device whose last message is older than ``timeout_factor`` times its
  keepalive is marked offline by the sweep (reason ``timeout``); any later message from it
  marks it online again (reason ``traffic``). A will-offline device only comes back online
  with a presence ``online``.
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


def apply_presence(held: PresenceView, msg: PresenceMessage) -> PresenceView | None:
    """The new presence after ``msg``, or None when ``msg`` is stale and must be ignored."""
    if held.boot_id is None or held.seq is None or held.ts is None:
        return _accept(held, msg, same_boot=False)
    if msg.boot_id == held.boot_id:
        if msg.online:
            return _accept(held, msg, same_boot=True) if msg.seq > held.seq else None
        floor = -1 if held.floor_seq is None else held.floor_seq
        if msg.seq > floor and not (held.online is False and msg.seq <= held.seq):
            return _accept(held, msg, same_boot=True)
        return None
    newer = msg.ts > held.ts or (msg.online and msg.seq > held.seq)
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


def is_timed_out(last_seen: float | None, keepalive_s: float, factor: float, now: float) -> bool:
    """True when a device silent since ``last_seen`` is past its heartbeat deadline."""
    if last_seen is None:
        return False
    return now - last_seen > keepalive_s * factor


def mark_timeout(held: PresenceView) -> PresenceView:
    """The presence after the sweep found the device silent for too long."""
    return replace(held, online=False, reason=PresenceReason.TIMEOUT)


def mark_traffic(held: PresenceView) -> PresenceView | None:
    """A device that timed out sent something again: it is online (None if no change)."""
    if held.online is False and held.reason is PresenceReason.TIMEOUT:
        return replace(held, online=True, reason=PresenceReason.TRAFFIC)
    return None
