"""Fixed fault rules with debounce and hysteresis, and the engine that runs any rule set.

Every rule shares one state machine (:class:`DebouncedRule`): a *raise* condition and a
separate *clear* condition, each of which must hold for ``N`` consecutive samples **and**
for a minimum duration before the rule changes state. A value between the raise and the
clear thresholds satisfies neither, so a signal wobbling around a threshold cannot flap.
A sample whose signal is ``None`` (source not available) is no observation at all: it
neither advances nor resets a streak.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agent.core.fault_types import FaultChange, FaultRule
from protocol import Sample, Severity

SIGNALS = frozenset(name for name in Sample.__struct_fields__ if name not in ("ts", "custom"))
"""Sample fields a rule can watch; any other name is looked up in ``Sample.custom``."""


def signal_value(sample: Sample, signal: str) -> float | None:
    """The numeric value of ``signal`` in ``sample`` (booleans as 0/1), or ``None``."""
    raw = getattr(sample, signal) if signal in SIGNALS else sample.custom.get(signal)
    if raw is None:
        return None
    return float(raw)


@dataclass(slots=True)
class Debounce:
    """How long a condition must hold: ``samples`` in a row and at least ``seconds``."""

    samples: int = 3
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError("debounce samples must be at least 1")
        if self.seconds < 0:
            raise ValueError("debounce seconds must not be negative")


class DebouncedRule:
    """Base of the fixed rules: the debounce/hysteresis state machine.

    Subclasses implement :meth:`observe`, returning ``(raise_cond, clear_cond, value)``
    for one sample, or ``None`` when the sample carries no observation for this rule.
    """

    def __init__(
        self,
        code: str,
        severity: Severity,
        *,
        raise_debounce: Debounce | None = None,
        clear_debounce: Debounce | None = None,
        threshold: float | None = None,
        message: str = "",
    ) -> None:
        self.code = code
        self.severity = severity
        self.raise_debounce = raise_debounce or Debounce()
        self.clear_debounce = clear_debounce or Debounce()
        self.threshold = threshold
        self.message = message
        self._active = False
        self._streak = 0
        self._streak_since: float | None = None

    @property
    def active(self) -> bool:
        """True while the fault is raised."""
        return self._active

    def observe(self, sample: Sample) -> tuple[bool, bool, float | None] | None:
        """Whether the raise and clear conditions hold for ``sample`` (subclass hook)."""
        raise NotImplementedError

    def update(self, sample: Sample) -> FaultChange | None:
        """Feed one sample; return a change when the debounced condition flips the rule."""
        observed = self.observe(sample)
        if observed is None:
            return None
        raise_cond, clear_cond, value = observed
        wanted = clear_cond if self._active else raise_cond
        if not wanted:
            self._streak = 0
            self._streak_since = None
            return None
        if self._streak == 0:
            self._streak_since = sample.ts
        self._streak += 1
        debounce = self.clear_debounce if self._active else self.raise_debounce
        held_for = sample.ts - (self._streak_since if self._streak_since is not None else sample.ts)
        if self._streak < debounce.samples or held_for < debounce.seconds:
            return None
        self._active = not self._active
        self._streak = 0
        self._streak_since = None
        return FaultChange(
            code=self.code,
            raised=self._active,
            severity=self.severity,
            ts=sample.ts,
            value=value,
            threshold=self.threshold,
            message=self.message if self._active else "",
        )

    def snapshot(self) -> dict[str, Any]:
        """The rule's state, so a restart neither re-raises nor forgets an open fault."""
        return {"active": self._active, "streak": self._streak, "since": self._streak_since}

    def restore(self, state: dict[str, Any]) -> bool:
        """Resume from :meth:`snapshot`; anything malformed leaves the rule fresh (False)."""
        active, streak, since = state.get("active"), state.get("streak"), state.get("since")
        if not isinstance(active, bool) or not isinstance(streak, int) or streak < 0:
            return False
        if since is not None and not isinstance(since, int | float):
            return False
        self._active, self._streak = active, streak
        self._streak_since = float(since) if since is not None else None
        return True


