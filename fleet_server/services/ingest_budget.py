"""Per-device ingest budget: token buckets that keep one device from crowding out the rest.

Mosquitto 2.0 has no per-client rate limit, so fairness between devices comes from the
ingest. Every device has a message bucket and a byte bucket; a message that finds either
bucket short is *over budget*: the adapter acknowledges it at once (so a flood drains at
broker speed and never fills the ingest session's queue, where it would push out other
devices' messages) and does not store it. The excess is counted per device and handed to
the reporting side (metric, alarm, rate-limited warning) by :meth:`DeviceBudget.take_excess`.

Pure: time comes in as an argument, nothing here does I/O. Not thread-safe; the adapter
holds a lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BudgetPolicy:
    """Refill rates and burst sizes of each device's two buckets.

    The sustained rates (2 msg/s, 32 KiB/s) leave a device at agent defaults (one 2 KB
    telemetry message a minute) two orders of magnitude of headroom. The bursts (30,000
    messages, 64 MiB) are sized for catch-up: the agent replays its whole outbox at once
    after an outage, one message per publish interval (a week offline at defaults is
    10,080 messages, ~20 MB; the outbox holds at most 50 MiB)."""

    messages_per_s: float = 2.0
    message_burst: int = 30_000
    bytes_per_s: float = 32 * 1024
    byte_burst: int = 64 * 1024 * 1024
    max_devices: int = 100_000
    """Above this many tracked devices, buckets that are full again are forgotten (a
    forgotten device starts with a full bucket, which is the same thing)."""


@dataclass
class Excess:
    """What one device sent over budget since the last :meth:`DeviceBudget.take_excess`."""

    messages: int = 0
    bytes: int = 0


@dataclass
class _Buckets:
    messages: float
    bytes: float
    at: float


@dataclass
class DeviceBudget:
    """Token buckets per device id; :meth:`admit` decides one message."""

    policy: BudgetPolicy = field(default_factory=BudgetPolicy)
    _buckets: dict[str, _Buckets] = field(default_factory=dict)
    _excess: dict[str, Excess] = field(default_factory=dict)
    _sweep_above: int = 0

    def admit(self, device_id: str, nbytes: int, now: float) -> bool:
        """True when the message fits both of the device's buckets (tokens are taken);
        False when it is over budget (nothing is taken, the excess is recorded)."""
        p = self.policy
        b = self._buckets.get(device_id)
        if b is None:
            if len(self._buckets) >= max(p.max_devices, self._sweep_above):
                self._sweep(now)
            b = _Buckets(float(p.message_burst), float(p.byte_burst), now)
            self._buckets[device_id] = b
        elif now != b.at:  # a batch's messages share one ``now``: refilled once
            self._refill(b, now)
        if b.messages >= 1.0 and b.bytes >= nbytes:
            b.messages -= 1.0
            b.bytes -= nbytes
            return True
        excess = self._excess.setdefault(device_id, Excess())
        excess.messages += 1
        excess.bytes += nbytes
        return False

    def take_excess(self) -> dict[str, Excess]:
        """The over-budget messages per device since the last call (and reset)."""
        out, self._excess = self._excess, {}
        return out

    @property
    def tracked(self) -> int:
        """How many devices have a bucket in memory."""
        return len(self._buckets)

    def _refill(self, b: _Buckets, now: float) -> None:
        p = self.policy
        elapsed = max(0.0, now - b.at)
        b.messages = min(float(p.message_burst), b.messages + elapsed * p.messages_per_s)
        b.bytes = min(float(p.byte_burst), b.bytes + elapsed * p.bytes_per_s)
        b.at = now

    def _sweep(self, now: float) -> None:
        """Forget devices whose buckets have refilled; sweep again only once the map has
        doubled, so a fleet of busy devices costs O(1) per message on average."""
        p = self.policy
        for device_id in list(self._buckets):
            b = self._buckets[device_id]
            self._refill(b, now)
            if b.messages >= p.message_burst and b.bytes >= p.byte_burst:
                del self._buckets[device_id]
        self._sweep_above = 2 * len(self._buckets)


@dataclass
class ThrottleNews:
    """What the reporting side should do now (see :meth:`ThrottleLedger.add`)."""

    alarm: dict[str, Excess] = field(default_factory=dict)
    """Devices whose ``ingest_rate_limited`` alarm to open or bump, with the excess."""
    warn: dict[str, Excess] = field(default_factory=dict)
    """Devices to log a WARNING about, with the excess since their last warning."""
    close: list[str] = field(default_factory=list)
    """Devices quiet for ``quiet_s``: close their alarm."""


@dataclass
class ThrottleLedger:
    """Turns excess into reports without flooding the log or the database: at most one
    WARNING per device per ``warn_every_s``, alarm writes batched every ``flush_every_s``
    (the first excess of a device opens its alarm at once), and the alarm closed after
    ``quiet_s`` without excess."""

    warn_every_s: float = 60.0
    flush_every_s: float = 5.0
    quiet_s: float = 600.0
    _last_excess: dict[str, float] = field(default_factory=dict)
    _last_warn: dict[str, float] = field(default_factory=dict)
    _unwarned: dict[str, Excess] = field(default_factory=dict)
    _unflushed: dict[str, Excess] = field(default_factory=dict)
    _last_flush: float = float("-inf")

    def watch(self, device_ids: list[str], now: float) -> None:
        """Devices whose alarm is already open (found at start): closed if quiet."""
        for device_id in device_ids:
            self._last_excess.setdefault(device_id, now)

    def add(self, excess: dict[str, Excess], now: float) -> ThrottleNews:
        """Take one :meth:`DeviceBudget.take_excess` and say what to report now."""
        news = ThrottleNews()
        for device_id, e in excess.items():
            if device_id not in self._last_excess:
                news.alarm[device_id] = Excess()
            self._last_excess[device_id] = now
            for acc in (self._unwarned, self._unflushed):
                a = acc.setdefault(device_id, Excess())
                a.messages += e.messages
                a.bytes += e.bytes
        for device_id in list(self._unwarned):
            if now - self._last_warn.get(device_id, float("-inf")) >= self.warn_every_s:
                news.warn[device_id] = self._unwarned.pop(device_id)
                self._last_warn[device_id] = now
        if news.alarm or now - self._last_flush >= self.flush_every_s:
            news.alarm.update(self._unflushed)
            self._unflushed = {}
            self._last_flush = now
        for device_id, at in list(self._last_excess.items()):
            if now - at >= self.quiet_s and device_id not in self._unflushed:
                news.close.append(device_id)
                del self._last_excess[device_id]
                self._last_warn.pop(device_id, None)
                self._unwarned.pop(device_id, None)
        return news
