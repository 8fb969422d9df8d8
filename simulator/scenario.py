"""Scenario files (TOML): loading and validating a whole scenario.

:func:`load_scenario` / :func:`parse_scenario` validate a scenario and return a frozen
:class:`~simulator.scenario_model.Scenario`; every problem is reported with the key path
that caused it (for example ``fleet.batches[2].latent_defects.fan: unknown fault 'fan'``),
all at once, in a :class:`ScenarioError`. The model lives in :mod:`simulator.scenario_model`,
the value converters in :mod:`simulator.scenario_fields`, the per-table checks in
:mod:`simulator.scenario_sections`; :func:`simulator.fleet_builder.build_fleet` turns a
scenario into one device spec per device.

The format is documented in README.md ("Scenario format"); see also
``simulator/scenarios/small.toml`` and ``demo.toml``.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from simulator.hardware_params import AmbientProfile
from simulator.scenario_fields import (
    Checker,
    as_date,
    as_name,
    as_number,
    as_positive_duration,
    as_share,
    as_speed,
    as_start,
    as_text,
    check_shares,
    join_key,
)
from simulator.scenario_model import (
    CHANNELS,
    Batch,
    Endpoint,
    Fleet,
    Model,
    Region,
    Revision,
    Scenario,
)
from simulator.scenario_sections import (
    check_selectors,
    read_agent,
    read_event,
    read_hardware,
    read_hardware_overrides,
    read_latent,
    read_load,
)

DEFAULT_START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)


class ScenarioError(ValueError):
    """The scenario is invalid; ``errors`` lists every problem as ``key.path: message``."""

    def __init__(self, errors: Sequence[str], source: str = "scenario") -> None:
        self.errors = list(errors)
        self.source = source
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{source}: {len(self.errors)} problem(s):\n{lines}")


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


def parse_scenario(data: dict[str, Any], source: str = "scenario") -> Scenario:
    """Validate a decoded TOML document; raise :class:`ScenarioError` listing every problem."""
    c = Checker()
    top = c.table(data, "", ("scenario", "fleet", "events", "server", "broker", "agent"))
    sc = c.table(top.get("scenario", {}), "scenario", _SCENARIO_KEYS)
    if "scenario" not in top:
        c.err("scenario", "required")
    name = c.get(sc, "scenario", "name", as_name, "scenario") or "scenario"
    seed = c.get(sc, "scenario", "seed", as_number(0, 2**63 - 1, integer=True), 0, required=True)
    duration = c.get(sc, "scenario", "duration", as_positive_duration, 3600.0, required=True)
    duration = duration or 3600.0
    speed = c.get(sc, "scenario", "speed", as_speed, None)
    tick = c.get(sc, "scenario", "tick", as_positive_duration, 10.0) or 10.0
    interval = c.get(sc, "scenario", "sample_interval", as_positive_duration, 60.0) or 60.0
    if interval < tick:
        c.err("scenario.sample_interval", f"shorter than the tick ({interval:g} s < {tick:g} s)")
    start = c.get(sc, "scenario", "start", as_start, DEFAULT_START.timestamp())
    description = c.get(sc, "scenario", "description", as_text, "") or ""

    fl = c.table(top.get("fleet", {}), "fleet", _FLEET_KEYS)
    if "fleet" not in top:
        c.err("fleet", "required")
    devices = c.get(fl, "fleet", "devices", as_number(1, 1_000_000, integer=True), 1, required=True)
    id_prefix = c.get(fl, "fleet", "id_prefix", as_name, "sim") or "sim"
    if len(id_prefix) > 48:
        c.err("fleet.id_prefix", "at most 48 characters (device ids are limited to 64)")
    channel = c.get(fl, "fleet", "channel", as_text, "production") or "production"
    if channel not in CHANNELS:
        c.err("fleet.channel", f"unknown channel {channel!r} (one of {', '.join(CHANNELS)})")

    models = []
    for i, raw in enumerate(c.array(fl, "fleet", "models")):
        p = f"fleet.models[{i}]"
        m = c.table(raw, p, ("name", "share", "serial_prefix", "load", "hardware", "revisions"))
        base_hw = read_hardware_overrides(c, m.get("hardware", {}), join_key(p, "hardware"))
        revisions = []
        for j, rraw in enumerate(c.array(m, p, "revisions")):
            rp = f"{p}.revisions[{j}]"
            r = c.table(rraw, rp, ("name", "share", "hardware"))
            overrides = read_hardware_overrides(c, r.get("hardware", {}), join_key(rp, "hardware"))
            merged = {**base_hw, **overrides}
            revisions.append(
                Revision(
                    name=c.get(r, rp, "name", as_name, f"rev{j}", required=True) or f"rev{j}",
                    share=c.get(r, rp, "share", as_share, 1.0, required=True) or 1.0,
                    hardware=read_hardware(c, merged, join_key(rp, "hardware")),
                )
            )
        if not revisions:
            c.err(join_key(p, "revisions"), "at least one hardware revision is required")
        check_shares(c, join_key(p, "revisions"), revisions)
        mname = c.get(m, p, "name", as_name, f"model{i}", required=True) or f"model{i}"
        models.append(
            Model(
                name=mname,
                share=c.get(m, p, "share", as_share, 1.0) or 1.0,
                serial_prefix=c.get(m, p, "serial_prefix", as_name, mname[:4].upper()) or "SN",
                load=read_load(c, m.get("load", {}), join_key(p, "load")),
                revisions=tuple(revisions),
            )
        )
    batches = []
    for i, raw in enumerate(c.array(fl, "fleet", "batches")):
        p = f"fleet.batches[{i}]"
        b = c.table(raw, p, ("name", "share", "production_date", "latent_defects"))
        batches.append(
            Batch(
                name=c.get(b, p, "name", as_name, f"batch{i}", required=True) or f"batch{i}",
                share=c.get(b, p, "share", as_share, 1.0, required=True) or 1.0,
                production_date=c.get(b, p, "production_date", as_date, dt.date(2025, 1, 1))
                or dt.date(2025, 1, 1),
                latent_defects=read_latent(
                    c, b.get("latent_defects", {}), join_key(p, "latent_defects"), duration
                ),
            )
        )
    regions = []
    for i, raw in enumerate(c.array(fl, "fleet", "regions")):
        p = f"fleet.regions[{i}]"
        r = c.table(raw, p, ("name", "share", "timezone", "ambient"))
        tz = c.get(r, p, "timezone", as_text, "UTC") or "UTC"
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            c.err(join_key(p, "timezone"), f"unknown IANA time zone {tz!r}")
            tz = "UTC"
        at = c.table(
            r.get("ambient", {}), join_key(p, "ambient"), ("mean", "amplitude", "peak_hour")
        )
        ap = join_key(p, "ambient")
        regions.append(
            Region(
                name=c.get(r, p, "name", as_name, f"region{i}", required=True) or f"region{i}",
                share=c.get(r, p, "share", as_share, 1.0, required=True) or 1.0,
                timezone=tz,
                ambient=AmbientProfile(
                    mean_c=c.get(at, ap, "mean", as_number(-60, 80), 25.0),
                    amplitude_c=c.get(at, ap, "amplitude", as_number(0, 40), 0.0),
                    peak_hour=c.get(at, ap, "peak_hour", as_number(0, 24), 15.0),
                ),
            )
        )
    for key, items in (("models", models), ("batches", batches), ("regions", regions)):
        if not items:
            c.err(f"fleet.{key}", "at least one entry is required")
        check_shares(c, f"fleet.{key}", items)

    events = []
    for i, raw in enumerate(c.array(top, "", "events")):
        ev = read_event(c, raw, f"events[{i}]", i, duration)
        if ev is not None:
            events.append(ev)
    check_selectors(c, events, models, batches, regions)

    server = broker = None
    if "server" in top:
        s = c.table(top["server"], "server", ("url",))
        server = Endpoint(url=c.get(s, "server", "url", as_text, None, required=True))
    if "broker" in top:
        b = c.table(top["broker"], "broker", ("host", "port"))
        broker = Endpoint(
            host=c.get(b, "broker", "host", as_text, "127.0.0.1"),
            port=c.get(b, "broker", "port", as_number(1, 65535, integer=True), 1883),
        )
    agent = read_agent(c, top.get("agent", {}), "agent")
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
