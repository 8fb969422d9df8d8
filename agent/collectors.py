"""Health collectors: psutil plus the Linux and Raspberry Pi sources, read cheaply.

Each signal has one probe. A probe that fails (file absent, no permission, no such
hardware, parse error) yields ``None`` for its field, and the reason is kept in
:attr:`SystemCollector.unavailable` (logged once), so a missing source never stops the
agent. ``root`` relocates the ``/sys`` and ``/proc`` reads (for tests on recorded trees).

Which source feeds each signal is declared with the signal on ``protocol.Sample`` (and
listed in the README's signals table); ``_probes`` maps every declared signal to its probe
(a test checks none is missing).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import psutil

from protocol import Sample

log = logging.getLogger(__name__)

VCGENCMD_MIN_INTERVAL_S = 60.0


class Collector(Protocol):
    """Produces one health sample; never raises."""

    def collect(self, ts: float) -> Sample:
        """A sample stamped ``ts`` (wall-clock seconds)."""
        ...


class SourceUnavailableError(Exception):
    """The source of a signal does not exist on this machine."""


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise SourceUnavailableError(f"{path} does not exist") from None
    except PermissionError:
        raise SourceUnavailableError(f"no permission to read {path}") from None


class SystemCollector:
    """The device's real health signals."""

    def __init__(self, *, disk_path: str = "/", root: Path = Path("/")) -> None:
        self.disk_path = disk_path
        self.root = root
        self.unavailable: dict[str, str] = {}
        self._process = psutil.Process()
        self._throttled_cache: tuple[float, int] | None = None
        self._vcgencmd = shutil.which("vcgencmd")
        self._net_cache: tuple[int, int] | None = None
        psutil.cpu_percent(None)  # prime: the first call has no interval to measure
        self._probes: dict[str, Callable[[float], Any]] = {
            "cpu_pct": lambda ts: psutil.cpu_percent(None),
            "load_1m": lambda ts: os.getloadavg()[0],
            "mem_pct": lambda ts: psutil.virtual_memory().percent,
            "swap_pct": self._swap,
            "disk_pct": lambda ts: psutil.disk_usage(self.disk_path).percent,
            "disk_io_errors": self._io_errors,
            "temp_c": self._temperature,
            "throttled": self._throttled,
            "undervoltage": self._undervoltage,
            "fan_rpm": self._fan,
            "uptime_s": self._uptime,
            "agent_rss_mb": lambda ts: round(self._process.memory_info().rss / 1048576, 2),
            "net_rx_bytes": lambda ts: self._net()[0],
            "net_tx_bytes": lambda ts: self._net()[1],
            "emmc_life_used_pct": self._emmc_life,
            "clock_synced": self._clock_synced,
            "wifi_signal_dbm": lambda ts: wifi_signal_dbm(_read(self._p("proc/net/wireless"))),
        }

    def _p(self, rel: str) -> Path:
        return self.root / rel

    def collect(self, ts: float) -> Sample:
        """Read every available source; unavailable ones are ``None``."""
        values: dict[str, Any] = {}
        self._net_cache = None  # read the network counters once per sample
        for name, probe in self._probes.items():
            try:
                value = probe(ts)
            except Exception as exc:  # any failure of one source must not stop sampling
                if name not in self.unavailable:
                    reason = str(exc) or type(exc).__name__
                    self.unavailable[name] = reason
                    log.info("signal %s not available: %s", name, reason)
                continue
            if value is None:
                continue
            self.unavailable.pop(name, None)
            values[name] = value
        return Sample(ts=ts, **values)

    # --- probes ----------------------------------------------------------------------

    def _swap(self, ts: float) -> float:
        swap = psutil.swap_memory()
        if not swap.total:
            raise SourceUnavailableError("no swap configured")
        return float(swap.percent)

    def _io_errors(self, ts: float) -> int:
        total, found = 0, False
        for counter in sorted(self._p("sys/block").glob("*/device/ioerr_cnt")):
            total += int(_read(counter), 0)
            found = True
        if not found:
            raise SourceUnavailableError("no block device exposes ioerr_cnt")
        return total

    def _temperature(self, ts: float) -> float:
        readings = []
        for zone in self._p("sys/class/thermal").glob("thermal_zone*/temp"):
            try:
                readings.append(int(_read(zone)) / 1000.0)
            except (SourceUnavailableError, ValueError, OSError):
                continue
        if not readings:
            for sensor in self._p("sys/class/hwmon").glob("hwmon*/temp*_input"):
                try:
                    readings.append(int(_read(sensor)) / 1000.0)
                except (SourceUnavailableError, ValueError, OSError):
                    continue
        readings = [r for r in readings if -100 <= r <= 300]
        if not readings:
            raise SourceUnavailableError("no thermal zone or hwmon temperature sensor")
        return round(max(readings), 2)

    def _throttled(self, ts: float) -> int:
        path = self._p("sys/devices/platform/soc/soc:firmware/get_throttled")
        if path.exists():
            return int(_read(path), 16) & 0xFFFFFFFF
        if self._vcgencmd is None or self.root != Path("/"):
            raise SourceUnavailableError("not a Raspberry Pi (no get_throttled, no vcgencmd)")
        if self._throttled_cache and ts - self._throttled_cache[0] < VCGENCMD_MIN_INTERVAL_S:
            return self._throttled_cache[1]
        out = subprocess.run(
            [self._vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=5, check=True
        ).stdout
        value = int(out.strip().split("=", 1)[1], 16) & 0xFFFFFFFF
        self._throttled_cache = (ts, value)
        return value

    def _undervoltage(self, ts: float) -> bool:
        for hwmon in self._p("sys/class/hwmon").glob("hwmon*"):
            try:
                if _read(hwmon / "name") == "rpi_volt":
                    return _read(hwmon / "in0_lcrit_alarm") == "1"
            except SourceUnavailableError:
                continue
        raise SourceUnavailableError("no rpi_volt hwmon sensor")

    def _fan(self, ts: float) -> float:
        speeds = []
        for fan in self._p("sys/class/hwmon").glob("hwmon*/fan*_input"):
            try:
                speeds.append(float(int(_read(fan))))
            except (SourceUnavailableError, ValueError):
                continue
        if not speeds:
            raise SourceUnavailableError("no hwmon fan sensor")
        return max(speeds)

    def _uptime(self, ts: float) -> float:
        return float(_read(self._p("proc/uptime")).split()[0])

    def _net(self) -> tuple[int, int]:
        if self._net_cache is None:
            rx = tx = 0
            for nic, c in psutil.net_io_counters(pernic=True).items():
                if nic != "lo":
                    rx += c.bytes_recv
                    tx += c.bytes_sent
            self._net_cache = (rx, tx)
        return self._net_cache

    def _emmc_life(self, ts: float) -> float:
        worst: float | None = None
        for life in self._p("sys/block").glob("mmcblk*/device/life_time"):
            for field in _read(life).split():
                level = int(field, 16)
                if 1 <= level <= 0x0B:  # 0x01: 0-10 % used ... 0x0A: 90-100 %, 0x0B: exceeded
                    pct = min(100.0, level * 10.0)
                    worst = pct if worst is None else max(worst, pct)
        if worst is None:
            raise SourceUnavailableError("no SD/eMMC with a life_time estimate")
        return worst

    def _clock_synced(self, ts: float) -> bool:
        if self.root != Path("/"):
            marker = self._p("run/systemd/timesync/synchronized")
            return marker.exists()
        return _adjtimex_state() != _TIME_ERROR


def wifi_signal_dbm(text: str) -> float:
    """The signal level (dBm) of the first interface in ``/proc/net/wireless``.

    The kernel lists only associated stations, after two header lines, e.g.
    ``wlan0: 0000   70.  -39.  -256 ...`` (status, link quality, level, noise; a ``.``
    marks a value updated since the last read). Drivers that report the level in
    relative units instead of dBm print it as a positive number: unavailable then.
    """
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 3:
            continue
        level = float(fields[2].rstrip("."))
        if level >= 0:
            raise SourceUnavailableError(f"{name.strip()} reports its level in relative units")
        return level
    raise SourceUnavailableError("no associated wireless interface")


_TIME_ERROR = 5


@functools.cache
def _libc() -> Any:
    """The C library, loaded once (not at every clock sample)."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _adjtimex_state() -> int:
    """The kernel clock state from ``adjtimex`` (5, ``TIME_ERROR``, means unsynchronised)."""
    import ctypes

    buf = ctypes.create_string_buffer(512)  # struct timex, zeroed: modes = 0 (read only)
    state = int(_libc().adjtimex(buf))
    if state < 0:
        raise SourceUnavailableError(f"adjtimex failed (errno {ctypes.get_errno()})")
    return state
