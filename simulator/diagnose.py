"""Technician diagnosis of one device from its field telemetry.

:func:`diagnose` takes the device's recent samples (from a telemetry CSV export,
:func:`read_telemetry_csv`, or from the fleet server, :func:`samples_from_api`), replays
them through the agent's fault engine (the alarms the device raises and clears with its
rules, adaptive ones included) and ranks the fault hypotheses by simulating each one
(:func:`simulator.hypotheses.rank_hypotheses`).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core.adaptive import AdaptiveRule
from agent.core.faults import SIGNALS, FaultEngine
from agent.core.rules import build_rules
from protocol import ProtocolDecodeError, Sample, decode
from simulator.hardware_faults import FAULTS
from simulator.hardware_params import AmbientProfile, HardwareParams
from simulator.hypotheses import Diagnosis, FieldSignal, rank_hypotheses
from simulator.replay import (
    BOOL_SIGNALS,
    INT_SIGNALS,
    Alarm,
    ReplayError,
    parse_time,
    parse_value,
)

DEFAULT_ADAPTIVE = ("temp_c", "fan_rpm")
"""Signals that get an adaptive rule in the replay (when the telemetry has them)."""
CUSTOM_CHANNELS = ("supply_v", "clock_offset_s", "freq_factor")


def sample_from_mapping(values: Mapping[str, Any], ts: float) -> Sample:
    """A :class:`Sample` from a flat mapping (a CSV row or an API item).

    Known sample fields are typed (integers, booleans); other numeric entries and the
    API's ``custom`` object go to ``custom``. Unreadable values raise ``ValueError``.
    """
    fields: dict[str, Any] = {}
    custom: dict[str, float] = {}
    for key, raw in values.items():
        if key in ("ts", "time", "timestamp") or raw is None:
            continue
        if key == "custom" and isinstance(raw, Mapping):
            for ck, cv in raw.items():
                if isinstance(cv, int | float) and not isinstance(cv, bool):
                    custom[str(ck)] = float(cv)
            continue
        value = parse_value(raw, key) if isinstance(raw, str) else raw
        if value is None:
            continue
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, int | float):
            raise ValueError(f"{key}: {raw!r} is not a number")
        if key in SIGNALS:
            if key in BOOL_SIGNALS:
                fields[key] = bool(value)
            elif key in INT_SIGNALS:
                fields[key] = int(value)
            else:
                fields[key] = float(value)
        elif key.startswith("custom."):
            custom[key.removeprefix("custom.")] = float(value)
        else:
            custom[key] = float(value)
    return Sample(ts=ts, custom=custom, **fields)


def read_telemetry_csv(path: str | Path, *, time_col: str = "ts") -> list[Sample]:
    """Samples from a telemetry CSV: a time column plus one column per signal.

    Column names are sample fields (``temp_c``, ``fan_rpm``, ``cpu_pct``...) or custom
    signals (``supply_v`` or ``custom.supply_v``); empty cells are missing readings.
    Raises :class:`~simulator.replay.ReplayError` listing each bad cell by line and column.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ReplayError([f"cannot read: {exc.strerror or exc}"], str(path)) from None
    except UnicodeDecodeError:
        raise ReplayError(["not UTF-8 text"], str(path)) from None
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    if time_col not in header:
        raise ReplayError(
            [f"line 1: no column named {time_col!r} (columns: {', '.join(header) or 'none'})"],
            str(path),
        )
    samples: list[Sample] = []
    errors: list[str] = []
    for line_no, row in enumerate(reader, start=2):
        try:
            ts, _ = parse_time(row.get(time_col) or "")
        except ValueError as exc:
            errors.append(f"line {line_no}, column {time_col}: {exc}")
            continue
        values = {k: v for k, v in row.items() if k and k != time_col}
        for key, raw in values.items():
            try:
                parse_value(raw or "", key)
            except ValueError as exc:
                errors.append(f"line {line_no}, column {key}: {exc}")
        if errors:
            continue
        samples.append(sample_from_mapping(values, ts))
    if errors:
        raise ReplayError(errors, str(path))
    if not samples:
        raise ReplayError(["no data rows"], str(path))
    return sorted(samples, key=lambda s: s.ts)


