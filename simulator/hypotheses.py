"""Fault hypotheses for a field device: simulate each fault knob, rank by fit to the signals.

Pure and deterministic: :func:`rank_hypotheses` takes a device's field signal
(:class:`FieldSignal`, built from its telemetry samples) and its hardware constants, and
for each fault of :data:`simulator.hardware_faults.FAULTS` simulates the hardware in expectation
mode (no noise) with the fault injected over a small grid of severities and onsets, then
refines the best grid point. Each simulation starts from the device's observed state at
the start of the window and is driven by its observed CPU load, so the fit is about what
the *hardware* does with that load.

Score: for each observed channel ``c``, the normalised RMSE ``RMSE(sim_c − obs_c) / scale_c``
with a fixed physical scale (2 °C for temperature, 5 % of nominal fan speed, 0.05 V for the
supply, 1 s of clock offset, ...). The score is the weighted mean over the channels present
(weights in :data:`CHANNELS`: the channels that tell hardware faults apart weigh 1, the
workload channels ``cpu_pct`` and ``mem_pct`` 0.5). Lower is better; 0 is a perfect fit. A
hypothesis is compared with the healthy device (no fault): ``improvement`` is how many
times lower its score is. Memory is compared with a steady workload (the median of the
first tenth of the window) plus the fault's effect. CPU load drives the simulation, so it
is scored differently: the ``cpu_pct`` error is the RMS deviation from its median (scale
10 %) of the load left once the hypothesis' own share is removed, so a runaway process
that explains a lasting jump in load leaves a steadier workload behind.

Limits: without the region's ambient profile, ambient temperature is taken as constant
(estimated from the start of the window); NTP is assumed reachable; a fault already
present at the start of the window is seen only through the initial state (e.g. a fan
already slower than nominal).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from protocol import Sample
from simulator.hardware import SimulatedHardware
from simulator.hardware_faults import FAULTS
from simulator.hardware_params import (
    HOUR_S,
    AmbientProfile,
    Environment,
    HardwareParams,
    LoadProfile,
)
from simulator.hardware_state import HardwareState

CHANNELS: dict[str, float] = {
    "temp_c": 1.0,
    "fan_rpm": 1.0,
    "disk_io_errors": 1.0,
    "emmc_life_used_pct": 0.5,
    "undervoltage": 1.0,
    "supply_v": 1.0,
    "reboots": 1.0,
    "clock_offset_s": 1.0,
    "clock_synced": 1.0,
    "mem_pct": 0.5,
    "cpu_pct": 0.5,
}
"""Channel weights of the score."""

SUPPORT_RATIO = 1.25
"""A hypothesis is *supported* when it fits at least this many times better than healthy."""

SEVERITY_GRID = (0.05, 0.15, 0.35, 0.65, 1.0)
ONSET_GRID = (0.0, 0.2, 0.4, 0.6, 0.8)
"""Onsets as fractions of the observation window."""

_CUMULATIVE = ("disk_io_errors", "reboots", "emmc_life_used_pct", "clock_offset_s")


@dataclass(frozen=True)
class FieldSignal:
    """Aligned arrays of one device's observations; a missing source is ``None``.

    ``undervoltage`` and ``clock_synced`` are 0/1; ``reboots`` is the cumulative count of
    reboots seen (uptime going down); ``disk_io_errors`` is cumulative as reported.
    """

    ts: np.ndarray
    channels: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ts = np.asarray(self.ts, dtype=float)
        if ts.ndim != 1 or len(ts) < 3:
            raise ValueError("a field signal needs at least 3 samples")
        if not np.all(np.isfinite(ts)) or np.any(np.diff(ts) <= 0):
            raise ValueError("sample times must be finite and strictly increasing")
        for name, values in self.channels.items():
            if name not in CHANNELS:
                raise ValueError(f"unknown channel {name!r} (one of {', '.join(CHANNELS)})")
            if np.shape(values) != ts.shape:
                raise ValueError(f"channel {name!r} has {np.shape(values)} values, ts {ts.shape}")
            if not np.all(np.isfinite(values)):
                raise ValueError(f"channel {name!r} has values that are not finite numbers")

    @classmethod
    def from_samples(cls, samples: Sequence[Sample]) -> FieldSignal:
        """Build from telemetry samples (sorted by ``ts``; duplicates dropped).

        A channel is kept when every sample carries it; ``supply_v`` and
        ``clock_offset_s`` come from the samples' ``custom`` fields.
        """
        ordered: list[Sample] = []
        for s in sorted(samples, key=lambda x: x.ts):
            if not ordered or s.ts > ordered[-1].ts:
                ordered.append(s)
        if len(ordered) < 3:
            raise ValueError("a field signal needs at least 3 samples with distinct times")

        def column(get) -> np.ndarray | None:
            values = [get(s) for s in ordered]
            if any(v is None for v in values):
                return None
            return np.asarray(values, dtype=float)

        channels = {
            "temp_c": column(lambda s: s.temp_c),
            "fan_rpm": column(lambda s: s.fan_rpm),
            "disk_io_errors": column(lambda s: s.disk_io_errors),
            "emmc_life_used_pct": column(lambda s: s.emmc_life_used_pct),
            "undervoltage": column(lambda s: s.undervoltage),
            "supply_v": column(lambda s: s.custom.get("supply_v")),
            "clock_offset_s": column(lambda s: s.custom.get("clock_offset_s")),
            "clock_synced": column(lambda s: s.clock_synced),
            "mem_pct": column(lambda s: s.mem_pct),
            "cpu_pct": column(lambda s: s.cpu_pct),
        }
        uptime = column(lambda s: s.uptime_s)
        if uptime is not None:
            channels["reboots"] = np.concatenate([[0.0], np.cumsum(np.diff(uptime) < 0)])
        if channels["clock_offset_s"] is not None:
            channels["clock_synced"] = None  # the offset says more
        return cls(
            np.asarray([s.ts for s in ordered]),
            {k: v for k, v in channels.items() if v is not None},
        )

    def resampled(self, max_points: int) -> FieldSignal:
        """At most ``max_points`` points: bin means for levels, bin ends for cumulative counts."""
        n = len(self.ts)
        if n <= max_points:
            return self
        edges = np.linspace(0, n, max_points + 1).astype(int)
        ends = edges[1:] - 1
        out: dict[str, np.ndarray] = {}
        for name, values in self.channels.items():
            if name in _CUMULATIVE:
                out[name] = values[ends]
            else:
                out[name] = np.add.reduceat(values, edges[:-1]) / np.diff(edges)
        return FieldSignal(self.ts[ends], out)


@dataclass(frozen=True)
class Hypothesis:
    """One fault hypothesis at its best-fitting severity and onset."""

    fault: str
    severity: float
    onset: float
    """Unix time the fault starts in the best fit."""
    score: float
    channel_scores: dict[str, float]
    improvement: float
    """Healthy score ÷ this score (> 1: explains the signals better than no fault)."""
    explanation: str

    @property
    def supported(self) -> bool:
        """True when the fault explains the signals clearly better than a healthy device."""
        return self.improvement >= SUPPORT_RATIO


@dataclass(frozen=True)
class Diagnosis:
    """Hypotheses ranked best first, with the healthy baseline they are compared against."""

    ranked: list[Hypothesis]
    baseline_score: float
    baseline_channels: dict[str, float]
    ambient_c: float
    skipped: dict[str, str]

    @property
    def best(self) -> Hypothesis | None:
        """The best hypothesis, or None when nothing could be tested."""
        return self.ranked[0] if self.ranked else None


def _scales(signal: FieldSignal, params: HardwareParams) -> dict[str, float]:
    ch = signal.channels
    scales = {
        "temp_c": 2.0,
        "fan_rpm": max(100.0, 0.05 * params.fan_nominal_rpm),
        "emmc_life_used_pct": 1.0,
        "undervoltage": 0.25,
        "supply_v": 0.05,
        "reboots": 1.0,
        "clock_offset_s": 1.0,
        "clock_synced": 0.25,
        "mem_pct": 5.0,
        "cpu_pct": 10.0,
    }
    if "disk_io_errors" in ch:
        rise = float(ch["disk_io_errors"][-1] - ch["disk_io_errors"][0])
        scales["disk_io_errors"] = max(3.0, 0.1 * rise)
    return scales


@dataclass
class _Context:
    """Everything a simulation of the window needs, computed once."""

    signal: FieldSignal
    params: HardwareParams
    ambient: np.ndarray
    cpu: np.ndarray
    mem_ref: float
    state0: HardwareState
    scales: dict[str, float]
    envs: list[Environment] = field(default_factory=list)
    dts: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        ts = self.signal.ts
        self.dts = [0.0, *(float(d) for d in np.diff(ts))]
        self.envs = [
            Environment(ambient_c=float(a), cpu_demand_pct=float(c), mem_demand_pct=self.mem_ref)
            for a, c in zip(self.ambient, self.cpu, strict=True)
        ]


def _estimate_ambient(signal: FieldSignal, params: HardwareParams, cpu: np.ndarray) -> float:
    """Ambient from the start of the window, assuming healthy thermals there."""
    ch = signal.channels
    if "temp_c" not in ch:
        return 25.0
    m = max(3, len(signal.ts) // 10)
    rpm = ch["fan_rpm"][:m] if "fan_rpm" in ch else np.full(m, params.fan_nominal_rpm)
    r_th = np.array([params.thermal_resistance(float(r)) for r in rpm])
    power = params.p_idle_w + (params.p_max_w - params.p_idle_w) * np.clip(cpu[:m], 0, 100) / 100
    return float(np.mean(ch["temp_c"][:m]) - np.mean(power * r_th))


def _context(
    signal: FieldSignal,
    params: HardwareParams,
    ambient_c: float | AmbientProfile | None,
    utc_offset_s: float = 0.0,
) -> _Context:
    ch = signal.channels
    n = len(signal.ts)
    m = max(3, n // 10)
    cpu = ch["cpu_pct"] if "cpu_pct" in ch else np.full(n, 10.0)
    if params.fan_nominal_rpm > 0 and "fan_rpm" in ch:
        rpm0 = float(ch["fan_rpm"][0])
        if rpm0 > 0.98 * params.fan_nominal_rpm:
            params = replace(params, fan_nominal_rpm=rpm0)
    if ambient_c is None:
        ambient = np.full(n, _estimate_ambient(signal, params, cpu))
    elif isinstance(ambient_c, AmbientProfile):
        ambient = np.array([ambient_c.at(float(t), utc_offset_s) for t in signal.ts])
    else:
        ambient = np.full(n, float(ambient_c))
    state = HardwareState(t=float(signal.ts[0]), clock_needs_step=False, clock_synced=True)
    state.voltage_v = params.psu_nominal_v
    state.last_clock_save_t = state.t
    state.temp_c = float(ch["temp_c"][0]) if "temp_c" in ch else float(ambient[0]) + 10.0
    state.fan_rpm = params.fan_nominal_rpm
    if params.fan_nominal_rpm > 0 and "fan_rpm" in ch:
        ratio = float(ch["fan_rpm"][0]) / params.fan_nominal_rpm
        if ratio < 0.05:
            state.fan_stalled = True
        state.fan_wear = min(1.0, max(0.0, (1.0 - ratio) / 0.8))
    for name in ("disk_io_errors", "emmc_life_used_pct", "clock_offset_s"):
        if name in ch:
            setattr(state, name, float(ch[name][0]))
    mem_ref = float(np.median(ch["mem_pct"][:m])) if "mem_pct" in ch else 30.0
    return _Context(
        signal=signal,
        params=params,
        ambient=ambient,
        cpu=np.asarray(cpu, dtype=float),
        mem_ref=mem_ref,
        state0=state,
        scales=_scales(signal, params),
    )


def _simulate(
    ctx: _Context, fault: str | None, severity: float, onset: float
) -> dict[str, np.ndarray]:
    """Expected channels over the window with ``fault`` injected (None: healthy)."""
    ts = ctx.signal.ts
    n = len(ts)
    hw = SimulatedHardware(ctx.params, LoadProfile(), None, state=replace(ctx.state0))
    if fault is not None and fault != "cpu_runaway":
        hw.inject(fault, severity, onset)
    want = [c for c in ctx.signal.channels if c != "cpu_pct"]
    out = {c: np.empty(n) for c in want}
    s = hw.state
    boots0 = s.boots

    def record(k: int) -> None:
        for c in want:
            if c == "reboots":
                out[c][k] = s.boots - boots0
            elif c == "undervoltage":
                out[c][k] = s.undervoltage_prob
            elif c == "supply_v":
                out[c][k] = s.voltage_v
            elif c == "clock_synced":
                out[c][k] = 1.0 if s.clock_synced else 0.0
            elif c == "emmc_life_used_pct":
                out[c][k] = min(100.0, s.emmc_life_used_pct)
            else:
                out[c][k] = getattr(s, c)

    # the first point is the observed state
    for c in want:
        out[c][0] = ctx.signal.channels[c][0] if c != "reboots" else 0.0
    for k in range(1, n):
        hw.step(ctx.dts[k], ctx.envs[k])
        record(k)
    if "cpu_pct" in ctx.signal.channels:
        # the CPU the fault itself adds, averaged over each sample's interval
        runaway = np.zeros(n)
        if fault == "cpu_runaway":
            spans = np.maximum(np.asarray(ctx.dts), 1e-9)
            runaway = 100.0 * severity * np.clip((ts - onset) / spans, 0.0, 1.0)
        out["cpu_pct"] = runaway
    return out


def _score(ctx: _Context, sim: dict[str, np.ndarray]) -> tuple[float, dict[str, float]]:
    per: dict[str, float] = {}
    total = weights = 0.0
    for name, obs in ctx.signal.channels.items():
        if name == "cpu_pct":
            # the workload left once the fault's share is removed should look steady
            workload = obs - sim[name]
            spread = workload - np.median(workload)
            err = float(np.sqrt(np.mean(spread**2))) / ctx.scales[name]
        else:
            err = float(np.sqrt(np.mean((sim[name] - obs) ** 2))) / ctx.scales[name]
        per[name] = err
        total += CHANNELS[name] * err
        weights += CHANNELS[name]
    return total / weights, per


def _applicable(fault: str, ctx: _Context) -> str | None:
    """Why ``fault`` cannot be tested on this device (None when it can)."""
    ch = ctx.signal.channels
    if fault in ("fan_degradation", "fan_stall") and ctx.params.fan_nominal_rpm <= 0:
        return "the device has no fan"
    needs = {
        "fan_degradation": ("temp_c", "fan_rpm"),
        "fan_stall": ("temp_c", "fan_rpm"),
        "thermal_paste": ("temp_c",),
        "storage_wear": ("disk_io_errors", "emmc_life_used_pct"),
        "weak_psu": ("undervoltage", "supply_v", "reboots"),
        "clock_drift": ("clock_offset_s", "clock_synced"),
        "memory_leak": ("mem_pct", "reboots"),
        "cpu_runaway": ("cpu_pct",),
    }[fault]
    if not any(c in ch for c in needs):
        return f"no signal that shows it (needs one of: {', '.join(needs)})"
    return None


def _explain(fault: str, severity: float, onset: float, t0: float, per, base_per, score, base):
    if base / max(score, 1e-9) < SUPPORT_RATIO:
        return (
            f"{fault}: fits hardly better than a healthy device "
            f"(score {score:.3f} vs {base:.3f}): not supported by the signals"
        )
    gains = sorted(
        ((base_per[c] - per[c], c) for c in per if base_per[c] - per[c] > 0.05), reverse=True
    )
    which = (
        ", ".join(f"{c} ({base_per[c]:.2f} → {per[c]:.2f})" for _, c in gains[:3])
        or "small gains across channels"
    )
    start = (onset - t0) / HOUR_S
    when = "before the window" if start <= 0 else f"{start:.1f} h into the window"
    return (
        f"{fault} at severity {severity:.2f} starting {when} reproduces the signals "
        f"{base / max(score, 1e-9):.1f}× better than a healthy device; "
        f"normalised error by channel: {which}"
    )


def _refine(
    ctx: _Context, fault: str, sev: float, onset: float, t0: float, span: float
) -> tuple[float, float, float, dict[str, float]]:
    """Pattern search around a grid point: 2 rounds over the 3 × 3 neighbourhood."""
    best_score, best_per = _score(ctx, _simulate(ctx, fault, sev, onset))
    factor, step = 1.5, span * 0.1
    for _ in range(2):
        centre = (sev, onset)
        for k in (1 / factor, 1.0, factor):
            for d in (-step, 0.0, step):
                s2 = min(1.0, max(0.01, centre[0] * k))
                o2 = min(t0 + span, max(t0, centre[1] + d))
                if (s2, o2) == centre:
                    continue
                score, per = _score(ctx, _simulate(ctx, fault, s2, o2))
                if score < best_score:
                    best_score, best_per, sev, onset = score, per, s2, o2
        factor, step = math.sqrt(factor), step / 2
    return sev, onset, best_score, best_per


def rank_hypotheses(
    signal: FieldSignal,
    params: HardwareParams | None = None,
    *,
    ambient_c: float | AmbientProfile | None = None,
    utc_offset_s: float = 0.0,
    faults: Iterable[str] = FAULTS,
    max_points: int = 288,
    severities: Sequence[float] = SEVERITY_GRID,
    onsets: Sequence[float] = ONSET_GRID,
) -> Diagnosis:
    """Fit every fault hypothesis to ``signal`` and rank them, best (lowest score) first.

    ``params`` are the device's hardware constants (its revision's). ``ambient_c`` is the
    ambient temperature if known: a constant, or the region's :class:`AmbientProfile`
    (with the zone's ``utc_offset_s``); without it a constant is estimated from the start
    of the window. The signal is resampled to at most ``max_points`` points (default 288:
    5-minute bins for a day) to keep the search fast. Raises ``ValueError`` for an unknown
    fault name or an impossible ambient temperature.
    """
    params = params or HardwareParams()
    if isinstance(ambient_c, int | float) and not (
        math.isfinite(ambient_c) and -60 <= ambient_c <= 80
    ):
        raise ValueError(f"ambient_c must be between -60 and 80 °C, got {ambient_c!r}")
    if max_points < 3:
        raise ValueError(f"max_points must be at least 3, got {max_points!r}")
    faults = list(faults)
    for f in faults:
        if f not in FAULTS:
            raise ValueError(f"unknown fault {f!r} (one of {', '.join(FAULTS)})")
    sig = signal.resampled(max_points)
    ctx = _context(sig, params, ambient_c, utc_offset_s)
    # the grid search runs on a coarser copy; the refinement on the full resolution
    ambient = ambient_c if ambient_c is not None else float(ctx.ambient[0])
    coarse = _context(sig.resampled(max(16, max_points // 3)), params, ambient, utc_offset_s)
    t0, span = float(sig.ts[0]), float(sig.ts[-1] - sig.ts[0])
    base, base_per = _score(ctx, _simulate(ctx, None, 0.0, math.inf))

    ranked: list[Hypothesis] = []
    skipped: dict[str, str] = {}
    for fault in faults:
        reason = _applicable(fault, ctx)
        if reason:
            skipped[fault] = reason
            continue
        grid = [(s, t0 + f * span) for s in severities for f in onsets]
        _, sev, onset = min(
            (_score(coarse, _simulate(coarse, fault, s, o))[0], s, o) for s, o in grid
        )
        sev, onset, score, per = _refine(ctx, fault, sev, onset, t0, span)
        ranked.append(
            Hypothesis(
                fault=fault,
                severity=round(sev, 3),
                onset=onset,
                score=score,
                channel_scores=per,
                improvement=base / max(score, 1e-9),
                explanation=_explain(fault, sev, onset, t0, per, base_per, score, base),
            )
        )
    ranked.sort(key=lambda h: (h.score, FAULTS.index(h.fault)))
    return Diagnosis(
        ranked=ranked,
        baseline_score=base,
        baseline_channels=base_per,
        ambient_c=float(np.mean(ctx.ambient)),
        skipped=skipped,
    )


__all__ = [
    "CHANNELS",
    "ONSET_GRID",
    "SEVERITY_GRID",
    "SUPPORT_RATIO",
    "Diagnosis",
    "FieldSignal",
    "Hypothesis",
    "rank_hypotheses",
]
