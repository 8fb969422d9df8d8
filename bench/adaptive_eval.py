"""Evaluate the adaptive fault rule on synthetic labelled series (a benchmark, not a test).

Generates a varied, seeded set of series sampled every ~5 minutes for three weeks: base
signals (white noise, heavy-tailed noise, daily seasonality, autocorrelated AR(1),
isolated outliers, integer-quantised, spiky CPU-like, irregular sampling) and anomalies
injected after a probation period (steps up and down, slow drifts, short bursts,
variance increases, a step after a long gap), plus clean controls (some with long gaps).
Each anomaly has a labelled window. The rule's raises are scored NAB-style:

* the first raise inside a window earns ``2 / (1 + exp(5 y)) - 1`` with ``y`` the relative
  position in the window (-1 at its start, 0 at its end: early detection earns ~1);
* a window with no raise costs 1; a raise outside every window costs 0.11;
* the final score is normalised: 0 = a rule that never raises, 100 = perfect.

It also prints recall, false positives per day on the clean controls and the detection
delay, and, for drifts, how much earlier than a fixed limit (8 noise SDs off the
original level) the rule raised. Last line: one JSON object.

Usage: ``python bench/adaptive_eval.py [--seeds N] [--set name=value ...]``.

Recorded data: ``--csv FILE [--time-col timestamp] [--value-col value] [--windows FILE]``
runs one CSV series instead (timestamps as epoch seconds or ISO 8601, UTC assumed) and
prints every raise and clear; with ``--windows`` (a JSON list of ``[start, end]`` pairs, or
a NAB-style object mapping file names to such lists) it scores the raises the same way.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.core.adaptive import AdaptiveRule
from protocol import Sample

DAY = 86400.0
STEP = 300.0
DAYS = 21
PROBATION_DAYS = 5
FIXED_LIMIT_SD = 8.0
BASES = ("white", "heavy", "seasonal", "ar1", "outliers", "quantised", "cpu", "irregular")
ANOMALIES = ("none", "none_gap", "step_up", "step_down", "drift", "burst", "variance", "gap_step")


@dataclass
class Series:
    """One labelled series."""

    name: str
    ts: np.ndarray
    x: np.ndarray
    windows: list[tuple[float, float]] = field(default_factory=list)
    fixed_limit_ts: float | None = None


def _base(kind: str, ts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A base signal and its noise SD."""
    n = len(ts)
    level = float(rng.uniform(20, 3000))
    sd = level * float(rng.uniform(0.005, 0.03))
    if kind == "heavy":
        noise = rng.standard_t(3, n) * sd / math.sqrt(3)
    elif kind == "ar1":
        e = rng.normal(0, sd * math.sqrt(1 - 0.9**2), n)
        noise = np.empty(n)
        acc = 0.0
        for i in range(n):
            acc = 0.9 * acc + e[i]
            noise[i] = acc
    else:
        noise = rng.normal(0, sd, n)
    x = level + noise
    if kind == "seasonal":
        x += 4 * sd * np.sin(2 * math.pi * ts / DAY + rng.uniform(0, 2 * math.pi))
    elif kind == "outliers":
        hits = rng.random(n) < 0.005
        x[hits] += rng.choice([-1, 1], hits.sum()) * 10 * sd
    elif kind == "quantised":
        sd = 0.6
        x = np.round(50 + rng.normal(0, sd, n))
    elif kind == "cpu":
        sd = 3.0
        x = np.clip(15 + rng.gamma(2.0, 1.5, n) * 2, 0, 100)
        hits = rng.random(n) < 0.01
        x[hits] = rng.uniform(60, 100, hits.sum())
    return x, sd


def make_series(base: str, anomaly: str, seed: int) -> Series:
    """Generate one labelled series."""
    rng = np.random.default_rng(seed)
    n = int(DAYS * DAY / STEP)
    if base == "irregular":
        ts = np.cumsum(rng.exponential(STEP, n))
    else:
        ts = np.arange(n) * STEP + rng.normal(0, 5, n).clip(-20, 20)
    ts = ts + 1.7e9
    x, sd = _base(base if base != "irregular" else "white", ts - 1.7e9, rng)
    t0 = 1.7e9 + float(rng.uniform(PROBATION_DAYS, DAYS - 6)) * DAY
    after = ts >= t0
    series = Series(f"{base}/{anomaly}/{seed}", ts, x)
    sign = float(rng.choice([-1, 1]))
    if anomaly in ("step_up", "step_down", "gap_step"):
        sign = -1.0 if anomaly == "step_down" else 1.0
        x[after] += sign * float(rng.uniform(6, 12)) * sd
        series.windows.append((t0, t0 + DAY))
    elif anomaly == "drift":
        rate = float(rng.uniform(0.5, 2.0)) * sd / DAY  # signal units per second
        x[after] += sign * rate * (ts[after] - t0)
        limit = t0 + FIXED_LIMIT_SD * sd / rate
        series.fixed_limit_ts = limit
        series.windows.append((t0, limit))
    elif anomaly == "burst":
        burst = after & (ts < t0 + 6 * STEP)
        x[burst] += sign * float(rng.uniform(8, 15)) * sd
        series.windows.append((t0, t0 + DAY / 2))
    elif anomaly == "variance":
        x[after] = np.median(x) + (x[after] - np.median(x)) * 5
        series.windows.append((t0, t0 + DAY))
    keep = np.ones(len(ts), bool)
    if anomaly in ("none_gap", "gap_step"):
        gap_start = t0 - (0.75 * DAY if anomaly == "gap_step" else 0)
        keep &= ~((ts >= gap_start) & (ts < gap_start + 0.7 * DAY))
        if anomaly == "gap_step":
            # The step happens during the gap: the first samples after it are anomalous.
            series.windows = [(gap_start + 0.7 * DAY, gap_start + 1.7 * DAY)]
    series.ts, series.x = ts[keep], x[keep]
    return series


