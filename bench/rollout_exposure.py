"""Benchmark (not a test): how many devices a bad release reaches before each policy stops
it, and how long a good release takes, ours against the anchors' documented semantics.

Scenario A: 10,000 simulated devices; a bundle that bricks 30 % of one hardware revision
(``rev-c``, 20 % of the fleet) on boot; every update also fails 0.5 % of the time for
reasons unrelated to the bundle. Scenario B: a good bundle with the same 0.5 %.

* **ours**: the real rollout engine (``fleet_server.rollouts.engine.tick``) with its default
  policy, over simulated devices that run the agent's update flow, through the server's
  real ingest path on SQLite (``tests/support/sim_fleet.py``).
* **hawkBit** defaults: groups of equal size (5 groups, the UI's default group count),
  error condition 50 % of the *whole group* -> pause, success condition 50 % finished ->
  start the next group while the current one keeps running; "finished" is counted when the
  device reports installed (before the boot that bricks it).
* **Mender**: time-based phases, no automatic halt (documentation example: 10 %, then
  40 % a day later, then the rest a day after that).
* **AWS IoT Jobs**: exponential rollout (documentation example: 50 devices/min, doubling
  every 1,000 notified), abort criterion FAILED >= 10 % once 100 executed (ALL executions
  counted), cancelling only queued executions (in-progress ones finish).

The anchors run on an event-level simulation of the same devices (same update durations,
same failure draws per device); each prints devices of the affected revision exposed to
the bad bundle, devices harmed (ended a failed update), devices left on a failed update,
time to halt; then the good bundle's completion time and whether the policy halted.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_DEFAULT = 10_000
AFFECTED = "rev-c"
REVISIONS = {"rev-a": 0.5, "rev-b": 0.3, "rev-c": 0.2}
BRICK_SHARE = 0.30
BACKGROUND = 0.005
UPDATE_S = 360.0  # download + install + reboot + trial, as the simulated devices take


@dataclass
class Dev:
    device_id: str
    revision: str
    bricks: bool
    background_fail: bool


def make_fleet(n: int, seed: int = 7) -> list[Dev]:
    """The same fleet for every policy: revision, and whether each device's update fails
    (bundle-related on rev-c, or in the background)."""
    rng = random.Random(seed)
    names, weights = list(REVISIONS), list(REVISIONS.values())
    fleet = []
    for i in range(n):
        device_id = f"sim-{i:05d}"
        digest = hashlib.sha256(f"{seed}:{device_id}".encode()).digest()
        r = random.Random(int.from_bytes(digest[:8], "big"))
        revision = rng.choices(names, weights)[0]
        fleet.append(
            Dev(
                device_id,
                revision,
                revision == AFFECTED and r.random() < BRICK_SHARE,
                r.random() < BACKGROUND,
            )
        )
    return fleet


@dataclass
class Result:
    policy: str
    exposed: int = 0
    harmed: int = 0
    left_failed: int = 0
    halt_s: float | None = None
    complete_s: float | None = None
    halted: bool = False


def _fails(dev: Dev, bad: bool) -> bool:
    return dev.background_fail or (bad and dev.bricks)


def hawkbit(fleet: list[Dev], bad: bool, groups: int = 5) -> Result:
    """Equal groups; next group starts when 50 % of the current one finished; pause when
    errors exceed 50 % of the whole group."""
    res = Result("hawkbit")
    size = math.ceil(len(fleet) / groups)
    parts = [fleet[i : i + size] for i in range(0, len(fleet), size)]
    t = 0.0
    for part in parts:
        for dev in part:
            if dev.revision == AFFECTED and bad:
                res.exposed += 1
            if _fails(dev, bad):
                res.harmed += 1
        errors = sum(_fails(d, bad) for d in part)
        if errors / len(part) > 0.5:
            res.halted, res.halt_s = True, t + UPDATE_S
            return res
        t += UPDATE_S  # half the group reports installed well within one update time
    res.complete_s = t
    return res


def mender(fleet: list[Dev], bad: bool) -> Result:
    """Phases 10 % / 40 % / 50 % a day apart; nothing halts."""
    res = Result("mender")
    for dev in fleet:
        if dev.revision == AFFECTED and bad:
            res.exposed += 1
        if _fails(dev, bad):
            res.harmed += 1
    res.complete_s = 2 * 86400 + UPDATE_S
    return res


def aws_jobs(fleet: list[Dev], bad: bool) -> Result:
    """50/min doubling every 1,000 notified; abort when FAILED >= 10 % of executed once 100
    executed; the abort cancels queued executions only."""
    res = Result("aws_iot_jobs")
    rate, notified, t = 50.0, 0, 0.0
    events: list[tuple[float, Dev]] = []
    done: list[tuple[float, bool]] = []
    order = list(fleet)
    while notified < len(order):
        batch = order[notified : notified + int(rate)]
        for dev in batch:
            events.append((t, dev))
            done.append((t + UPDATE_S, _fails(dev, bad)))
        notified += len(batch)
        if notified // 1000 > (notified - len(batch)) // 1000:
            rate *= 2
        t += 60.0
        finished = [f for at, f in done if at <= t]
        if len(finished) >= 100 and sum(finished) / len(finished) >= 0.10:
            res.halted, res.halt_s = True, t
            break
    for _at, dev in events:  # everything notified runs to the end, even after the abort
        if dev.revision == AFFECTED and bad:
            res.exposed += 1
        if _fails(dev, bad):
            res.harmed += 1
    if not res.halted:
        res.complete_s = max(at for at, _f in done)
    return res


def ours(n: int, bad: bool) -> Result:
    """The real engine with its default policy over simulated agents."""
    from sqlalchemy import select

    from fleet_server.db import create_db_engine, make_session_factory
    from fleet_server.db.models import Bundle
    from fleet_server.db.rollout_models import Rollout
    from fleet_server.migrations import upgrade_to_head
    from fleet_server.services import rollouts as service
    from fleet_server.services.audit import Actor
    from tests.support.sim_fleet import SimFleet, add_bundle, register_fleet

    tmp = tempfile.mkdtemp(prefix="edgefleet-bench-")
    engine = create_db_engine(f"sqlite:///{tmp}/fleet.db")
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    devices = register_fleet(sessions, n, revisions=REVISIONS)
    for device in devices.values():
        device.background_failure = BACKGROUND
    fleet = SimFleet(sessions, devices)
    fleet.announce()
    sim = {"fail_on_hardware": [AFFECTED], "fail_share": BRICK_SHARE} if bad else {}
    name = add_bundle(sessions, "9.9.9", revisions=list(REVISIONS), simulation=sim)
    start = fleet.now
    with sessions() as session:
        bundle = session.execute(select(Bundle).where(Bundle.name == name)).scalar_one()
        rollout = service.create_rollout(
            session,
            name="bench",
            bundle=bundle,
            selector={},
            policy={},
            actor=Actor("bench", "operator"),
            now=fleet.now,
        )
        service.start_rollout(session, rollout, actor=Actor("bench", "operator"), now=fleet.now)
        session.commit()
        rollout_id = rollout.id

    def state() -> str:
        with sessions() as session:
            row = session.get(Rollout, rollout_id)
            assert row is not None
            return row.state

    fleet.run(lambda: state() != "running", max_s=14 * 86400, dt=60.0)
    res = Result("ours")
    final = state()
    res.halted = final in ("halted", "rolled_back")
    if res.halted:
        res.halt_s = fleet.now - start
    elif final == "completed":
        res.complete_s = fleet.now - start
    for device in devices.values():
        if device.installs and device.hw_revision == AFFECTED and bad:
            res.exposed += 1
        if device.installs and device.record.state.value in ("failed", "rolled_back"):
            res.harmed += 1
        if device.slots.status().in_trial:
            res.left_failed += 1
    engine.dispose()
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=N_DEFAULT)
    args = parser.parse_args()
    fleet = make_fleet(args.devices)
    began = time.monotonic()
    bad_results = [
        ours(args.devices, bad=True),
        hawkbit(fleet, True),
        mender(fleet, True),
        aws_jobs(fleet, True),
    ]
    good_results = [
        ours(args.devices, bad=False),
        hawkbit(fleet, False),
        mender(fleet, False),
        aws_jobs(fleet, False),
    ]
    print(
        f"scenario A: bad bundle bricking {BRICK_SHARE:.0%} of {AFFECTED} "
        f"({REVISIONS[AFFECTED]:.0%} of {args.devices} devices), {BACKGROUND:.1%} background"
    )
    print(f"{'policy':14} {'exposed':>8} {'harmed':>7} {'left':>5} {'halt after':>11}")
    for r in bad_results:
        halt = f"{r.halt_s / 60:.0f} min" if r.halt_s is not None else "never"
        print(f"{r.policy:14} {r.exposed:8d} {r.harmed:7d} {r.left_failed:5d} {halt:>11}")
    print("scenario B: good bundle, same background failures")
    print(f"{'policy':14} {'completed in':>13} {'false halt':>11}")
    for r in good_results:
        done = f"{r.complete_s / 3600:.1f} h" if r.complete_s is not None else "no"
        print(f"{r.policy:14} {done:>13} {r.halted!s:>11}")
    ours_bad, ours_good = bad_results[0], good_results[0]
    best_anchor = min(r.exposed for r in bad_results[1:])
    fastest = min(r.complete_s for r in good_results[1:] if r.complete_s is not None)
    summary = {
        "bench": "rollout_exposure",
        "devices": args.devices,
        "ours_exposed": ours_bad.exposed,
        "best_anchor_exposed": best_anchor,
        "ratio": round(ours_bad.exposed / best_anchor, 4) if best_anchor else None,
        "ours_harmed": ours_bad.harmed,
        "ours_left_failed": ours_bad.left_failed,
        "ours_halt_s": ours_bad.halt_s,
        "ours_false_halt": ours_good.halted,
        "ours_complete_s": ours_good.complete_s,
        "fastest_anchor_complete_s": fastest,
        "good_time_ratio": round(ours_good.complete_s / fastest, 3)
        if ours_good.complete_s
        else None,
        "anchors": {
            r.policy: {"exposed": r.exposed, "harmed": r.harmed, "halt_s": r.halt_s}
            for r in bad_results[1:]
        },
        "wall_s": round(time.monotonic() - began, 1),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
