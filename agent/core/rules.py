"""The built-in fault rules, their defaults, and building a rule set from configuration.

Configuration (the ``[faults]`` table of the agent's TOML) can tune or disable any
built-in rule and add adaptive rules on chosen signals::

    [faults.over_temperature]
    raise_at = 85.0
    clear_at = 78.0
    samples = 3           # consecutive samples before raising
    seconds = 0           # ... and for at least this long
    clear_samples = 3
    clear_seconds = 0
    severity = "major"

    [faults.fan_stopped]
    enabled = false

    [[faults.adaptive]]
    signal = "fan_rpm"

    [[faults.multivariate]]
    signals = ["temp_c", "cpu_pct", "fan_rpm"]
    code = "cooling_relation"

Adaptive rules come from ``agent.core.adaptive`` and multivariate rules from
``agent.core.multivariate`` (each imported only when configured).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.core.fault_types import FaultRule
from agent.core.faults import (
    SIGNALS,
    BitsRule,
    CounterIncreaseRule,
    Debounce,
    DebouncedRule,
    RestartLoopRule,
    ThresholdRule,
)
from protocol import Sample, Severity

# vcgencmd get_throttled bits (current state; bits 16-19 are "has occurred since boot").
UNDER_VOLTAGE_NOW = 0x1
FREQ_CAPPED_NOW = 0x2
THROTTLED_NOW = 0x4
SOFT_TEMP_LIMIT_NOW = 0x8


class RuleConfigError(ValueError):
    """A ``[faults]`` setting is invalid; the message names the key and the value."""


@dataclass(frozen=True, slots=True)
class Builtin:
    """Defaults of one built-in rule (``None`` thresholds: the rule has none)."""

    kind: str  # threshold_above | threshold_below | bits | counter | fan | restart_loop
    signal: str
    severity: Severity
    raise_at: float | None = None
    clear_at: float | None = None
    samples: int = 3
    seconds: float = 0.0
    clear_samples: int = 3
    clear_seconds: float = 0.0
    mask: int = 0
    message: str = ""


BUILTINS: dict[str, Builtin] = {
    "over_temperature": Builtin(
        "threshold_above", "temp_c", Severity.MAJOR, 80.0, 75.0, message="SoC temperature high"
    ),
    "thermal_throttling": Builtin(
        "bits",
        "throttled",
        Severity.WARNING,
        mask=FREQ_CAPPED_NOW | THROTTLED_NOW | SOFT_TEMP_LIMIT_NOW,
        samples=2,
        clear_samples=5,
        message="CPU frequency capped or throttled by the firmware",
    ),
    "under_voltage": Builtin(
        "bits",
        "throttled",
        Severity.MAJOR,
        mask=UNDER_VOLTAGE_NOW,
        samples=1,
        clear_samples=10,
        message="supply voltage below the safe minimum (check the power supply and cable)",
    ),
    "disk_nearly_full": Builtin(
        "threshold_above",
        "disk_pct",
        Severity.WARNING,
        90.0,
        85.0,
        message="root filesystem nearly full",
    ),
    "storage_io_errors": Builtin(
        "counter",
        "disk_io_errors",
        Severity.MAJOR,
        samples=1,
        clear_samples=2,
        clear_seconds=3600.0,
        message="the storage device reported I/O errors",
    ),
    "storage_wear": Builtin(
        "threshold_above",
        "emmc_life_used_pct",
        Severity.WARNING,
        90.0,
        80.0,
        samples=1,
        message="SD/eMMC estimated life nearly used up",
    ),
    "memory_pressure": Builtin(
        "threshold_above",
        "mem_pct",
        Severity.WARNING,
        90.0,
        80.0,
        samples=3,
        seconds=60.0,
        message="memory nearly exhausted",
    ),
    "fan_stopped": Builtin(
        "fan",
        "fan_rpm",
        Severity.MAJOR,
        300.0,
        600.0,
        message="fan not turning while the SoC is warm",
    ),
    "clock_not_synced": Builtin(
        "threshold_below",
        "clock_synced",
        Severity.WARNING,
        0.0,
        1.0,
        samples=3,
        seconds=300.0,
        clear_samples=1,
        message="system clock not synchronised (NTP)",
    ),
    "agent_restart_loop": Builtin("restart_loop", "", Severity.MAJOR),
}

FAN_GATE_TEMP_C = 60.0
"""A fan that is off below this SoC temperature is idle by design (Pi 5 fan curve)."""

_TUNABLE = {
    "enabled",
    "raise_at",
    "clear_at",
    "samples",
    "seconds",
    "clear_samples",
    "clear_seconds",
    "severity",
}
_RESTART_KEYS = {"enabled", "max_starts", "window_s", "stable_s", "severity"}


def _number(code: str, key: str, value: object, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleConfigError(f"faults.{code}.{key}: expected a number, got {value!r}")
    if integer and (not isinstance(value, int) or value < 1):
        raise RuleConfigError(f"faults.{code}.{key}: expected a whole number >= 1, got {value!r}")
    if value < 0:
        raise RuleConfigError(f"faults.{code}.{key}: must not be negative, got {value!r}")
    return float(value)


def _severity(code: str, value: object) -> Severity:
    try:
        return Severity(value)
    except ValueError:
        choices = ", ".join(s.value for s in Severity)
        raise RuleConfigError(
            f"faults.{code}.severity: {value!r} is not one of {choices}"
        ) from None


def _fan_gate(sample: Sample) -> bool:
    return sample.temp_c is not None and sample.temp_c >= FAN_GATE_TEMP_C


def _undervoltage_flag(sample: Sample) -> bool | None:
    return sample.undervoltage


def build_builtin(
    code: str, overrides: Mapping[str, Any] | None = None, starts: Iterable[float] = ()
) -> FaultRule | None:
    """One built-in rule with ``overrides`` applied, or ``None`` when disabled."""
    spec = BUILTINS[code]
    o = dict(overrides or {})
    allowed = _RESTART_KEYS if spec.kind == "restart_loop" else _TUNABLE
    for key in o:
        if key not in allowed:
            raise RuleConfigError(
                f"faults.{code}: unknown setting {key!r} (known: {', '.join(sorted(allowed))})"
            )
    enabled = o.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleConfigError(f"faults.{code}.enabled: expected true or false, got {enabled!r}")
    if not enabled:
        return None
    severity = _severity(code, o["severity"]) if "severity" in o else spec.severity
    if spec.kind == "restart_loop":
        return RestartLoopRule(
            starts,
            max_starts=int(_number(code, "max_starts", o.get("max_starts", 5), integer=True)),
            window_s=_number(code, "window_s", o.get("window_s", 900.0)),
            stable_s=_number(code, "stable_s", o.get("stable_s", 1800.0)),
            severity=severity,
        )
    raise_db = Debounce(
        int(_number(code, "samples", o.get("samples", spec.samples), integer=True)),
        _number(code, "seconds", o.get("seconds", spec.seconds)),
    )
    clear_db = Debounce(
        int(
            _number(code, "clear_samples", o.get("clear_samples", spec.clear_samples), integer=True)
        ),
        _number(code, "clear_seconds", o.get("clear_seconds", spec.clear_seconds)),
    )
    rule: DebouncedRule
    if spec.kind in ("threshold_above", "threshold_below", "fan"):
        assert spec.raise_at is not None
        assert spec.clear_at is not None
        raise_at = o.get("raise_at", spec.raise_at)
        clear_at = o.get("clear_at", spec.clear_at)
        _number(code, "raise_at", raise_at)
        _number(code, "clear_at", clear_at)
        try:
            rule = ThresholdRule(
                code,
                spec.signal,
                raise_at=float(raise_at),
                clear_at=float(clear_at),
                above=spec.kind == "threshold_above",
                severity=severity,
                raise_debounce=raise_db,
                clear_debounce=clear_db,
                gate=_fan_gate if spec.kind == "fan" else None,
                message=spec.message,
            )
        except ValueError as exc:
            raise RuleConfigError(f"faults.{code}: {str(exc).removeprefix(code + ': ')}") from None
        return rule
    if "raise_at" in o or "clear_at" in o:
        raise RuleConfigError(f"faults.{code}: this rule has no thresholds to set")
    if spec.kind == "bits":
        return BitsRule(
            code,
            spec.signal,
            mask=spec.mask,
            severity=severity,
            raise_debounce=raise_db,
            clear_debounce=clear_db,
            also=_undervoltage_flag if code == "under_voltage" else None,
            message=spec.message,
        )
    return CounterIncreaseRule(
        code,
        spec.signal,
        severity=severity,
        raise_debounce=raise_db,
        clear_debounce=clear_db,
        message=spec.message,
    )


def build_adaptive(entry: Mapping[str, Any], index: int) -> FaultRule:
    """An adaptive rule from one ``[[faults.adaptive]]`` entry.

    ``agent.core.adaptive`` is imported here, on demand, so an agent without adaptive
    rules never loads it (and a build that lacks it fails with a clear message).
    """
    where = f"faults.adaptive[{index}]"
    params = dict(entry)
    signal = params.pop("signal", None)
    if not isinstance(signal, str) or not signal:
        raise RuleConfigError(f"{where}.signal: required, the name of a sample field")
    if signal not in SIGNALS and not (signal.startswith("custom.") or signal.isidentifier()):
        raise RuleConfigError(f"{where}.signal: {signal!r} is not a sample field")
    if "severity" in params:
        params["severity"] = _severity(f"adaptive[{index}]", params["severity"])
    if "code" in params and not (isinstance(params["code"], str) and params["code"]):
        raise RuleConfigError(f"{where}.code: expected a non-empty string")
    try:
        from agent.core.adaptive import AdaptiveRule  # type: ignore[import-not-found]
    except ImportError:
        raise RuleConfigError(
            f"{where}: adaptive rules are not available in this agent build"
        ) from None
    try:
        rule: FaultRule = AdaptiveRule(signal, **params)
    except (TypeError, ValueError) as exc:
        raise RuleConfigError(f"{where}: {exc}") from None
    return rule


def settings_of(rule: type) -> set[str]:
    """The settings a rule class takes from a configuration entry: its keyword parameters,
    its signal(s) apart."""
    import inspect

    return set(inspect.signature(rule).parameters) - {"signal", "signals"}


def build_multivariate(entry: Mapping[str, Any], index: int) -> FaultRule:
    """A multivariate rule from one ``[[faults.multivariate]]`` entry (imported on demand)."""
    from agent.core.multivariate import MultivariateRule

    where = f"faults.multivariate[{index}]"
    params = dict(entry)
    signals = params.pop("signals", None)
    if not isinstance(signals, list) or not all(isinstance(s, str) and s for s in signals):
        raise RuleConfigError(f'{where}.signals: required, a list of signal names like ["temp_c"]')
    for signal in signals:
        if signal not in SIGNALS and not signal.isidentifier():
            raise RuleConfigError(f"{where}.signals: {signal!r} is not a sample field")
    known = settings_of(MultivariateRule)
    for key in params:
        if key not in known:
            raise RuleConfigError(
                f"{where}.{key}: unknown setting (known: signals, {', '.join(sorted(known))})"
            )
    if "severity" in params:
        params["severity"] = _severity(f"multivariate[{index}]", params["severity"])
    if "code" in params and not (isinstance(params["code"], str) and params["code"]):
        raise RuleConfigError(f"{where}.code: expected a non-empty string")
    try:
        return MultivariateRule(signals, **params)
    except (TypeError, ValueError) as exc:
        raise RuleConfigError(f"{where}: {exc}") from None


def build_rules(
    faults: Mapping[str, Any] | None = None, starts: Iterable[float] = ()
) -> list[FaultRule]:
    """The agent's rule set: every enabled built-in (tuned by ``faults``) plus adaptive
    rules. ``starts`` are the agent's recent start times, for the restart-loop rule."""
    faults = dict(faults or {})
    adaptive = faults.pop("adaptive", [])
    multivariate = faults.pop("multivariate", [])
    for code in faults:
        if code not in BUILTINS:
            raise RuleConfigError(
                f"faults.{code}: unknown fault rule (built-in rules: {', '.join(BUILTINS)})"
            )
    rules: list[FaultRule] = []
    for code in BUILTINS:
        overrides = faults.get(code)
        if overrides is not None and not isinstance(overrides, Mapping):
            raise RuleConfigError(f"faults.{code}: expected a table of settings")
        rule = build_builtin(code, overrides, starts)
        if rule is not None:
            rules.append(rule)
    if not isinstance(adaptive, list):
        raise RuleConfigError("faults.adaptive: expected an array of tables ([[faults.adaptive]])")
    codes = {r.code for r in rules}
    for i, entry in enumerate(adaptive):
        if not isinstance(entry, Mapping):
            raise RuleConfigError(f"faults.adaptive[{i}]: expected a table")
        rule = build_adaptive(entry, i)
        if rule.code in codes:
            raise RuleConfigError(f"faults.adaptive[{i}]: fault code {rule.code!r} is used twice")
        codes.add(rule.code)
        rules.append(rule)
    if not isinstance(multivariate, list):
        raise RuleConfigError(
            "faults.multivariate: expected an array of tables ([[faults.multivariate]])"
        )
    for i, entry in enumerate(multivariate):
        if not isinstance(entry, Mapping):
            raise RuleConfigError(f"faults.multivariate[{i}]: expected a table")
        rule = build_multivariate(entry, i)
        if rule.code in codes:
            raise RuleConfigError(
                f"faults.multivariate[{i}].code: fault code {rule.code!r} is used twice"
            )
        codes.add(rule.code)
        rules.append(rule)
    return rules
