"""Rollout policy: the declarative, validated description of how a release spreads.

A policy is stored with its rollout (as JSON) and is the only input, besides observations
and time, to every rollout decision. Defaults are safe: a small stratified canary, a
minimum sample before any wave is judged, failure criteria per failure class judged on a
confidence bound over devices that *executed*, a bake time with health gates, per-phase
timeouts, and ``pause`` as the halt action.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from fleet_server.errors import InvalidInputError
from fleet_server.rollouts.criteria import HEALTH_GATES
from protocol import FailureClass

STRATA_FIELDS = ("hardware_revision", "batch", "region", "model")
"""Device registry fields a canary can be stratified by."""

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class PolicyError(InvalidInputError):
    """A policy is invalid (code ``invalid_policy``); ``field`` names the offending key
    (dotted path), also given as ``details["field"]``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__("invalid_policy", f"{field}: {message}", {"field": field})
        self.field = field


class Wave(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One explicit wave: a share of the target (``percent``) or a device ``count``."""

    percent: Annotated[float, Meta(gt=0, le=100)] | None = None
    count: Annotated[int, Meta(ge=1)] | None = None


class ExponentialWaves(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Waves that grow geometrically: ``first`` devices, then ×``factor`` each wave."""

    first: Annotated[int, Meta(ge=1)] = 10
    factor: Annotated[float, Meta(ge=1.1, le=100)] = 2.0


class FailureCriterion(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Halt when failures of ``failure_class`` (or ``"any"``) are credibly above
    ``max_rate`` among executed devices, or exceed ``max_failures`` in number.

    With ``pass_gate`` a wave also passes only once the rate is credibly at or below
    ``max_rate`` (its upper confidence bound); other criteria are tripwires only.
    """

    failure_class: Literal[
        "any", "download", "verification", "install", "boot", "health", "timeout", "security"
    ] = "any"
    max_rate: Annotated[float, Meta(gt=0, lt=1)] = 0.1
    max_failures: Annotated[int, Meta(ge=0)] | None = None
    pass_gate: bool = False


class HealthGate(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Compare updated devices with not-yet-updated devices of the same stratum during the
    bake: halt when ``metric`` is credibly ``max_ratio`` times worse on updated devices."""

    metric: str = "fault_rate"
    """A key of :data:`~fleet_server.rollouts.criteria.HEALTH_GATES`."""
    max_ratio: Annotated[float, Meta(ge=1.0, le=100)] = 2.0
    min_delta_c: Annotated[float, Meta(ge=0, le=100)] = 5.0
    """For ``temp_c``: the mean difference (°C) that counts as worse."""


class Timeouts(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Per-phase deadlines in seconds; silence past one is a ``timeout`` failure."""

    accept_s: Annotated[int, Meta(ge=10)] = 3600
    """From the install command to the device's first report (covers offline devices)."""
    download_s: Annotated[int, Meta(ge=10)] = 3600
    install_s: Annotated[int, Meta(ge=10)] = 1800
    reboot_s: Annotated[int, Meta(ge=10)] = 900
    commit_s: Annotated[int, Meta(ge=10)] = 1800


class MaintenanceWindow(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Local-time window (device time zone) when installs may start; ``end`` may wrap
    past midnight. ``days`` restricts the weekdays (``mon`` … ``sun``)."""

    start: str = "02:00"
    end: str = "05:00"
    days: list[str] = []


class HaltAction(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What happens when the rollout halts: ``pause`` (in-flight devices finish, nothing
    new starts), ``cancel_pending`` (pending devices are released), or ``rollback`` to
    ``rollback_to`` (devices that took the release are sent back to that version)."""

    action: Literal["pause", "cancel_pending", "rollback"] = "pause"
    rollback_to: str | None = None


class Policy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A complete rollout policy. Every field has a safe default."""

    waves: list[Wave] = []
    exponential: ExponentialWaves | None = None
    canary_percent: Annotated[float, Meta(gt=0, le=100)] = 2.0
    """Size of the first wave when ``waves`` is empty (exponential or default waves)."""
    stratify_by: list[str] = msgspec.field(default_factory=lambda: ["hardware_revision", "batch"])
    min_per_stratum: Annotated[int, Meta(ge=0, le=100)] = 3
    """Devices of every stratum to place in the first wave, when the target has them."""
    min_sample: Annotated[int, Meta(ge=1)] = 30
    """Devices that must have executed before a wave can pass."""
    confidence: Annotated[float, Meta(ge=0.5, lt=1)] = 0.95
    failure_criteria: list[FailureCriterion] = msgspec.field(
        default_factory=lambda: [
            FailureCriterion("any", 0.10, pass_gate=True),
            FailureCriterion("boot", 0.05),
            FailureCriterion("security", 0.01, max_failures=0),
        ]
    )
    bake_s: Annotated[int, Meta(ge=0)] = 300
    health_gates: list[HealthGate] = msgspec.field(
        default_factory=lambda: [HealthGate("fault_rate"), HealthGate("reboot_rate")]
    )
    timeouts: Timeouts = Timeouts()
    maintenance_window: MaintenanceWindow | None = None
    max_in_flight: Annotated[int, Meta(ge=1)] = 5000
    canary_in_flight: Annotated[int, Meta(ge=1)] = 20
    """The first wave starts with this many devices (stratified picks first) and sends the
    rest only once they have all reported, so a release that breaks one stratum is caught
    after a handful of installs."""
    on_halt: HaltAction = HaltAction()

    def criteria_for(self, failure_class: FailureClass | str) -> list[FailureCriterion]:
        """The criteria that judge failures of ``failure_class`` (including ``any``)."""
        return [c for c in self.failure_criteria if c.failure_class in ("any", failure_class)]


_DECODER = msgspec.json.Decoder(Policy)


def parse_policy(data: dict[str, Any] | bytes | str | None) -> Policy:
    """Validate a policy from JSON (text, bytes or a decoded dict), filling in defaults.

    Raises :class:`PolicyError` naming the bad field, for type errors and for the
    cross-field rules msgspec cannot express.
    """
    try:
        if data is None:
            policy = Policy()
        elif isinstance(data, bytes | str):
            policy = _DECODER.decode(data)
        else:
            policy = msgspec.convert(data, Policy)
    except msgspec.ValidationError as exc:
        text = str(exc)
        field = text.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in text else "policy"
        if "unknown field `" in text:
            field = text.split("unknown field `", 1)[1].split("`", 1)[0]
        raise PolicyError(field, text.split(" - at ")[0]) from None
    except msgspec.DecodeError as exc:
        raise PolicyError("policy", f"not valid JSON: {exc}") from None
    validate_policy(policy)
    return policy


def validate_policy(policy: Policy) -> None:
    """Check the rules that span fields; raise :class:`PolicyError` on the first broken one."""
    if policy.waves and policy.exponential:
        raise PolicyError("waves", "give explicit waves or exponential waves, not both")
    for i, wave in enumerate(policy.waves):
        if (wave.percent is None) == (wave.count is None):
            raise PolicyError(f"waves[{i}]", "give exactly one of percent or count")
    percents = [w.percent for w in policy.waves if w.percent is not None]
    if sum(percents) > 100.0 + 1e-9:
        raise PolicyError("waves", f"wave percentages add up to {sum(percents):g} > 100")
    for field in policy.stratify_by:
        if field not in STRATA_FIELDS:
            raise PolicyError(
                "stratify_by", f"unknown field {field!r}; choose from {', '.join(STRATA_FIELDS)}"
            )
    seen: set[str] = set()
    for criterion in policy.failure_criteria:
        if criterion.failure_class in seen:
            raise PolicyError(
                "failure_criteria", f"two criteria for failure class {criterion.failure_class!r}"
            )
        seen.add(criterion.failure_class)
    if not any(c.pass_gate for c in policy.failure_criteria):
        raise PolicyError(
            "failure_criteria", "at least one criterion must be a pass_gate (waves could not pass)"
        )
    for i, gate in enumerate(policy.health_gates):
        if gate.metric not in HEALTH_GATES:
            raise PolicyError(
                f"health_gates[{i}].metric",
                f"unknown metric {gate.metric!r}; choose from {', '.join(sorted(HEALTH_GATES))}",
            )
    window = policy.maintenance_window
    if window is not None:
        for name in ("start", "end"):
            if not _HHMM.match(getattr(window, name)):
                raise PolicyError(f"maintenance_window.{name}", "expected HH:MM (24 h)")
        if window.start == window.end:
            raise PolicyError("maintenance_window", "start and end are equal (an empty window)")
        for day in window.days:
            if day not in _WEEKDAYS:
                raise PolicyError("maintenance_window.days", f"unknown day {day!r}")
    halt = policy.on_halt
    if halt.action == "rollback" and not halt.rollback_to:
        raise PolicyError("on_halt.rollback_to", "a rollback halt needs the version to go back to")
    if halt.action != "rollback" and halt.rollback_to:
        raise PolicyError("on_halt.rollback_to", "only a rollback halt takes rollback_to")


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """The policy as plain JSON-ready data (every default spelled out), for storage."""
    return msgspec.to_builtins(policy)


def minutes_of_day(hhmm: str) -> int:
    """``"02:30"`` → 150."""
    match = _HHMM.match(hhmm)
    if not match:
        raise ValueError(f"not HH:MM: {hhmm!r}")
    return int(match.group(1)) * 60 + int(match.group(2))
