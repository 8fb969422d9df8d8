"""Score the agent's fault engine on the Numenta Anomaly Benchmark (a benchmark, not a test).

Every series of NAB's labelled corpus (``../shared/data/nab`` next to the project, see
``../shared/data/README.md``; ``--data DIR`` to point elsewhere) is replayed through the
agent's fault engine exactly as a device would see it: one sample at a time, in time order,
through :func:`simulator.replay.replay_samples` (the code path of ``fleet-sim replay``) with
the built-in rules plus an adaptive rule on the series. Each *raise* is a detection; the
detections are scored with NAB's method (:mod:`bench.nab_scoring`) under its three profiles.

Two engines run side by side: ``baseline`` (the adaptive rule as it shipped before this
benchmark existed, :data:`BASELINE_PARAMS`) and ``current`` (today's defaults, changed by
``--set name=value``). For each it prints the per-category and overall scores, windows
found, false alarms per series-week, detection delays and the engine's cost per sample.
Last line: one JSON object (the ``current`` figures, with the baseline's under ``baseline``).

Usage: ``python bench/nab.py [--data DIR] [--set name=value ...] [--no-baseline] [--jobs N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.adaptive_eval import parse_set  # noqa: E402
from bench.nab_scoring import (  # noqa: E402
    FileScore,
    Profile,
    load_profiles,
    normalised,
    score_file,
    window_rows,
)
from simulator.replay import (  # noqa: E402
    ReplayError,
    parse_time,
    read_signal_csv,
    replay_rules,
    replay_samples,
)

SIGNAL = "value"
WEEK = 7 * 86400.0
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
BASELINE_PARAMS: dict[str, Any] = {
    "surprise_threshold": None,
    "raise_samples": 3,
    "scale_leak": 0.02,
    "record_threshold": None,
    "keep_warm_after_gap": False,
    "rearm_after_s": None,
    "variance_ratio": None,
    "recurrence_ratio": None,
    "recede_ratio": None,
    "refractory_quiet_s": None,
}
"""The adaptive rule's parameters before NAB tuning (its defaults when this bench was added)."""


@dataclass
class Run:
    """One series replayed through one engine."""

    name: str
    length: int
    windows: list[tuple[int, int]]
    detections: list[int]
    timestamps: list[float]
    seconds: float


def default_data_dir(benchmark: str = "nab") -> Path:
    """``../shared/data`` next to the project (or next to an enclosing directory, as for a
    git worktree) that holds ``benchmark``'s folder."""
    for base in (ROOT, *ROOT.parents):
        candidate = base.parent / "shared" / "data"
        if (candidate / benchmark).is_dir():
            return candidate
    return ROOT.parent / "shared" / "data"


def replay_file(path: Path, name: str, windows: list[list[str]], params: dict[str, Any]) -> Run:
    """Replay one NAB series through the agent's engine; the rows where it raised."""
    signal = read_signal_csv(path, time_col="timestamp", value_col="value", signal=SIGNAL)
    engine = replay_rules(SIGNAL, {"adaptive": [{"signal": SIGNAL, **params}]})
    started = time.process_time()  # CPU time: the machine may be busy with other work
    alarms = replay_samples(signal.rows, SIGNAL, engine)
    seconds = time.process_time() - started
    timestamps = [row.ts for row in signal.rows]
    index = {ts: i for i, ts in enumerate(timestamps)}
    detections = [index[a.ts] for a in alarms if a.event == "raised"]
    spans = [(parse_time(a)[0], parse_time(b)[0]) for a, b in windows]
    return Run(
        name, len(timestamps), window_rows(timestamps, spans), detections, timestamps, seconds
    )


def replay_corpus(data: Path, params: dict[str, Any], jobs: int) -> list[Run]:
    """Every labelled series of the corpus, replayed (in ``jobs`` processes if > 1)."""
    labels: dict[str, list[list[str]]] = json.loads(
        (data / "nab" / "combined_windows.json").read_text()
    )
    names = sorted(labels)
    args = [(data / "nab" / name, name, labels[name], params) for name in names]
    if jobs <= 1:
        return [replay_file(*a) for a in args]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(replay_file, *zip(*args, strict=True)))


def scores(runs: Sequence[Run], profile: Profile) -> dict[str, FileScore]:
    """Each run's NAB score under ``profile``."""
    return {r.name: score_file(r.length, r.detections, r.windows, profile) for r in runs}