def read_messages_jsonl(path: str | Path, device_id: str) -> list[Sample]:
    """The device's samples from a ``fleet-sim run --out`` file (one message per line).

    Each telemetry line is decoded strictly (:func:`protocol.decode`); a line that is not
    valid JSON or not a valid message raises :class:`~simulator.replay.ReplayError`
    naming the line.
    """
    path = Path(path)
    wanted = f"fleet/v1/{device_id}/telemetry"
    samples: list[Sample] = []
    errors: list[str] = []
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise ReplayError([f"cannot read: {exc.strerror or exc}"], str(path)) from None
    with handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if record.get("topic") != wanted:
                    continue
                message = decode(wanted, json.dumps(record["payload"]).encode())
            except (ValueError, KeyError, AttributeError, ProtocolDecodeError) as exc:
                errors.append(f"line {line_no}: {exc}")
                continue
            samples.extend(message.samples)
    if errors:
        raise ReplayError(errors, str(path))
    if not samples:
        raise ReplayError([f"no telemetry of {device_id}"], str(path))
    return sorted(samples, key=lambda s: s.ts)


def samples_from_api(items: Iterable[Mapping[str, Any]]) -> list[Sample]:
    """Samples from the server's ``/telemetry`` items (``ts`` as ISO 8601 or seconds)."""
    samples = []
    for item in items:
        raw_ts = item.get("ts")
        ts = float(raw_ts) if isinstance(raw_ts, int | float) else parse_time(str(raw_ts))[0]
        samples.append(sample_from_mapping(item, ts))
    return sorted(samples, key=lambda s: s.ts)


@dataclass
class Report:
    """What ``fleet-sim diagnose`` prints."""

    device_id: str
    samples: int
    start: float
    end: float
    alarms: list[Alarm]
    diagnosis: Diagnosis
    server_alarms: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = self.diagnosis
        return {
            "device_id": self.device_id,
            "samples": self.samples,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "replayed_alarms": [a.as_dict() for a in self.alarms],
            "server_alarms": self.server_alarms,
            "baseline_score": d.baseline_score,
            "ambient_c": d.ambient_c,
            "ranking": [
                {
                    "rank": i + 1,
                    "fault": h.fault,
                    "severity": h.severity,
                    "onset": _iso(h.onset),
                    "score": h.score,
                    "improvement": h.improvement,
                    "supported": h.supported,
                    "explanation": h.explanation,
                }
                for i, h in enumerate(d.ranked)
            ],
            "skipped": d.skipped,
        }


def replay_alarms(samples: Sequence[Sample], adaptive: Iterable[str]) -> list[Alarm]:
    """Run the samples through the agent's rules (plus adaptive rules on ``adaptive``)."""
    engine = FaultEngine(build_rules({}))
    for signal in adaptive:
        engine.add(AdaptiveRule(signal))
    alarms = []
    for sample in samples:
        for change in engine.update(sample):
            alarms.append(
                Alarm(
                    event="raised" if change.raised else "cleared",
                    code=change.code,
                    severity=change.severity.value,
                    ts=change.ts,
                    time_text=_iso(change.ts),
                    line=0,
                    value=change.value,
                    threshold=change.threshold,
                    message=change.message,
                )
            )
    return alarms


def diagnose(
    device_id: str,
    samples: Sequence[Sample],
    *,
    params: HardwareParams | None = None,
    ambient: float | AmbientProfile | None = None,
    utc_offset_s: float = 0.0,
    faults: Iterable[str] = FAULTS,
    adaptive: Iterable[str] | None = None,
) -> Report:
    """Replay the samples through the agent's rules and rank the fault hypotheses.

    Raises ``ValueError`` when there are fewer than 3 samples with distinct times or a
    fault name is unknown.
    """
    samples = sorted(samples, key=lambda s: s.ts)
    signal = FieldSignal.from_samples(samples)
    if adaptive is None:
        adaptive = [s for s in DEFAULT_ADAPTIVE if s in signal.channels]
    alarms = replay_alarms(samples, adaptive)
    diagnosis = rank_hypotheses(
        signal, params, ambient_c=ambient, utc_offset_s=utc_offset_s, faults=faults
    )
    return Report(
        device_id=device_id,
        samples=len(samples),
        start=samples[0].ts,
        end=samples[-1].ts,
        alarms=alarms,
        diagnosis=diagnosis,
    )


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat().replace("+00:00", "Z")


__all__ = [
    "CUSTOM_CHANNELS",
    "DEFAULT_ADAPTIVE",
    "Report",
    "diagnose",
    "read_messages_jsonl",
    "read_telemetry_csv",
    "replay_alarms",
    "sample_from_mapping",
    "samples_from_api",
]
