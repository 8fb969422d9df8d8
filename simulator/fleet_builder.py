"""Fleet building: one device spec per device of a scenario, and the factory CSV.

:func:`build_fleet` turns a :class:`~simulator.scenario_model.Scenario` into one
:class:`~simulator.scenario_model.DeviceSpec` per device, deterministically: the same
scenario and seed always give the same ids, serials, attributes, hardware constants and
latent defects, and each device's random draws depend only on the seed and its own id
(:func:`simulator.hardware_params.device_rng`). :func:`select_devices` picks an event's devices;
:func:`write_factory_csv` writes the fleet as the factory CSV the server's registry imports.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO
from zoneinfo import ZoneInfo

import numpy as np

from simulator.hardware_faults import FaultInjection
from simulator.hardware_params import HardwareParams, device_rng
from simulator.scenario_model import DeviceSpec, Scenario, Selector

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
