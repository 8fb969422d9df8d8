"""Scenario files (TOML): fleet composition, timed events, duration and speed.

:func:`load_scenario` / :func:`parse_scenario` validate a scenario and return a frozen
:class:`Scenario`; every problem is reported with the key path that caused it (for
example ``fleet.batches[2].latent_defects.fan: unknown fault 'fan'``), all at once, in a
:class:`ScenarioError`. :func:`build_fleet` turns a scenario into one :class:`DeviceSpec`
per device, deterministically: the same file and seed always give the same ids, serials,
attributes, hardware constants and latent defects, and each device's random draws depend
only on the seed and its own id (:func:`simulator.hardware.device_rng`).
:func:`write_factory_csv` writes the fleet as the factory CSV the server's registry imports.

The format is documented in README.md ("Scenario format"); see also
``simulator/scenarios/small.toml`` and ``demo.toml``.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from protocol import is_valid_device_id
from simulator.hardware import (
    FAULTS,
    PROFILE_KINDS,
    AmbientProfile,
    Environment,
    FaultInjection,
    HardwareParams,
    LoadProfile,
    SimulatedHardware,
    device_rng,
)

T = TypeVar("T")

FACTORY_CSV_COLUMNS = (
    "serial",
    "device_id",
    "model",
    "hardware_revision",
    "batch",
    "production_date",
    "region",
    "timezone",
    "channel",
)
CHANNELS = ("production", "pre-production")
EVENT_KINDS = ("inject", "partition", "broker_outage", "power_cut", "publish", "rollout")
DEFAULT_START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ScenarioError(ValueError):
    """The scenario is invalid; ``errors`` lists every problem as ``key.path: message``."""

    def __init__(self, errors: Sequence[str], source: str = "scenario") -> None:
        self.errors = list(errors)
        self.source = source
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{source}: {len(self.errors)} problem(s):\n{lines}")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``"90s"``, ``"15m"``, ``"1h30m"``, ``"2d"``.

    Raises ``ValueError`` with the accepted forms for anything else (negatives too).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"expected a duration >= 0, got {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        pos, total = 0, 0.0
        for match in _DURATION_RE.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNIT_S[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            return total
    raise ValueError(
        f"expected a duration (seconds, or like '90s', '15m', '1h30m', '2d'), got {value!r}"
    )


# --- the model ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dist:
    """A uniform range ``low..high`` or a Weibull(``shape``, ``scale``) distribution."""

    kind: Literal["uniform", "weibull"]
    a: float
    b: float

    def draw(self, rng: np.random.Generator) -> float:
        """One draw."""
        if self.kind == "uniform":
            return float(self.a + (self.b - self.a) * rng.random())
        return float(self.b * rng.weibull(self.a))


@dataclass(frozen=True, slots=True)
class LatentDefect:
    """A batch's latent defect: probability a device has it, onset and severity laws."""

    fault: str
    probability: float
    onset: Dist
    severity: Dist


@dataclass(frozen=True, slots=True)
class Revision:
    """A hardware revision of a model and its hardware constants."""

    name: str
    share: float
    hardware: HardwareParams


