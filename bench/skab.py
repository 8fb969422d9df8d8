"""SKAB: the multivariate fault rule on the Skoltech Anomaly Benchmark (a benchmark, not a test).

Follows SKAB's protocol on the recorded files in ``../shared/data/skab`` (the 16
``valve1/`` experiments and ``anomaly-free/anomaly-free.csv``; never copied into the
project): for each file the first 400 rows are anomaly-free training data, the rest is
scored point by point against the ``anomaly`` label. Each file gets a fresh
:class:`agent.core.multivariate.MultivariateRule` over its eight sensors, fed row by row
exactly as a device would feed it (streaming, no look-ahead; the 400 training rows come
first and are the rule's warm-up: learned from, not scored). The prediction for a row is
whether the fault is raised after that row.

Counts are summed over the files before the figures are computed, as SKAB's evaluation
does: F1 = TP / (TP + (FP + FN) / 2), false alarm rate FAR = FP / (FP + TN), missed
alarm rate MAR = FN / (FN + TP). The anomaly-free file adds about 9000 normal points, which
lowers FAR; the figures over the 16 labelled files alone are printed too (``valve1_only``).
Prints per-file and total figures, the rule's cost per sample, and SKAB's published
references; the last line is one JSON object.

Usage: ``python bench/skab.py [--data DIR] [--set name=value ...]`` (``--data`` is the
directory holding ``skab/``, default ``../shared/data`` next to the project).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.core.multivariate import MultivariateRule
from bench.nab import default_data_dir
from protocol import Sample
from simulator.replay import ReplayError, read_table_csv

TRAIN_ROWS = 400
SENSORS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
PUBLISHED = (
    ("Conv-AE (SKAB best)", 0.78, 13.6, None),
    ("Hotelling T²", 0.66, 19.0, 43.0),
)


@dataclass
class Counts:
    """Point-wise confusion counts."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def add(self, other: Counts) -> None:
        """Sum another file's counts into these."""
        self.tp += other.tp
        self.fp += other.fp
        self.tn += other.tn
        self.fn += other.fn

    def figures(self) -> tuple[float, float, float]:
        """F1, FAR and MAR as SKAB defines them (FAR/MAR as fractions; NaN when undefined)."""
        f1 = self.tp / (self.tp + (self.fp + self.fn) / 2) if self.tp + self.fp + self.fn else 1.0
        far = self.fp / (self.fp + self.tn) if self.fp + self.tn else float("nan")
        mar = self.fn / (self.fn + self.tp) if self.fn + self.tp else float("nan")
        return f1, far, mar


def skab_files(data: Path) -> list[Path]:
    """The 17 files: ``valve1/*.csv`` in numeric order, then ``anomaly-free.csv``."""
    valve = sorted((data / "skab" / "valve1").glob("*.csv"), key=lambda p: int(p.stem))
    return [*valve, data / "skab" / "anomaly-free" / "anomaly-free.csv"]


def run_file(path: Path, params: dict[str, float]) -> tuple[Counts, int, float]:
    """Stream one file through a fresh rule; the counts over its scored rows, rows, seconds."""
    with path.open(encoding="utf-8") as f:
        labelled = "anomaly" in f.readline().strip().split(";")
    columns = [*SENSORS, "anomaly"] if labelled else list(SENSORS)
    table = read_table_csv(path, time_col="datetime", value_cols=columns, delimiter=";")
    rule = MultivariateRule(SENSORS, **{"warmup_samples": TRAIN_ROWS, **params})  # type: ignore[arg-type]
    counts = Counts()
    spent = 0.0
    for index, row in enumerate(table.rows):
        custom = {name: v for name, v in zip(SENSORS, row.values, strict=False) if v is not None}
        sample = Sample(ts=row.ts, custom=custom)
        start = time.process_time()
        rule.update(sample)
        spent += time.process_time() - start
        if index < TRAIN_ROWS:
            continue
        label = labelled and row.values[-1] == 1.0
        predicted = rule.active
        if label and predicted:
            counts.tp += 1
        elif label:
            counts.fn += 1
        elif predicted:
            counts.fp += 1
        else:
            counts.tn += 1
    return counts, len(table.rows), spent


def _parse_sets(items: list[str]) -> dict[str, float]:
    params: dict[str, float] = {}
    for item in items:
        key, _, value = item.partition("=")
        number = float(value)
        params[key] = int(number) if key.endswith("_samples") else number
    return params


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures (last line: one JSON object)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=default_data_dir("skab"), help="directory with skab/"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a rule parameter"
    )
    parser.add_argument("--quiet", action="store_true", help="only the JSON line")
    args = parser.parse_args(argv)
    params = _parse_sets(args.set)
    files = skab_files(args.data)
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        print(f"skab: data not found: {missing[0]} (use --data DIR)", file=sys.stderr)
        return 2
    total = Counts()
    labelled = Counts()
    rows = 0
    spent = 0.0
    if not args.quiet:
        print(f"{'file':<30} {'TP':>5} {'FP':>5} {'FN':>5} {'TN':>5}   F1    FAR    MAR")
    for path in files:
        try:
            counts, n, seconds = run_file(path, params)
        except ReplayError as exc:
            print(f"skab: {exc.one_line()}", file=sys.stderr)
            return 2
        total.add(counts)
        if path.parent.name == "valve1":
            labelled.add(counts)
        rows += n
        spent += seconds
        f1, far, mar = counts.figures()
        if not args.quiet:
            name = f"{path.parent.name}/{path.name}"
            print(
                f"{name:<30} {counts.tp:>5} {counts.fp:>5} {counts.fn:>5} {counts.tn:>5} "
                f"{f1:5.2f} {far:6.1%} {mar:6.1%}"
            )
    f1, far, mar = total.figures()
    us = 1e6 * spent / max(rows, 1)
    if not args.quiet:
        for name, counts in (("valve1 only", labelled), ("total (summed counts)", total)):
            c_f1, c_far, c_mar = counts.figures()
            print(
                f"{name:<30} {counts.tp:>5} {counts.fp:>5} {counts.fn:>5} "
                f"{counts.tn:>5} {c_f1:5.2f} {c_far:6.1%} {c_mar:6.1%}"
            )
        print(f"cost: {us:.1f} µs of CPU per sample (8 signals, CPython, {rows} samples)")
        print("published (SKAB leaderboard, whole data set):")
        for name, p_f1, p_far, p_mar in PUBLISHED:
            mar_text = "" if p_mar is None else f"  MAR {p_mar:.0f} %"
            print(f"  {name:<20} F1 {p_f1:.2f}  FAR {p_far:.1f} %{mar_text}")
    summary = {
        "bench": "skab",
        "f1": round(f1, 4),
        "far": round(far, 4),
        "mar": round(mar, 4),
        "files": len(files),
        "tp": total.tp,
        "fp": total.fp,
        "fn": total.fn,
        "tn": total.tn,
        "valve1_only": dict(
            zip(("f1", "far", "mar"), (round(v, 4) for v in labelled.figures()), strict=True)
        ),
        "us_per_sample": round(us, 1),
        "params": params,
        "published": {"conv_ae": {"f1": 0.78, "far": 0.136}, "t2": {"f1": 0.66, "far": 0.19}},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