def summarise(runs: Sequence[Run], profiles: Mapping[str, Profile]) -> dict[str, Any]:
    """Overall and per-category figures of one engine over the corpus."""
    by_profile = {p: scores(runs, profiles[p]) for p in PROFILES}
    categories = sorted({r.name.split("/")[0] for r in runs})
    per_category: dict[str, dict[str, float]] = {}
    for category in categories:
        per_category[category] = {
            p: round(
                normalised([s for n, s in by_profile[p].items() if n.startswith(category + "/")]),
                1,
            )
            for p in PROFILES
        }
    standard = by_profile["standard"]
    delays_h: list[float] = []
    delays_rel: list[float] = []
    weeks = 0.0
    for run in runs:
        weeks += (run.timestamps[-1] - run.timestamps[0]) / WEEK
        for (left, right), row in zip(run.windows, standard[run.name].first_rows, strict=True):
            if row is not None:
                delays_h.append((run.timestamps[row] - run.timestamps[left]) / 3600)
                delays_rel.append((row - left) / (right - left + 1))
    samples = sum(r.length for r in runs)
    false_positives = sum(s.false_positives for s in standard.values())
    return {
        **{p: round(normalised(list(by_profile[p].values())), 2) for p in PROFILES},
        "files": len(runs),
        "windows": sum(s.windows for s in standard.values()),
        "detected": sum(s.detected for s in standard.values()),
        "false_positives": false_positives,
        "fp_per_series_week": round(false_positives / weeks, 3) if weeks else None,
        "median_delay_h": round(statistics.median(delays_h), 2) if delays_h else None,
        "median_delay_window_fraction": (
            round(statistics.median(delays_rel), 3) if delays_rel else None
        ),
        "us_per_sample": round(1e6 * sum(r.seconds for r in runs) / samples, 1),
        "samples": samples,
        "per_category": per_category,
    }


def report(label: str, summary: Mapping[str, Any]) -> None:
    """Print one engine's figures."""
    print(f"== {label}")
    print(f"  {'category':<24}" + "".join(f"{p:>20}" for p in PROFILES))
    for category, row in summary["per_category"].items():
        print(f"  {category:<24}" + "".join(f"{row[p]:>20.1f}" for p in PROFILES))
    print(f"  {'overall':<24}" + "".join(f"{summary[p]:>20.1f}" for p in PROFILES))
    print(
        f"  windows found {summary['detected']}/{summary['windows']}, "
        f"false alarms {summary['false_positives']} "
        f"({summary['fp_per_series_week']} per series-week), "
        f"median delay {summary['median_delay_h']} h "
        f"({summary['median_delay_window_fraction']} of the window), "
        f"{summary['us_per_sample']} µs of CPU per sample over {summary['samples']} samples"
    )


def main(argv: list[str] | None = None) -> int:
    """Replay the corpus through the baseline and current engines; print their NAB scores."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="the shared data directory")
    parser.add_argument("--set", action="append", default=[], help="rule parameter name=value")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline engine")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--per-file", action="store_true", help="print each series' score")
    args = parser.parse_args(argv)
    data = args.data or default_data_dir()
    if not (data / "nab" / "combined_windows.json").is_file():
        raise SystemExit(f"no NAB data under {data} (expected nab/combined_windows.json)")
    profiles = load_profiles(data / "nab" / "profiles.json")
    params: dict[str, Any] = dict(parse_set(args.set))
    engines = {"current": params}
    if not args.no_baseline:
        engines = {"baseline": BASELINE_PARAMS, **engines}
    results: dict[str, dict[str, Any]] = {}
    for label, engine_params in engines.items():
        try:
            runs = replay_corpus(data, engine_params, args.jobs)
        except ReplayError as exc:
            raise SystemExit(str(exc)) from None
        results[label] = summarise(runs, profiles)
        report(f"{label} {engine_params or '(defaults)'}", results[label])
        if args.per_file:
            for name, s in scores(runs, profiles["standard"]).items():
                print(
                    f"    {name:<58} raw {s.raw:7.3f}  found {s.detected}/{s.windows}"
                    f"  fp {s.false_positives}"
                )
    current = results["current"]
    line: dict[str, Any] = {"bench": "nab", **{k: v for k, v in current.items()}}
    line["params"] = params
    if "baseline" in results:
        base = results["baseline"]
        line["baseline"] = {
            k: base[k] for k in (*PROFILES, "detected", "false_positives", "us_per_sample")
        }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