class ThresholdRule(DebouncedRule):
    """Raise when ``signal`` goes past ``raise_at``; clear when back past ``clear_at``.

    ``above=True`` watches for high values (temperature, disk use), ``above=False`` for low
    ones (fan speed). ``clear_at`` must sit on the safe side of ``raise_at``: the gap is
    the hysteresis band.
    """

    def __init__(
        self,
        code: str,
        signal: str,
        *,
        raise_at: float,
        clear_at: float,
        above: bool = True,
        severity: Severity = Severity.WARNING,
        raise_debounce: Debounce | None = None,
        clear_debounce: Debounce | None = None,
        gate: Callable[[Sample], bool] | None = None,
        message: str = "",
    ) -> None:
        if above and clear_at > raise_at:
            raise ValueError(f"{code}: clear_at {clear_at} must be <= raise_at {raise_at}")
        if not above and clear_at < raise_at:
            raise ValueError(f"{code}: clear_at {clear_at} must be >= raise_at {raise_at}")
        super().__init__(
            code,
            severity,
            raise_debounce=raise_debounce,
            clear_debounce=clear_debounce,
            threshold=raise_at,
            message=message,
        )
        self.signal = signal
        self.raise_at = raise_at
        self.clear_at = clear_at
        self.above = above
        self.gate = gate

    def observe(self, sample: Sample) -> tuple[bool, bool, float | None] | None:
        """Compare the signal with both thresholds (and the optional gate)."""
        value = signal_value(sample, self.signal)
        if value is None:
            return None
        if self.above:
            raise_cond, clear_cond = value >= self.raise_at, value <= self.clear_at
        else:
            raise_cond, clear_cond = value <= self.raise_at, value >= self.clear_at
        if self.gate is not None and not self.gate(sample):
            # Outside the gate the fault cannot be raised, and an open one may clear.
            raise_cond, clear_cond = False, True
        return raise_cond, clear_cond, value


class BitsRule(DebouncedRule):
    """Raise while any of ``mask`` is set in an integer (or boolean) signal."""

    def __init__(
        self,
        code: str,
        signal: str,
        *,
        mask: int = 1,
        severity: Severity = Severity.WARNING,
        raise_debounce: Debounce | None = None,
        clear_debounce: Debounce | None = None,
        also: Callable[[Sample], bool | None] | None = None,
        message: str = "",
    ) -> None:
        super().__init__(
            code,
            severity,
            raise_debounce=raise_debounce,
            clear_debounce=clear_debounce,
            message=message,
        )
        self.signal = signal
        self.mask = mask
        self.also = also

    def observe(self, sample: Sample) -> tuple[bool, bool, float | None] | None:
        """Test the bits; ``also`` may add a second source of the same condition."""
        value = signal_value(sample, self.signal)
        extra = self.also(sample) if self.also is not None else None
        if value is None and extra is None:
            return None
        on = (value is not None and int(value) & self.mask != 0) or bool(extra)
        return on, not on, value


class CounterIncreaseRule(DebouncedRule):
    """Raise when a cumulative counter (e.g. storage I/O errors) goes up; clear after it
    has stayed flat for the clear debounce (typically an hour)."""

    def __init__(
        self,
        code: str,
        signal: str,
        *,
        severity: Severity = Severity.MAJOR,
        raise_debounce: Debounce | None = None,
        clear_debounce: Debounce | None = None,
        message: str = "",
    ) -> None:
        super().__init__(
            code,
            severity,
            raise_debounce=raise_debounce or Debounce(samples=1),
            clear_debounce=clear_debounce or Debounce(samples=2, seconds=3600),
            message=message,
        )
        self.signal = signal
        self._last: float | None = None

    def observe(self, sample: Sample) -> tuple[bool, bool, float | None] | None:
        """Compare with the previous reading; a counter reset (reboot) is not an error."""
        value = signal_value(sample, self.signal)
        if value is None:
            return None
        last, self._last = self._last, value
        if last is None:
            return None
        grew = value > last
        return grew, not grew, value - last if grew else 0.0

    def snapshot(self) -> dict[str, Any]:
        """State plus the last counter reading."""
        return {**super().snapshot(), "last": self._last}

    def restore(self, state: dict[str, Any]) -> bool:
        """Resume, including the last reading (so errors during a restart still count);
        a malformed reading refuses the whole state, as a malformed debounce part does."""
        last = state.get("last")
        if last is not None and (isinstance(last, bool) or not isinstance(last, int | float)):
            return False
        if not super().restore(state):
            return False
        self._last = float(last) if last is not None else None
        return True


