"""Scenario TOML sections: checks for each table of a scenario file.

Each reader takes the :class:`~simulator.scenario_fields.Checker`, a raw TOML value and
its key path, and returns the model object (hardware constants, load profile, latent
defects, event selector, event, ``[agent]`` settings), recording problems in the checker.
:func:`simulator.scenario.parse_scenario` assembles them into a scenario.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from protocol import is_valid_device_id
from simulator.hardware_faults import FAULTS
from simulator.hardware_params import PROFILE_KINDS, HardwareParams, LoadProfile
from simulator.scenario_fields import (
    Checker,
    as_dist,
    as_name,
    as_number,
    as_positive_duration,
    as_share,
    as_text,
    join_key,
    parse_duration,
)
from simulator.scenario_model import (
    EVENT_KINDS,
    Batch,
    Dist,
    Event,
    LatentDefect,
    Model,
    Region,
    Selector,
)


def read_hardware_overrides(c: Checker, value: object, path: str) -> dict[str, Any]:
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
                c.err(join_key(path, key), f"expected true or false, got {raw!r}")
            continue
        if key == "cores":
            conv = as_number(1, 1024, integer=True)
        else:
            conv = as_number(None if key == "clock_ppm" else 0.0)
        value = c.get(tbl, path, key, conv, None)
        if value is not None:
            kwargs[key] = value
    return kwargs


def read_hardware(c: Checker, overrides: dict[str, Any], path: str) -> HardwareParams:
    """Hardware constants with ``overrides``; the defaults (and a problem) if invalid."""
    try:
        return HardwareParams(**overrides)
    except ValueError as exc:
        c.err(path, str(exc))
        return HardwareParams()


def read_load(c: Checker, value: object, path: str) -> LoadProfile:
    """A load profile from a ``load`` table or just its kind."""
    if isinstance(value, str):
        value = {"kind": value}
    tbl = c.table(value, path, LoadProfile.field_names())
    kwargs: dict[str, Any] = {}
    for key in tbl:
        if key == "kind":
            kind = c.get(tbl, path, key, as_text, "idle")
            if kind not in PROFILE_KINDS:
                c.err(
                    join_key(path, key), f"unknown load profile {kind!r} (one of {PROFILE_KINDS})"
                )
            else:
                kwargs[key] = kind
        elif key in LoadProfile.field_names():
            kwargs[key] = c.get(tbl, path, key, as_number(0.0), 0.0)
    try:
        return LoadProfile(**kwargs)
    except ValueError as exc:
        c.err(path, str(exc))
        return LoadProfile()


def read_latent(
    c: Checker, value: object, path: str, duration_s: float
) -> tuple[LatentDefect, ...]:
    """A batch's ``latent_defects`` table: fault = probability, or onset and severity laws."""
    if not isinstance(value, dict):
        c.err(path, f"expected a table of fault = probability, got {type(value).__name__}")
        return ()
    out = []
    for fault, spec in value.items():
        where = join_key(path, fault)
        if fault not in FAULTS:
            c.err(where, f"unknown fault {fault!r} (one of {', '.join(FAULTS)})")
            continue
        if not isinstance(spec, dict):
            spec = {"probability": spec}
        tbl = c.table(spec, where, ("probability", "onset", "severity"))
        prob = c.get(tbl, where, "probability", as_number(0.0, 1.0), 0.0, required=True)
        onset = c.get(
            tbl, where, "onset", lambda v: as_dist(v, duration=True), Dist("uniform", 0, duration_s)
        )
        sev = c.get(tbl, where, "severity", lambda v: as_dist(v, duration=False), None)
        if sev is None:
            sev = Dist("uniform", 0.5, 0.5)
        elif sev.kind == "uniform" and not (sev.a > 0 and sev.b <= 1):
            c.err(join_key(where, "severity"), "severity must lie in (0, 1]")
        out.append(LatentDefect(fault, float(prob or 0.0), onset or Dist("uniform", 0, 0), sev))
    return tuple(out)


def read_selector(c: Checker, value: object, path: str) -> Selector:
    """An event's ``select`` table: which devices it applies to."""
    keys = ("devices", "model", "revision", "batch", "region", "share")
    tbl = c.table(value, path, keys)
    devices: tuple[str, ...] = ()
    if "devices" in tbl:
        raw = tbl["devices"]
        if not isinstance(raw, list) or not all(isinstance(d, str) for d in raw):
            c.err(join_key(path, "devices"), "expected an array of device ids")
        else:
            for i, d in enumerate(raw):
                if not is_valid_device_id(d):
                    c.err(f"{join_key(path, 'devices')}[{i}]", f"invalid device id {d!r}")
            devices = tuple(raw)
    return Selector(
        devices=devices,
        model=c.get(tbl, path, "model", as_name),
        revision=c.get(tbl, path, "revision", as_name),
        batch=c.get(tbl, path, "batch", as_name),
        region=c.get(tbl, path, "region", as_name),
        share=c.get(tbl, path, "share", as_share, 1.0) or 1.0,
    )


