"""Collectors on this Linux machine, and the Raspberry Pi sources on a recorded sysfs tree."""

from __future__ import annotations

import time
from pathlib import Path

from agent.collectors import SystemCollector, wifi_signal_dbm
from agent.daemon import sanitize
from agent.doctor import decode_throttled, diagnose, render
from protocol import Sample, Telemetry, decode, encode, topic


def test_collects_this_machine_and_reports_what_is_missing() -> None:
    collector = SystemCollector()
    sample = collector.collect(time.time())
    # Sources every Linux machine has.
    assert sample.mem_pct is not None
    assert 0 < sample.mem_pct <= 100
    assert sample.disk_pct is not None
    assert sample.uptime_s is not None
    assert sample.uptime_s > 0
    assert sample.agent_rss_mb is not None
    assert sample.agent_rss_mb > 1
    assert sample.load_1m is not None
    assert sample.cpu_pct is not None
    # Every signal is either measured or explained.
    fields = [f for f in Sample.__struct_fields__ if f not in ("ts", "custom")]
    for name in fields:
        assert (getattr(sample, name) is not None) != (name in collector.unavailable), name
    for reason in collector.unavailable.values():
        assert reason
    # What the collector produced is valid on the wire.
    msg = Telemetry(device_id="pi-1", boot_id="b", seq=0, ts=sample.ts, samples=[sample])
    assert decode(topic("pi-1", "telemetry"), encode(msg)) == msg


def test_empty_root_makes_every_hardware_source_unavailable(tmp_path: Path) -> None:
    collector = SystemCollector(root=tmp_path)
    sample = collector.collect(1.0)
    for name in (
        "temp_c",
        "throttled",
        "undervoltage",
        "fan_rpm",
        "emmc_life_used_pct",
        "disk_io_errors",
    ):
        assert getattr(sample, name) is None
        assert name in collector.unavailable
    assert "uptime_s" in collector.unavailable  # no /proc/uptime under this root


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_raspberry_pi_sources(tmp_path: Path) -> None:
    write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "67123\n")
    write(tmp_path, "sys/devices/platform/soc/soc:firmware/get_throttled", "50005\n")
    write(tmp_path, "sys/class/hwmon/hwmon0/name", "rpi_volt\n")
    write(tmp_path, "sys/class/hwmon/hwmon0/in0_lcrit_alarm", "1\n")
    write(tmp_path, "sys/class/hwmon/hwmon1/name", "pwmfan\n")
    write(tmp_path, "sys/class/hwmon/hwmon1/fan1_input", "2950\n")
    write(tmp_path, "sys/block/mmcblk0/device/life_time", "0x02 0x04\n")
    write(tmp_path, "sys/block/sda/device/ioerr_cnt", "0x3\n")
    write(tmp_path, "proc/uptime", "1234.56 2000.00\n")
    write(tmp_path, "run/systemd/timesync/synchronized", "")
    collector = SystemCollector(root=tmp_path)
    sample = collector.collect(1.0)
    assert sample.temp_c == 67.12
    assert sample.throttled == 0x50005
    assert sample.undervoltage is True
    assert sample.fan_rpm == 2950.0
    assert sample.emmc_life_used_pct == 40.0
    assert sample.disk_io_errors == 3
    assert sample.uptime_s == 1234.56
    assert sample.clock_synced is True
    assert decode_throttled(0x50005) == [
        "under-voltage now",
        "throttled now",
        "under-voltage has occurred since boot",
        "throttling has occurred since boot",
    ]


def test_a_garbled_source_is_unavailable_not_fatal(tmp_path: Path) -> None:
    write(tmp_path, "sys/devices/platform/soc/soc:firmware/get_throttled", "not hex\n")
    write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "9999999\n")  # 9999 °C: nonsense
    collector = SystemCollector(root=tmp_path)
    sample = collector.collect(1.0)
    assert sample.throttled is None
    assert "throttled" in collector.unavailable
    assert sample.temp_c is None


def test_out_of_range_readings_are_dropped_not_sent() -> None:
    bad = Sample(ts=1.0, cpu_pct=180.0, mem_pct=50.0, fan_rpm=-3.0)
    clean = sanitize(bad)
    assert clean == Sample(ts=1.0, mem_pct=50.0)


def test_doctor_explains_this_machine() -> None:
    report = diagnose()
    assert "mem_pct" in report["signals"]
    assert report["summary"] in ("ok", "warning", "problem")
    text = render(report)
    assert "memory used" in text
    if report["unavailable"]:
        assert "Not available on this machine" in text


WIRELESS_HEADER = (
    "Inter-| sta-|   Quality        |   Discarded packets               | Missed | WE\n"
    " face | tus | link level noise |  nwid  crypt   frag  retry   misc | beacon | 22\n"
)


def test_wifi_signal_level_of_the_first_associated_interface(tmp_path: Path) -> None:
    write(
        tmp_path,
        "proc/net/wireless",
        WIRELESS_HEADER
        + " wlan0: 0000   52.  -58.  -256        0      0      0      3    114        0\n"
        + " wlan1: 0000   70.  -31.  -256        0      0      0      0      0        0\n",
    )
    collector = SystemCollector(root=tmp_path)
    sample = collector.collect(1.0)
    assert sample.wifi_signal_dbm == -58.0
    assert "wifi_signal_dbm" not in collector.unavailable
    # a level not updated since the last read has no trailing dot
    assert wifi_signal_dbm(WIRELESS_HEADER + "wlp2s0: 0000   40   -70   -256  0 0 0 0 0 0\n") == -70


def test_wifi_signal_is_unavailable_without_an_associated_interface_in_dbm(tmp_path: Path) -> None:
    def reason(text: str | None) -> str:
        if text is not None:
            write(tmp_path, "proc/net/wireless", text)
        collector = SystemCollector(root=tmp_path)
        assert collector.collect(1.0).wifi_signal_dbm is None
        return collector.unavailable["wifi_signal_dbm"]

    assert reason(None).endswith("proc/net/wireless does not exist")  # no Wi-Fi driver
    assert reason(WIRELESS_HEADER) == "no associated wireless interface"
    relative = WIRELESS_HEADER + "  eth1: 0000  30.  45.  0.  0 0 0 0 0 0\n"
    assert reason(relative) == "eth1 reports its level in relative units"  # not dBm: not sent