def run_rule(series: Series, params: dict[str, float | None]) -> list[float]:
    """Times of the rule's raises over the series."""
    rule = AdaptiveRule("value", **params)  # type: ignore[arg-type]
    raises: list[float] = []
    for t, v in zip(series.ts.tolist(), series.x.tolist(), strict=True):
        change = rule.update(Sample(ts=t, custom={"value": v}))
        if change is not None and change.raised:
            raises.append(t)
    return raises


@dataclass
class Outcome:
    """Per-series scoring."""

    score: float
    windows: int
    detected: int
    false_positives: int
    delays: list[float]
    lead_vs_fixed: list[float]


def score_series(series: Series, raises: list[float]) -> Outcome:
    """NAB-like score of one series."""
    score = 0.0
    detected = 0
    delays: list[float] = []
    lead: list[float] = []
    used: set[int] = set()
    for start, end in series.windows:
        inside = [i for i, t in enumerate(raises) if start <= t <= end]
        used.update(inside)
        if not inside:
            score -= 1.0
            continue
        first = raises[inside[0]]
        y = (first - end) / (end - start)
        score += 2 / (1 + math.exp(5 * y)) - 1
        detected += 1
        delays.append(first - start)
        if series.fixed_limit_ts is not None:
            lead.append(series.fixed_limit_ts - first)
    fps = sum(1 for i in range(len(raises)) if i not in used)
    score -= 0.11 * fps
    return Outcome(score, len(series.windows), detected, fps, delays, lead)


def parse_set(items: list[str]) -> dict[str, float | None]:
    """``name=value`` pairs as rule keyword arguments."""
    params: dict[str, float | None] = {}
    for item in items:
        name, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"--set expects name=value, got {item!r}")
        if value == "none":
            params[name] = None
            continue
        try:
            params[name] = float(value) if "." in value or "e" in value else int(value)
        except ValueError:
            raise SystemExit(f"--set {name}: not a number: {value!r}") from None
    return params