@dataclass(frozen=True, slots=True)
class Model:
    """A product model: share of the fleet, serial prefix, load profile, revisions."""

    name: str
    share: float
    serial_prefix: str
    load: LoadProfile
    revisions: tuple[Revision, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    """A manufacturing batch: share, production date, latent defects."""

    name: str
    share: float
    production_date: dt.date
    latent_defects: tuple[LatentDefect, ...] = ()


@dataclass(frozen=True, slots=True)
class Region:
    """Where devices run: share, IANA time zone, ambient temperature."""

    name: str
    share: float
    timezone: str
    ambient: AmbientProfile


@dataclass(frozen=True, slots=True)
class Selector:
    """Which devices an event applies to; empty means every device.

    All given criteria must hold; ``share`` then keeps that fraction of the matches,
    chosen deterministically from the seed and each device id.
    """

    devices: tuple[str, ...] = ()
    model: str | None = None
    revision: str | None = None
    batch: str | None = None
    region: str | None = None
    share: float = 1.0


@dataclass(frozen=True, slots=True)
class Event:
    """A timed event. ``kind`` is one of :data:`EVENT_KINDS`.

    ``inject`` uses ``fault``/``severity``; ``partition`` and ``power_cut`` use
    ``duration`` and ``select``; ``broker_outage`` uses ``duration``; ``publish`` and
    ``rollout`` carry ``params`` opaquely for the simulator to interpret.
    """

    index: int
    kind: str
    at: float
    select: Selector = Selector()
    duration: float = 0.0
    fault: str | None = None
    severity: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Optional server or broker the simulated devices talk to."""

    url: str | None = None
    host: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class Fleet:
    """Fleet composition."""

    devices: int
    id_prefix: str
    channel: str
    models: tuple[Model, ...]
    batches: tuple[Batch, ...]
    regions: tuple[Region, ...]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated scenario. ``speed`` is a real-time factor, or None for "as fast as possible"."""

    name: str
    seed: int
    start: float
    duration_s: float
    speed: float | None
    tick_s: float
    sample_interval_s: float
    fleet: Fleet
    events: tuple[Event, ...] = ()
    server: Endpoint | None = None
    broker: Endpoint | None = None
    description: str = ""
    agent: dict[str, Any] = field(default_factory=dict)
    """The simulated agents' settings (``[agent]``), validated by :func:`_agent`."""


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """Everything needed to instantiate one simulated device."""

    device_id: str
    serial: str
    model: str
    hardware_revision: str
    batch: str
    production_date: dt.date
    region: str
    timezone: str
    utc_offset_s: float
    channel: str
    hardware: HardwareParams
    load: LoadProfile
    ambient: AmbientProfile
    latent_faults: tuple[FaultInjection, ...]
    seed: int

    def make_hardware(self, start_time: float) -> SimulatedHardware:
        """The device's simulated hardware, seeded, with its latent defects injected."""
        hw = SimulatedHardware(
            self.hardware,
            self.load,
            device_rng(self.seed, self.device_id, "hardware"),
            start_time=start_time,
        )
        # start thermally settled at idle in the region's ambient temperature
        hw.state.temp_c = self.ambient.at(start_time, self.utc_offset_s) + (
            self.hardware.p_idle_w * self.hardware.thermal_resistance(self.hardware.fan_nominal_rpm)
        )
        for inj in self.latent_faults:
            hw.inject(inj.fault, inj.severity, inj.at)
        return hw

    def environment(
        self, t: float, *, ntp_reachable: bool = True, powered: bool = True
    ) -> Environment:
        """The device's surroundings at unix time ``t`` (its region's ambient temperature)."""
        return Environment(
            ambient_c=self.ambient.at(t, self.utc_offset_s),
            ntp_reachable=ntp_reachable,
            powered=powered,
            utc_offset_s=self.utc_offset_s,
        )

    def factory_row(self) -> dict[str, str]:
        """The device's row in the factory CSV."""
        return {
            "serial": self.serial,
            "device_id": self.device_id,
            "model": self.model,
            "hardware_revision": self.hardware_revision,
            "batch": self.batch,
            "production_date": self.production_date.isoformat(),
            "region": self.region,
            "timezone": self.timezone,
            "channel": self.channel,
        }


# --- validation -----------------------------------------------------------------------


class _Checker:
    """Collects ``path: message`` errors while reading nested TOML tables."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def err(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def table(self, value: object, path: str, allowed: Iterable[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.err(path, f"expected a table, got {type(value).__name__}")
            return {}
        allowed = set(allowed)
        for key in value:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.err(_join(path, key), f"unknown key (allowed: {hint})")
        return value

    def get(
        self,
        tbl: dict[str, Any],
        path: str,
        key: str,
        conv: Callable[[object], T],
        default: T | None = None,
        *,
        required: bool = False,
    ) -> T | None:
        where = _join(path, key)
        if key not in tbl:
            if required:
                self.err(where, "required")
            return default
        try:
            return conv(tbl[key])
        except (ValueError, TypeError) as exc:
            self.err(where, str(exc))
            return default

    def array(self, tbl: dict[str, Any], path: str, key: str) -> list[Any]:
        value = tbl.get(key, [])
        if not isinstance(value, list):
            self.err(_join(path, key), f"expected an array, got {type(value).__name__}")
            return []
        return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _number(lo: float | None = None, hi: float | None = None, *, integer: bool = False):
    def conv(value: object) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        if integer and not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        if lo is not None and value < lo:
            raise ValueError(f"must be >= {lo}, got {value!r}")
        if hi is not None and value > hi:
            raise ValueError(f"must be <= {hi}, got {value!r}")
        return value

    return conv


def _share(value: object) -> float:
    v = float(_number(0.0, 1.0)(value))
    if v <= 0:
        raise ValueError(f"must be in (0, 1], got {value!r}")
    return v


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _name(value: object) -> str:
    text = _text(value)
    if not _NAME_RE.match(text):
        raise ValueError(f"expected a name of letters, digits, '.', '_', '-' (got {text!r})")
    return text


def _date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"expected a date like 2025-11-03, got {value!r}")


def _start(value: object) -> float:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("the start time needs a UTC offset, e.g. 2026-01-05T00:00:00Z")
        return value.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise ValueError(f"expected a date-time with offset or unix seconds, got {value!r}")


def _speed(value: object) -> float | None:
    if isinstance(value, str) and value.strip().lower() in ("max", "asap", "fastest"):
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and math.isfinite(value) and value > 0:
        return float(value)
    raise ValueError(f'expected a real-time factor > 0 or "max", got {value!r}')


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return seconds


def _dist(value: object, *, duration: bool) -> Dist:
    conv = parse_duration if duration else _number(0.0)
    if isinstance(value, str) and ".." in value:
        low, high = (part.strip() for part in value.split("..", 1))
        try:
            a, b = (float(conv(x if duration else float(x))) for x in (low, high))
        except ValueError as exc:
            raise ValueError(f"range {value!r}: {exc}") from None
        if b < a:
            raise ValueError(f"range {value!r}: the upper bound is below the lower one")
        return Dist("uniform", a, b)
    if isinstance(value, dict):
        unknown = set(value) - {"weibull_shape", "weibull_scale"}
        if unknown or len(value) != 2:
            raise ValueError("expected {weibull_shape = k, weibull_scale = ...}")
        shape = float(_number(0.0)(value["weibull_shape"]))
        scale = float(conv(value["weibull_scale"]))
        if shape <= 0 or scale <= 0:
            raise ValueError("weibull_shape and weibull_scale must be > 0")
        return Dist("weibull", shape, scale)
    v = float(conv(value))
    return Dist("uniform", v, v)


def _check_shares(c: _Checker, path: str, items: Sequence[Any]) -> None:
    if items and abs(sum(i.share for i in items) - 1.0) > 1e-6:
        total = sum(i.share for i in items)
        c.err(path, f"shares must add up to 1, they add up to {total:g}")
    names = [i.name for i in items]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        c.err(path, f"duplicate name {dup!r}")


def _hardware_overrides(c: _Checker, value: object, path: str) -> dict[str, Any]:
    """Validated ``HardwareParams`` overrides from a ``hardware`` table."""
    tbl = c.table(value, path, HardwareParams.field_names())
    kwargs: dict[str, Any] = {}
    for key, raw in tbl.items():
        if key not in HardwareParams.field_names():
            continue
        if key == "has_rtc":
            if isinstance(raw, bool):
                kwargs[key] = raw
            else:
                c.err(_join(path, key), f"expected true or false, got {raw!r}")
            continue
        if key == "cores":
            conv = _number(1, 1024, integer=True)
        else:
            conv = _number(None if key == "clock_ppm" else 0.0)
        value = c.get(tbl, path, key, conv, None)
        if value is not None:
            kwargs[key] = value
    return kwargs


def _hardware(c: _Checker, overrides: dict[str, Any], path: str) -> HardwareParams:
    try:
        return HardwareParams(**overrides)
    except ValueError as exc:
        c.err(path, str(exc))
        return HardwareParams()


def _load(c: _Checker, value: object, path: str) -> LoadProfile:
    if isinstance(value, str):
        value = {"kind": value}
    tbl = c.table(value, path, LoadProfile.field_names())
    kwargs: dict[str, Any] = {}
    for key in tbl:
        if key == "kind":
            kind = c.get(tbl, path, key, _text, "idle")
            if kind not in PROFILE_KINDS:
                c.err(_join(path, key), f"unknown load profile {kind!r} (one of {PROFILE_KINDS})")
            else:
                kwargs[key] = kind
        elif key in LoadProfile.field_names():
            kwargs[key] = c.get(tbl, path, key, _number(0.0), 0.0)
    try:
        return LoadProfile(**kwargs)
    except ValueError as exc:
        c.err(path, str(exc))
        return LoadProfile()


def _latent(c: _Checker, value: object, path: str, duration_s: float) -> tuple[LatentDefect, ...]:
    if not isinstance(value, dict):
        c.err(path, f"expected a table of fault = probability, got {type(value).__name__}")
        return ()
    out = []
    for fault, spec in value.items():
        where = _join(path, fault)
        if fault not in FAULTS:
            c.err(where, f"unknown fault {fault!r} (one of {', '.join(FAULTS)})")
            continue
        if not isinstance(spec, dict):
            spec = {"probability": spec}
        tbl = c.table(spec, where, ("probability", "onset", "severity"))
        prob = c.get(tbl, where, "probability", _number(0.0, 1.0), 0.0, required=True)
        onset = c.get(
            tbl, where, "onset", lambda v: _dist(v, duration=True), Dist("uniform", 0, duration_s)
        )
        sev = c.get(tbl, where, "severity", lambda v: _dist(v, duration=False), None)
        if sev is None:
            sev = Dist("uniform", 0.5, 0.5)
        elif sev.kind == "uniform" and not (sev.a > 0 and sev.b <= 1):
            c.err(_join(where, "severity"), "severity must lie in (0, 1]")
        out.append(LatentDefect(fault, float(prob or 0.0), onset or Dist("uniform", 0, 0), sev))
    return tuple(out)


def _selector(c: _Checker, value: object, path: str) -> Selector:
    keys = ("devices", "model", "revision", "batch", "region", "share")
    tbl = c.table(value, path, keys)
    devices: tuple[str, ...] = ()
    if "devices" in tbl:
        raw = tbl["devices"]
        if not isinstance(raw, list) or not all(isinstance(d, str) for d in raw):
            c.err(_join(path, "devices"), "expected an array of device ids")
        else:
            for i, d in enumerate(raw):
                if not is_valid_device_id(d):
                    c.err(f"{_join(path, 'devices')}[{i}]", f"invalid device id {d!r}")
            devices = tuple(raw)
    return Selector(
        devices=devices,
        model=c.get(tbl, path, "model", _name),
        revision=c.get(tbl, path, "revision", _name),
        batch=c.get(tbl, path, "batch", _name),
        region=c.get(tbl, path, "region", _name),
        share=c.get(tbl, path, "share", _share, 1.0) or 1.0,
    )


def _event(c: _Checker, value: object, path: str, index: int, duration_s: float) -> Event | None:
    base = {"at", "kind"}
    per_kind = {
        "inject": {"fault", "severity", "select"},
        "partition": {"duration", "select"},
        "broker_outage": {"duration"},
        "power_cut": {"duration", "select"},
        "publish": {"params"},
        "rollout": {"params"},
    }
    kind = value.get("kind") if isinstance(value, dict) else None
    if not isinstance(value, dict):
        c.table(value, path, ())
        return None
    if kind not in per_kind:
        c.err(_join(path, "kind"), f"unknown event kind {kind!r} (one of {', '.join(EVENT_KINDS)})")
        return None
    tbl = c.table(value, path, base | per_kind[kind])
    at = c.get(tbl, path, "at", parse_duration, 0.0, required=True) or 0.0
    if at > duration_s:
        c.err(_join(path, "at"), f"after the end of the scenario ({at:g} s > {duration_s:g} s)")
    ev = Event(index=index, kind=kind, at=at)
    if "select" in per_kind[kind]:
        ev = replace(ev, select=_selector(c, tbl.get("select", {}), _join(path, "select")))
    if "duration" in per_kind[kind]:
        ev = replace(
            ev, duration=c.get(tbl, path, "duration", _positive_duration, 0.0, required=True)
        )
    if kind == "inject":
        fault = c.get(tbl, path, "fault", _text, None, required=True)
        if fault is not None and fault not in FAULTS:
            c.err(_join(path, "fault"), f"unknown fault {fault!r} (one of {', '.join(FAULTS)})")
        sev = c.get(tbl, path, "severity", _number(0.0, 1.0), 1.0)
        if sev is not None and sev <= 0:
            c.err(_join(path, "severity"), "must be in (0, 1]")
        ev = replace(ev, fault=fault, severity=float(sev or 1.0))
    if kind in ("publish", "rollout"):
        params = tbl.get("params", {})
        if not isinstance(params, dict):
            c.err(_join(path, "params"), "expected a table")
            params = {}
        ev = replace(ev, params=dict(params))
    return ev


def parse_scenario(data: dict[str, Any], source: str = "scenario") -> Scenario:
    """Validate a decoded TOML document; raise :class:`ScenarioError` listing every problem."""
    c = _Checker()
    top = c.table(data, "", ("scenario", "fleet", "events", "server", "broker", "agent"))
    sc = c.table(top.get("scenario", {}), "scenario", _SCENARIO_KEYS)
    if "scenario" not in top:
        c.err("scenario", "required")
    name = c.get(sc, "scenario", "name", _name, "scenario") or "scenario"
    seed = c.get(sc, "scenario", "seed", _number(0, 2**63 - 1, integer=True), 0, required=True)
    duration = c.get(sc, "scenario", "duration", _positive_duration, 3600.0, required=True)
    duration = duration or 3600.0
    speed = c.get(sc, "scenario", "speed", _speed, None)
    tick = c.get(sc, "scenario", "tick", _positive_duration, 10.0) or 10.0
    interval = c.get(sc, "scenario", "sample_interval", _positive_duration, 60.0) or 60.0
    if interval < tick:
        c.err("scenario.sample_interval", f"shorter than the tick ({interval:g} s < {tick:g} s)")
    start = c.get(sc, "scenario", "start", _start, DEFAULT_START.timestamp())
    description = c.get(sc, "scenario", "description", _text, "") or ""

    fl = c.table(top.get("fleet", {}), "fleet", _FLEET_KEYS)
    if "fleet" not in top:
        c.err("fleet", "required")
    devices = c.get(fl, "fleet", "devices", _number(1, 1_000_000, integer=True), 1, required=True)
    id_prefix = c.get(fl, "fleet", "id_prefix", _name, "sim") or "sim"
    if len(id_prefix) > 48:
        c.err("fleet.id_prefix", "at most 48 characters (device ids are limited to 64)")
    channel = c.get(fl, "fleet", "channel", _text, "production") or "production"
    if channel not in CHANNELS:
        c.err("fleet.channel", f"unknown channel {channel!r} (one of {', '.join(CHANNELS)})")

    models = []
    for i, raw in enumerate(c.array(fl, "fleet", "models")):
        p = f"fleet.models[{i}]"
        m = c.table(raw, p, ("name", "share", "serial_prefix", "load", "hardware", "revisions"))
        base_hw = _hardware_overrides(c, m.get("hardware", {}), _join(p, "hardware"))
        revisions = []
        for j, rraw in enumerate(c.array(m, p, "revisions")):
            rp = f"{p}.revisions[{j}]"
            r = c.table(rraw, rp, ("name", "share", "hardware"))
            overrides = _hardware_overrides(c, r.get("hardware", {}), _join(rp, "hardware"))
            merged = {**base_hw, **overrides}
            revisions.append(
                Revision(
                    name=c.get(r, rp, "name", _name, f"rev{j}", required=True) or f"rev{j}",
                    share=c.get(r, rp, "share", _share, 1.0, required=True) or 1.0,
                    hardware=_hardware(c, merged, _join(rp, "hardware")),
                )
            )
        if not revisions:
            c.err(_join(p, "revisions"), "at least one hardware revision is required")
        _check_shares(c, _join(p, "revisions"), revisions)
        mname = c.get(m, p, "name", _name, f"model{i}", required=True) or f"model{i}"
        models.append(
            Model(
                name=mname,
                share=c.get(m, p, "share", _share, 1.0) or 1.0,
                serial_prefix=c.get(m, p, "serial_prefix", _name, mname[:4].upper()) or "SN",
                load=_load(c, m.get("load", {}), _join(p, "load")),
                revisions=tuple(revisions),
            )
        )
    batches = []
    for i, raw in enumerate(c.array(fl, "fleet", "batches")):
        p = f"fleet.batches[{i}]"
        b = c.table(raw, p, ("name", "share", "production_date", "latent_defects"))
        batches.append(
            Batch(
                name=c.get(b, p, "name", _name, f"batch{i}", required=True) or f"batch{i}",
                share=c.get(b, p, "share", _share, 1.0, required=True) or 1.0,
                production_date=c.get(b, p, "production_date", _date, dt.date(2025, 1, 1))
                or dt.date(2025, 1, 1),
                latent_defects=_latent(
                    c, b.get("latent_defects", {}), _join(p, "latent_defects"), duration
                ),
            )
        )
    regions = []
    for i, raw in enumerate(c.array(fl, "fleet", "regions")):
        p = f"fleet.regions[{i}]"
        r = c.table(raw, p, ("name", "share", "timezone", "ambient"))
        tz = c.get(r, p, "timezone", _text, "UTC") or "UTC"
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            c.err(_join(p, "timezone"), f"unknown IANA time zone {tz!r}")
            tz = "UTC"
        at = c.table(r.get("ambient", {}), _join(p, "ambient"), ("mean", "amplitude", "peak_hour"))
        ap = _join(p, "ambient")
        regions.append(
            Region(
                name=c.get(r, p, "name", _name, f"region{i}", required=True) or f"region{i}",
                share=c.get(r, p, "share", _share, 1.0, required=True) or 1.0,
                timezone=tz,
                ambient=AmbientProfile(
                    mean_c=c.get(at, ap, "mean", _number(-60, 80), 25.0),
                    amplitude_c=c.get(at, ap, "amplitude", _number(0, 40), 0.0),
                    peak_hour=c.get(at, ap, "peak_hour", _number(0, 24), 15.0),
                ),
            )
        )
    for key, items in (("models", models), ("batches", batches), ("regions", regions)):
        if not items:
            c.err(f"fleet.{key}", "at least one entry is required")
        _check_shares(c, f"fleet.{key}", items)

    events = []
    for i, raw in enumerate(c.array(top, "", "events")):
        ev = _event(c, raw, f"events[{i}]", i, duration)
        if ev is not None:
            events.append(ev)
    _check_selectors(c, events, models, batches, regions)

    server = broker = None
    if "server" in top:
        s = c.table(top["server"], "server", ("url",))
        server = Endpoint(url=c.get(s, "server", "url", _text, None, required=True))
    if "broker" in top:
        b = c.table(top["broker"], "broker", ("host", "port"))
        broker = Endpoint(
            host=c.get(b, "broker", "host", _text, "127.0.0.1"),
            port=c.get(b, "broker", "port", _number(1, 65535, integer=True), 1883),
        )
    agent = _agent(c, top.get("agent", {}), "agent")
    if c.errors:
        raise ScenarioError(c.errors, source)
    return Scenario(
        name=name,
        seed=int(seed or 0),
        start=float(start or 0.0),
        duration_s=duration,
        speed=speed,
        tick_s=tick,
        sample_interval_s=interval,
        fleet=Fleet(
            devices=int(devices or 1),
            id_prefix=id_prefix,
            channel=channel,
            models=tuple(models),
            batches=tuple(batches),
            regions=tuple(regions),
        ),
        events=tuple(sorted(events, key=lambda e: (e.at, e.index))),
        server=server,
        broker=broker,
        description=description,
        agent=agent,
    )


_AGENT_KEYS = (
    "publish_interval",
    "keepalive",
    "software_version",
    "buffer_max_bytes",
    "buffer_max_age",
    "faults",
    "adaptive",
)


def _agent(c: _Checker, value: object, path: str) -> dict[str, Any]:
    """The ``[agent]`` table: publish interval, keepalive, version, buffer, fault rules.

    ``faults`` is the agent's own ``[faults]`` table (checked by the agent's rule
    builder when the devices are built); ``adaptive`` lists signals that get an adaptive
    rule with default parameters.
    """
    tbl = c.table(value, path, _AGENT_KEYS)
    out: dict[str, Any] = {}
    publish = c.get(tbl, path, "publish_interval", _positive_duration, None)
    if publish is not None:
        out["publish_interval_s"] = publish
    keepalive = c.get(tbl, path, "keepalive", _number(5, 65535, integer=True), None)
    if keepalive is not None:
        out["keepalive_s"] = keepalive
    version = c.get(tbl, path, "software_version", _text, None)
    if version is not None:
        out["software_version"] = version
    max_bytes = c.get(tbl, path, "buffer_max_bytes", _number(1024, 2**40, integer=True), None)
    if max_bytes is not None:
        out["buffer_max_bytes"] = max_bytes
    max_age = c.get(tbl, path, "buffer_max_age", _positive_duration, None)
    if max_age is not None:
        out["buffer_max_age_s"] = max_age
    if "faults" in tbl:
        if isinstance(tbl["faults"], dict):
            out["faults"] = tbl["faults"]
        else:
            c.err(_join(path, "faults"), "expected a table (the agent's [faults] settings)")
    if "adaptive" in tbl:
        signals = tbl["adaptive"]
        if isinstance(signals, list) and all(isinstance(x, str) and x for x in signals):
            out["adaptive"] = tuple(signals)
        else:
            c.err(_join(path, "adaptive"), 'expected a list of signal names, e.g. ["fan_rpm"]')
    return out


_SCENARIO_KEYS = (
    "name",
    "description",
    "seed",
    "start",
    "duration",
    "speed",
    "tick",
    "sample_interval",
)
_FLEET_KEYS = ("devices", "id_prefix", "channel", "models", "batches", "regions")


def _check_selectors(
    c: _Checker,
    events: Sequence[Event],
    models: Sequence[Model],
    batches: Sequence[Batch],
    regions: Sequence[Region],
) -> None:
    known = {
        "model": {m.name for m in models},
        "revision": {r.name for m in models for r in m.revisions},
        "batch": {b.name for b in batches},
        "region": {r.name for r in regions},
    }
    for ev in events:
        for key, names in known.items():
            value = getattr(ev.select, key)
            if value is not None and value not in names:
                c.err(f"events[{ev.index}].select.{key}", f"no {key} named {value!r}")


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a TOML scenario file.

    Raises :class:`ScenarioError` for unreadable files, TOML syntax errors and every
    schema problem (each with its key path).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError([f"cannot read: {exc.strerror or exc}"], str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ScenarioError(["not UTF-8 text"], str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError([f"TOML syntax: {exc}"], str(path)) from exc
    return parse_scenario(data, str(path))


# --- fleet building -------------------------------------------------------------------


def _quota(shares: Sequence[float], n: int) -> list[int]:
    """Split ``n`` items by ``shares`` exactly (largest remainder, ties by order)."""
    raw = [s * n for s in shares]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _assignment(shares: Sequence[float], n: int, seed: int, what: str) -> list[int]:
    """Indices into ``shares`` for ``n`` devices: exact quotas, deterministically shuffled."""
    labels = np.repeat(np.arange(len(shares)), _quota(shares, n))
    digest = hashlib.sha256(f"{seed}:{what}".encode()).digest()
    np.random.default_rng(int.from_bytes(digest[:8], "little")).shuffle(labels)
    return [int(x) for x in labels]


def _unit_variation(hw: HardwareParams, rng: np.random.Generator) -> HardwareParams:
    """Manufacturing spread between units of one revision (a few percent)."""
    spread = rng.normal(0.0, 1.0, 5)
    return replace(
        hw,
        r_sink_c_per_w=hw.r_sink_c_per_w * (1 + 0.04 * float(spread[0])),
        fan_nominal_rpm=max(0.0, hw.fan_nominal_rpm * (1 + 0.02 * float(spread[1]))),
        psu_resistance_ohm=max(0.0, hw.psu_resistance_ohm * (1 + 0.1 * float(spread[2]))),
        clock_ppm=hw.clock_ppm + 15.0 * float(spread[3]),
        p_idle_w=max(0.0, hw.p_idle_w * (1 + 0.03 * float(spread[4]))),
        p_max_w=max(hw.p_idle_w * (1 + 0.03 * float(spread[4])), hw.p_max_w),
    )


def utc_offset(timezone: str, at: float) -> float:
    """Seconds east of UTC of ``timezone`` at unix time ``at`` (DST included)."""
    when = dt.datetime.fromtimestamp(at, tz=ZoneInfo(timezone))
    offset = when.utcoffset()
    return offset.total_seconds() if offset is not None else 0.0


def build_fleet(scenario: Scenario) -> list[DeviceSpec]:
    """One :class:`DeviceSpec` per device, deterministic for the scenario and its seed.

    Models, revisions, batches and regions are assigned by exact quotas (largest
    remainder) shuffled with a seed per attribute; unit spread and latent defects are
    drawn from each device's own generator, so they do not depend on fleet order.
    """
    fl, seed = scenario.fleet, scenario.seed
    n = fl.devices
    model_of = _assignment([m.share for m in fl.models], n, seed, "model")
    batch_of = _assignment([b.share for b in fl.batches], n, seed, "batch")
    region_of = _assignment([r.share for r in fl.regions], n, seed, "region")
    rev_of: dict[int, int] = {}
    for mi, model in enumerate(fl.models):
        members = [i for i in range(n) if model_of[i] == mi]
        revs = _assignment([r.share for r in model.revisions], len(members), seed, model.name)
        rev_of.update(zip(members, revs, strict=True))
    width = max(5, len(str(n)))
    offsets = {r.timezone: utc_offset(r.timezone, scenario.start) for r in fl.regions}
    specs = []
    for i in range(n):
        model, batch = fl.models[model_of[i]], fl.batches[batch_of[i]]
        region = fl.regions[region_of[i]]
        revision = model.revisions[rev_of[i]]
        device_id = f"{fl.id_prefix}-{i + 1:0{width}d}"
        serial = f"{model.serial_prefix}-{batch.production_date:%y%m}-{i + 1:0{width + 1}d}"
        unit = _unit_variation(revision.hardware, device_rng(seed, device_id, "unit"))
        latent = []
        for defect in batch.latent_defects:
            rng = device_rng(seed, device_id, "latent", defect.fault)
            if rng.random() < defect.probability:
                onset = defect.onset.draw(rng)
                severity = min(1.0, max(1e-3, defect.severity.draw(rng)))
                latent.append(FaultInjection(defect.fault, severity, scenario.start + onset))
        specs.append(
            DeviceSpec(
                device_id=device_id,
                serial=serial,
                model=model.name,
                hardware_revision=revision.name,
                batch=batch.name,
                production_date=batch.production_date,
                region=region.name,
                timezone=region.timezone,
                utc_offset_s=offsets[region.timezone],
                channel=fl.channel,
                hardware=unit,
                load=model.load,
                ambient=region.ambient,
                latent_faults=tuple(latent),
                seed=seed,
            )
        )
    return specs


def select_devices(
    selector: Selector, specs: Sequence[DeviceSpec], seed: int, salt: str = ""
) -> list[DeviceSpec]:
    """The devices an event's selector picks, in fleet order.

    ``share`` keeps a device when a hash of (seed, salt, device id) falls below it, so the
    choice is stable whatever the fleet order; pass the event index as ``salt``.
    """
    wanted = set(selector.devices)
    out = []
    for spec in specs:
        if wanted and spec.device_id not in wanted:
            continue
        if selector.model is not None and spec.model != selector.model:
            continue
        if selector.revision is not None and spec.hardware_revision != selector.revision:
            continue
        if selector.batch is not None and spec.batch != selector.batch:
            continue
        if selector.region is not None and spec.region != selector.region:
            continue
        if selector.share < 1.0:
            digest = hashlib.sha256(f"{seed}:{salt}:{spec.device_id}".encode()).digest()
            if int.from_bytes(digest[:8], "little") / 2**64 >= selector.share:
                continue
        out.append(spec)
    return out


def write_factory_csv(specs: Iterable[DeviceSpec], out: str | Path | IO[str]) -> int:
    """Write the factory CSV (columns :data:`FACTORY_CSV_COLUMNS`); returns the row count."""
    if isinstance(out, str | Path):
        with Path(out).open("w", newline="", encoding="utf-8") as fh:
            return write_factory_csv(specs, fh)
    writer = csv.DictWriter(out, fieldnames=FACTORY_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    rows = 0
    for spec in specs:
        writer.writerow(spec.factory_row())
        rows += 1
    return rows


def factory_csv_text(specs: Iterable[DeviceSpec]) -> str:
    """The factory CSV as a string."""
    buf = io.StringIO()
    write_factory_csv(specs, buf)
    return buf.getvalue()