class RestartLoopRule:
    """``agent_restart_loop``: the agent started ``max_starts`` times within ``window_s``.

    Fed the recent start times once at construction; it raises on the first sample and
    clears once the agent has then run ``stable_s`` without restarting.
    """

    def __init__(
        self,
        starts: Iterable[float],
        *,
        max_starts: int = 5,
        window_s: float = 900.0,
        stable_s: float = 1800.0,
        code: str = "agent_restart_loop",
        severity: Severity = Severity.MAJOR,
    ) -> None:
        self.code = code
        self.severity = severity
        ordered = sorted(starts)
        self._started = ordered[-1] if ordered else None
        recent = [t for t in ordered if self._started is not None and self._started - t <= window_s]
        self._looping = len(recent) >= max_starts
        self._count = len(recent)
        self.max_starts = max_starts
        self.stable_s = stable_s
        self._active = False

    @property
    def active(self) -> bool:
        """True while the restart-loop fault is raised."""
        return self._active

    def update(self, sample: Sample) -> FaultChange | None:
        """Raise on the first sample of a looping start; clear after a stable run."""
        if self._looping and not self._active:
            self._looping = False
            self._active = True
            return FaultChange(
                self.code,
                True,
                self.severity,
                sample.ts,
                value=float(self._count),
                threshold=float(self.max_starts),
                message=f"agent started {self._count} times in a short window",
            )
        if (
            self._active
            and self._started is not None
            and sample.ts - self._started >= self.stable_s
        ):
            self._active = False
            return FaultChange(self.code, False, self.severity, sample.ts)
        return None

    def snapshot(self) -> dict[str, Any]:
        """Only whether the fault is open; the start history lives in the agent state."""
        return {"active": self._active}

    def restore(self, state: dict[str, Any]) -> bool:
        """Keep an open restart-loop fault open across the next restart."""
        if state.get("active") is True:
            self._active = True
        return True


class FaultEngine:
    """Runs a set of rules over samples and keeps the local fault state.

    Any object implementing :class:`FaultRule` can be added (the fixed rules here, the
    adaptive rule, a product's own). One open fault per code.
    """

    def __init__(self, rules: Iterable[FaultRule] = ()) -> None:
        self._rules: dict[str, FaultRule] = {}
        self.open: dict[str, FaultChange] = {}
        for rule in rules:
            self.add(rule)

    def add(self, rule: FaultRule) -> None:
        """Add a rule; its code must be unique within the engine."""
        if rule.code in self._rules:
            raise ValueError(f"two fault rules have the code {rule.code!r}")
        self._rules[rule.code] = rule

    @property
    def rules(self) -> list[FaultRule]:
        """The rules, in the order they were added."""
        return list(self._rules.values())

    def update(self, sample: Sample) -> list[FaultChange]:
        """Feed one sample to every rule; return the raises and clears it caused."""
        changes: list[FaultChange] = []
        for rule in self._rules.values():
            change = rule.update(sample)
            if change is None:
                continue
            if change.raised:
                self.open[change.code] = change
            else:
                self.open.pop(change.code, None)
            changes.append(change)
        return changes

    def snapshot(self) -> dict[str, Any]:
        """Every rule's state plus the open faults, for the state file."""
        return {
            "rules": {code: rule.snapshot() for code, rule in self._rules.items()},
            "open": {
                code: {
                    "severity": c.severity.value,
                    "ts": c.ts,
                    "value": c.value,
                    "threshold": c.threshold,
                    "message": c.message,
                }
                for code, c in self.open.items()
            },
        }

    def restore(self, state: dict[str, Any]) -> list[str]:
        """Resume rules and open faults; unknown codes and corrupt entries are ignored.

        Returns the codes of the configured rules whose saved state was refused (corrupt, or
        saved under another configuration): those start fresh and learn again.
        """
        refused: list[str] = []
        rules = state.get("rules")
        if isinstance(rules, dict):
            for code, rule_state in rules.items():
                if code not in self._rules:
                    continue
                taken = isinstance(rule_state, dict) and self._rules[code].restore(rule_state)
                if taken is False:
                    refused.append(code)
        opened = state.get("open")
        if isinstance(opened, dict):
            for code, info in opened.items():
                rule = self._rules.get(code)
                if rule is None or not rule.active or not isinstance(info, dict):
                    continue
                try:
                    self.open[code] = FaultChange(
                        code=code,
                        raised=True,
                        severity=Severity(info.get("severity", rule.severity)),
                        ts=float(info.get("ts", 0.0)),
                        value=info.get("value"),
                        threshold=info.get("threshold"),
                        message=str(info.get("message", "")),
                    )
                except (TypeError, ValueError):
                    continue
        return refused