def read_event(c: Checker, value: object, path: str, index: int, duration_s: float) -> Event | None:
    """One ``[[events]]`` entry, with the keys its kind allows; None if unusable."""
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
        c.err(
            join_key(path, "kind"), f"unknown event kind {kind!r} (one of {', '.join(EVENT_KINDS)})"
        )
        return None
    tbl = c.table(value, path, base | per_kind[kind])
    at = c.get(tbl, path, "at", parse_duration, 0.0, required=True) or 0.0
    if at > duration_s:
        c.err(join_key(path, "at"), f"after the end of the scenario ({at:g} s > {duration_s:g} s)")
    ev = Event(index=index, kind=kind, at=at)
    if "select" in per_kind[kind]:
        ev = replace(ev, select=read_selector(c, tbl.get("select", {}), join_key(path, "select")))
    if "duration" in per_kind[kind]:
        ev = replace(
            ev, duration=c.get(tbl, path, "duration", as_positive_duration, 0.0, required=True)
        )
    if kind == "inject":
        fault = c.get(tbl, path, "fault", as_text, None, required=True)
        if fault is not None and fault not in FAULTS:
            c.err(join_key(path, "fault"), f"unknown fault {fault!r} (one of {', '.join(FAULTS)})")
        sev = c.get(tbl, path, "severity", as_number(0.0, 1.0), 1.0)
        if sev is not None and sev <= 0:
            c.err(join_key(path, "severity"), "must be in (0, 1]")
        ev = replace(ev, fault=fault, severity=float(sev or 1.0))
    if kind in ("publish", "rollout"):
        params = tbl.get("params", {})
        if not isinstance(params, dict):
            c.err(join_key(path, "params"), "expected a table")
            params = {}
        ev = replace(ev, params=dict(params))
    return ev


_AGENT_KEYS = (
    "publish_interval",
    "keepalive",
    "software_version",
    "buffer_max_bytes",
    "buffer_max_age",
    "faults",
    "adaptive",
)


def read_agent(c: Checker, value: object, path: str) -> dict[str, Any]:
    """The ``[agent]`` table: publish interval, keepalive, version, buffer, fault rules.

    ``faults`` is the agent's own ``[faults]`` table (checked by the agent's rule
    builder when the devices are built); ``adaptive`` lists signals that get an adaptive
    rule with default parameters.
    """
    tbl = c.table(value, path, _AGENT_KEYS)
    out: dict[str, Any] = {}
    publish = c.get(tbl, path, "publish_interval", as_positive_duration, None)
    if publish is not None:
        out["publish_interval_s"] = publish
    keepalive = c.get(tbl, path, "keepalive", as_number(5, 65535, integer=True), None)
    if keepalive is not None:
        out["keepalive_s"] = keepalive
    version = c.get(tbl, path, "software_version", as_text, None)
    if version is not None:
        out["software_version"] = version
    max_bytes = c.get(tbl, path, "buffer_max_bytes", as_number(1024, 2**40, integer=True), None)
    if max_bytes is not None:
        out["buffer_max_bytes"] = max_bytes
    max_age = c.get(tbl, path, "buffer_max_age", as_positive_duration, None)
    if max_age is not None:
        out["buffer_max_age_s"] = max_age
    if "faults" in tbl:
        if isinstance(tbl["faults"], dict):
            out["faults"] = tbl["faults"]
        else:
            c.err(join_key(path, "faults"), "expected a table (the agent's [faults] settings)")
    if "adaptive" in tbl:
        signals = tbl["adaptive"]
        if isinstance(signals, list) and all(isinstance(x, str) and x for x in signals):
            out["adaptive"] = tuple(signals)
        else:
            c.err(join_key(path, "adaptive"), 'expected a list of signal names, e.g. ["fan_rpm"]')
    return out


def check_selectors(
    c: Checker,
    events: Sequence[Event],
    models: Sequence[Model],
    batches: Sequence[Batch],
    regions: Sequence[Region],
) -> None:
    """Report event selectors naming a model, revision, batch or region that does not exist."""
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