def _parse_time(text: str) -> float:
    """Epoch seconds, or an ISO 8601 timestamp (naive means UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    moment = dt.datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def load_csv(path: Path, time_col: str, value_col: str) -> Series:
    """A recorded series; rows with an empty or non-numeric value are gaps."""
    ts: list[float] = []
    xs: list[float] = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {time_col, value_col} - set(reader.fieldnames or [])
        if missing:
            raise SystemExit(f"{path}: no column {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            try:
                t = _parse_time(row[time_col])
            except ValueError:
                raise SystemExit(f"{path}:{line}: bad timestamp {row[time_col]!r}") from None
            try:
                value = float(row[value_col])
            except ValueError:
                value = math.nan
            ts.append(t)
            xs.append(value)
    return Series(path.name, np.array(ts), np.array(xs))


def load_windows(path: Path, series_name: str) -> list[tuple[float, float]]:
    """Labelled windows: a list of [start, end] or a NAB-style {file: [[start, end]...]}."""
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        matches = [v for k, v in data.items() if k.endswith(series_name)]
        if not matches:
            raise SystemExit(f"{path}: no windows for {series_name}")
        data = matches[0]
    return [(_parse_time(str(a)), _parse_time(str(b))) for a, b in data]


def run_csv(args: argparse.Namespace, params: dict[str, float | None]) -> int:
    """Replay one recorded series, print its raises and clears, score them if labelled."""
    series = load_csv(Path(args.csv), args.time_col, args.value_col)
    if args.windows:
        series.windows = load_windows(Path(args.windows), series.name)
    rule = AdaptiveRule("value", **params)  # type: ignore[arg-type]
    raises: list[float] = []
    order = np.argsort(series.ts, kind="stable")
    for t, v in zip(series.ts[order].tolist(), series.x[order].tolist(), strict=True):
        value = None if math.isnan(v) else v
        change = rule.update(Sample(ts=t, custom={} if value is None else {"value": value}))
        if change is None:
            continue
        when = dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")
        print(f"{when} {'RAISE' if change.raised else 'clear'} {change.message}")
        if change.raised:
            raises.append(t)
    summary: dict[str, object] = {"series": series.name, "raises": len(raises)}
    if series.windows:
        outcome = score_series(series, raises)
        windows = outcome.windows
        perfect = windows * (2 / (1 + math.exp(-5)) - 1)
        nab = 100 * (outcome.score + windows) / (perfect + windows) if windows else 0.0
        summary.update(
            nab_score=round(nab, 2),
            detected=outcome.detected,
            windows=windows,
            false_positives=outcome.false_positives,
        )
        print(
            f"detected {outcome.detected}/{windows} windows, {outcome.false_positives} raises "
            f"outside them; NAB-like score {nab:.1f}"
        )
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation and print per-kind figures and a JSON summary line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2, help="series per (base, anomaly) pair")
    parser.add_argument("--set", action="append", default=[], help="rule parameter name=value")
    parser.add_argument("--quiet", action="store_true", help="only the JSON summary line")
    parser.add_argument("--csv", help="replay one recorded CSV series instead")
    parser.add_argument("--time-col", default="timestamp", help="CSV time column")
    parser.add_argument("--value-col", default="value", help="CSV value column")
    parser.add_argument("--windows", help="JSON file of labelled [start, end] windows")
    args = parser.parse_args(argv)
    params = parse_set(args.set)
    try:
        AdaptiveRule("value", **params)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"bad --set: {exc}") from None
    if args.csv:
        try:
            return run_csv(args, params)
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise SystemExit(f"cannot replay {args.csv}: {exc}") from None

    started = time.perf_counter()
    raw = null = perfect = 0.0
    by_anomaly: dict[str, list[Outcome]] = {a: [] for a in ANOMALIES}
    by_base: dict[str, list[Outcome]] = {b: [] for b in BASES}
    clean_days = 0.0
    clean_fp = 0
    samples = 0
    seed = 0
    for base in BASES:
        for anomaly in ANOMALIES:
            for _ in range(args.seeds):
                seed += 1
                series = make_series(base, anomaly, seed)
                samples += len(series.ts)
                outcome = score_series(series, run_rule(series, params))
                by_anomaly[anomaly].append(outcome)
                by_base[base].append(outcome)
                raw += outcome.score
                null -= outcome.windows
                perfect += outcome.windows * (2 / (1 + math.exp(-5)) - 1)
                if not series.windows:
                    clean_days += (series.ts[-1] - series.ts[0]) / DAY
                    clean_fp += outcome.false_positives
    elapsed = time.perf_counter() - started

    def line(label: str, outs: list[Outcome]) -> str:
        windows = sum(o.windows for o in outs)
        det = sum(o.detected for o in outs)
        fps = sum(o.false_positives for o in outs)
        delays = [d for o in outs for d in o.delays]
        delay = f"{statistics.median(delays) / 3600:7.1f} h" if delays else "      -  "
        recall = f"{det}/{windows}" if windows else "-"
        return f"  {label:<10} recall {recall:>6}  FPs {fps:3d}  median delay {delay}"

    nab = 100 * (raw - null) / (perfect - null) if perfect > null else 0.0
    all_outs = [o for outs in by_anomaly.values() for o in outs]
    windows = sum(o.windows for o in all_outs)
    detected = sum(o.detected for o in all_outs)
    fps = sum(o.false_positives for o in all_outs)
    leads = [t for o in all_outs for t in o.lead_vs_fixed]
    delays = [d for o in all_outs for d in o.delays]
    if not args.quiet:
        print(f"parameters: {params or 'defaults'}")
        print("by anomaly:")
        for anomaly, outs in by_anomaly.items():
            print(line(anomaly, outs))
        print("by base signal:")
        for base, outs in by_base.items():
            print(line(base, outs))
        if leads:
            print(
                f"drifts: raised a median {statistics.median(leads) / DAY:.1f} days before a "
                f"fixed {FIXED_LIMIT_SD:.0f}-SD limit would"
            )
        print(
            f"clean controls: {clean_fp} false positives in {clean_days:.0f} days "
            f"({clean_fp / clean_days:.3f}/day)"
        )
        print(f"{samples} samples in {elapsed:.1f} s ({1e6 * elapsed / samples:.1f} µs/sample)")
        print(f"NAB-like score (0 = never raise, 100 = perfect): {nab:.1f}")
    summary = {
        "nab_score": round(nab, 2),
        "recall": round(detected / windows, 3) if windows else None,
        "false_positives": fps,
        "clean_fp_per_day": round(clean_fp / clean_days, 4) if clean_days else None,
        "median_delay_h": round(statistics.median(delays) / 3600, 2) if delays else None,
        "drift_lead_days": round(statistics.median(leads) / DAY, 2) if leads else None,
        "us_per_sample": round(1e6 * elapsed / samples, 1),
        "params": params,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
