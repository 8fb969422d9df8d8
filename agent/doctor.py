"""``fleet-agent doctor``: read this machine's health signals once and explain them.

Uses the same collectors and the same built-in thresholds as the fault rules, so what
the doctor calls a problem is what the agent would raise (without the debounce).
"""

from __future__ import annotations

import time
from typing import Any

from agent.collectors import SystemCollector
from agent.core.rules import BUILTINS, FAN_GATE_TEMP_C
from protocol import SIGNALS
from protocol.signals import format_value

THROTTLE_BITS = {
    0: "under-voltage now",
    1: "ARM frequency capped now",
    2: "throttled now",
    3: "soft temperature limit active now",
    16: "under-voltage has occurred since boot",
    17: "frequency capping has occurred since boot",
    18: "throttling has occurred since boot",
    19: "soft temperature limit has occurred since boot",
}

SIGNALS_BY_NAME = {s.name: s for s in SIGNALS}
"""Labels and units come from the signals' declarations on ``protocol.Sample``."""


def decode_throttled(bits: int) -> list[str]:
    """Human meanings of a ``vcgencmd get_throttled`` value."""
    return [text for bit, text in THROTTLE_BITS.items() if bits & (1 << bit)]


def _verdict(name: str, value: Any, values: dict[str, Any]) -> tuple[str, str]:
    def above(code: str) -> tuple[str, str]:
        spec = BUILTINS[code]
        assert spec.raise_at is not None
        if value >= spec.raise_at:
            return "problem", f"{code}: at or above {spec.raise_at:g}"
        return "ok", ""

    if name == "temp_c":
        return above("over_temperature")
    if name == "disk_pct":
        return above("disk_nearly_full")
    if name == "mem_pct":
        return above("memory_pressure")
    if name == "emmc_life_used_pct":
        return above("storage_wear")
    if name == "disk_io_errors":
        return ("problem", "the storage device has reported I/O errors") if value else ("ok", "")
    if name == "throttled":
        meanings = decode_throttled(int(value))
        if int(value) & 0xF:
            return "problem", "; ".join(meanings)
        if meanings:
            return "warning", "; ".join(meanings)
        return "ok", "no throttling or under-voltage"
    if name == "undervoltage":
        return ("problem", "supply voltage too low") if value else ("ok", "")
    if name == "fan_rpm":
        temp = values.get("temp_c")
        spec = BUILTINS["fan_stopped"]
        assert spec.raise_at is not None
        if value <= spec.raise_at and temp is not None and temp >= FAN_GATE_TEMP_C:
            return "problem", f"fan stopped while the SoC is at {temp:g} °C"
        return "ok", ""
    if name == "clock_synced":
        return ("ok", "") if value else ("warning", "not synchronised: check NTP (timedatectl)")
    return "ok", ""


def diagnose(collector: SystemCollector | None = None) -> dict[str, Any]:
    """Sample twice (CPU % needs an interval) and judge every signal."""
    collector = collector or SystemCollector()
    time.sleep(0.5)
    sample = collector.collect(time.time())
    values = {
        name: getattr(sample, name) for name in SIGNALS_BY_NAME if getattr(sample, name) is not None
    }
    signals: dict[str, Any] = {}
    for name, value in values.items():
        verdict, note = _verdict(name, value, values)
        signals[name] = {"value": value, "verdict": verdict, "note": note}
    problems = [n for n, s in signals.items() if s["verdict"] == "problem"]
    warnings = [n for n, s in signals.items() if s["verdict"] == "warning"]
    return {
        "signals": signals,
        "unavailable": dict(collector.unavailable),
        "problems": problems,
        "warnings": warnings,
        "summary": "problem" if problems else ("warning" if warnings else "ok"),
    }


def render(report: dict[str, Any]) -> str:
    """The report as aligned text for a terminal."""
    mark = {"ok": "ok  ", "warning": "WARN", "problem": "FAIL"}
    lines = ["Hardware health of this machine", ""]
    for name, info in report["signals"].items():
        signal = SIGNALS_BY_NAME[name]
        shown = format_value(signal, info["value"])
        note = f"  ({info['note']})" if info["note"] else ""
        lines.append(f"  [{mark[info['verdict']]}] {signal.label:<22} {shown}{note}")
    if report["unavailable"]:
        lines += ["", "Not available on this machine:"]
        for name, reason in report["unavailable"].items():
            label = SIGNALS_BY_NAME[name].label if name in SIGNALS_BY_NAME else name
            lines.append(f"  {label:<26} {reason}")
    verdict = {
        "ok": "No problems found.",
        "warning": "Warnings: " + ", ".join(report["warnings"]),
        "problem": "Problems: " + ", ".join(report["problems"]),
    }[report["summary"]]
    lines += ["", verdict]
    return "\n".join(lines)
