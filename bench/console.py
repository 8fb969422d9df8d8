"""Console page benchmark on PostgreSQL at fleet scale (a benchmark, not a test).

Builds a scratch PostgreSQL database (from ``--pg`` or ``FLEET_TEST_DATABASE_URL``) with
100,000 registered devices, 30 days of hourly aggregates and one day of raw samples for
1,000 of them, open alarms, 20 rollouts (some started), 10 open recalls with 30 days of
completion snapshots, and warranty claims; then loads every console page 20 times through
the real app (in process, signed in as a console user) and reports, per page, the server
time (median and p95, measured inside the ASGI app from request to last body byte) and the
bytes sent. It also times the device page's 30-day chart series on its own.

Goals (issue 16): every page p95 <= 300 ms and <= 500 KB; the 30-day chart <= 150 ms.
The warranty page's analyses (early warning and rates, Weibull fits, parts reliability)
load into it through htmx; they are timed apart (``warranty_*``, ``worst_analysis_ms``,
``--analysis-loads`` times each) because they read the whole fleet's service history.
Last line: ``{"bench": "console", "pages": {...}, "worst_p95_ms": ..., "worst_kb": ...}``.

Usage: ``python bench/console.py [--devices 100000] [--loads 20] [--raw-step 60]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from bench.ingest import scratch_postgres
from fleet_server.config import Settings
from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.db.models import Bundle, RecallSnapshot, WarrantyClaim
from fleet_server.domain.roles import Role
from fleet_server.migrations import upgrade_to_head
from fleet_server.services import recalls, series, users
from fleet_server.services import rollouts as rollout_service
from fleet_server.services.audit import SYSTEM

NOW = 1_790_000_000.0
DAY = 86400.0
BATCHES = 50
PASSWORD = "bench console password"


def populate(sessions: Any, devices: int, charted: int, raw_step: int) -> dict[str, Any]:
    """Bulk-load the fleet with SQL (generate_series) and the rest through services."""
    t0 = time.perf_counter()
    with sessions() as s:
        s.execute(
            text(
                """
            INSERT INTO devices (device_id, serial, model, hw_revision, batch, region,
                timezone, owner, channel, tags, status, created_at, software_version, slot,
                last_seen, dropped_total, open_faults, presence, presence_changed_at,
                production_date, activation_date)
            SELECT 'dev-' || lpad(i::text, 6, '0'), 'SN' || i, 'gw-' || (i % 4),
                'rev-' || chr(97 + i % 3), 'lot-' || (i % :batches), 'eu-' || (i % 5),
                'UTC', 'owner ' || (i % 997), 'production', '[]', 'active', :now,
                '1.' || (i % 7) || '.0', 'a', :now - (i % 3600),
                0, CASE WHEN i % 50 = 0 THEN 1 ELSE 0 END,
                CASE WHEN i % 10 = 0 THEN 'offline' ELSE 'online' END, :now,
                DATE '2025-01-01' + (i % 300), DATE '2025-03-01' + (i % 400)
            FROM generate_series(1, :n) AS i
            """
            ),
            {"n": devices, "now": NOW, "batches": BATCHES},
        )
        s.execute(
            text(
                """
            INSERT INTO telemetry_hourly (device_key, hour, samples, cpu_min, cpu_avg,
                cpu_max, mem_min, mem_avg, mem_max, disk_min, disk_avg, disk_max, temp_min,
                temp_avg, temp_max)
            SELECT d, h, 60, 10, 20 + (h / 3600) % 30, 60, 30, 40, 50, 20, 30, 40, 35,
                45 + ((h / 3600) % 24) * 0.5, 60
            FROM generate_series(1, :charted) AS d,
                 generate_series(CAST(:first AS bigint), CAST(:last AS bigint), 3600) AS h
            """
            ),
            {
                "charted": charted,
                "first": int((NOW - 30 * DAY) // 3600 * 3600),
                "last": int((NOW - DAY) // 3600 * 3600),
            },
        )
        s.execute(
            text(
                """
            INSERT INTO telemetry (device_key, ts, cpu_pct, mem_pct, disk_pct, temp_c)
            SELECT d, t, t % 100, 40, 30, 40 + (t % 600) / 60.0
            FROM generate_series(1, :charted) AS d,
                 generate_series(CAST(:first AS bigint), CAST(:last AS bigint),
                                 CAST(:step AS bigint)) AS t
            """
            ),
            {"charted": charted, "first": int(NOW - DAY), "last": int(NOW - 1), "step": raw_step},
        )
        s.execute(
            text(
                """
            INSERT INTO alarms (device_key, code, severity, state, raised_at, raised_seq,
                raised_boot_id, message, occurrences)
            SELECT i, 'temp_high', CASE WHEN i % 3 = 0 THEN 'major' ELSE 'warning' END,
                'open', :now - (i % 604800), 1, 'b', 'SoC temperature above limit', 1
            FROM generate_series(50, :n, 50) AS i
            """
            ),
            {"n": devices, "now": NOW},
        )
        for k in range(4):
            s.add(
                Bundle(
                    name=f"edgefleet-gw-{k}-2.0.0-r2.tar.gz",
                    product="edgefleet",
                    model=f"gw-{k}",
                    version="2.0.0",
                    hardware_revisions=["rev-a", "rev-b", "rev-c"],
                    release_counter=2,
                    channel="production",
                    min_agent_version="0.1.0",
                    sha256="0" * 64,
                    size=1,
                    manifest={"sbom": [{"name": "app", "version": "2.0.0", "licence": "MIT"}]},
                    published_at=NOW,
                    published_by="bench",
                    preprod_completed_at=NOW,
                )
            )
        for i in range(1, 2001):
            s.add(
                WarrantyClaim(
                    device_ref=f"dev-{i * 37 % devices + 1:06d}",
                    device_key=i * 37 % devices + 1,
                    failure_mode=("fan", "psu", "emmc")[i % 3],
                    failure_date=date(2025, 6 + i % 6, 1 + i % 27),
                    state="approved",
                    checks=[],
                    evidence={},
                    created_at=NOW - (i % 60) * DAY,
                    created_by="bench",
                )
            )
        s.commit()
    loaded = time.perf_counter() - t0
    rollout_ids = []
    with sessions() as s:
        for k in range(20):
            draft = rollout_service.create_draft(
                s,
                name=f"release-{k}",
                bundle=f"edgefleet-gw-{k % 4}-2.0.0-r2.tar.gz",
                selector={"model": f"gw-{k % 4}", "batch": f"lot-{k}"},
                policy={"bake_s": 300},
                actor=SYSTEM,
                now=NOW,
            )
            rollout_ids.append(draft["id"])
            if k < 5:
                rollout_service.start(s, draft["id"], actor=SYSTEM, now=NOW)
        campaign_ids = []
        for k in range(10):
            campaign = recalls.create_campaign(
                s,
                SYSTEM,
                campaign_id=f"RC-{k:03d}",
                title=f"batch lot-{20 + k}",
                scope={"batches": [f"lot-{20 + k}"]},
                now=NOW - 30 * DAY,
                physical_action="replace",
            )
            recalls.open_campaign(s, SYSTEM, campaign, now=NOW - 30 * DAY)
            for d in range(30):
                s.add(
                    RecallSnapshot(
                        campaign_id=campaign.id,
                        at=NOW - (30 - d) * DAY,
                        population=2000,
                        remedied=d * 50,
                        not_needed=0,
                        unreachable=20,
                        raw_rate=d * 50 / 2000,
                        adjusted_rate=d * 50 / 1980,
                    )
                )
            campaign_ids.append(campaign.id)
        users.create_user(s, "bench", Role.ADMIN, actor=SYSTEM, now=NOW, password=PASSWORD)
        s.commit()
        s.execute(text("ANALYZE"))
    return {
        "load_s": round(loaded, 1),
        "setup_s": round(time.perf_counter() - t0, 1),
        "rollout": rollout_ids[0],
        "recall": campaign_ids[0],
    }


class Timed:
    """ASGI wrapper recording each request's server time and body bytes."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.last: tuple[float, int] = (0.0, 0)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        size = 0

        async def counting(message: Any) -> None:
            nonlocal size
            if message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, counting)
        self.last = (time.perf_counter() - start, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--charted", type=int, default=1000, help="devices with telemetry")
    parser.add_argument("--raw-step", type=int, default=60, help="seconds between samples")
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument(
        "--analysis-loads", type=int, default=2, help="loads of each analysis (0: skip them)"
    )
    parser.add_argument("--pg", default=os.environ.get("FLEET_TEST_DATABASE_URL"))
    args = parser.parse_args()
    if not args.pg:
        sys.exit("set --pg or FLEET_TEST_DATABASE_URL to a PostgreSQL server")
    from fastapi.testclient import TestClient

    from fleet_server.api import create_app

    url, drop = scratch_postgres(args.pg)
    try:
        engine = create_db_engine(url)
        upgrade_to_head(engine)
        sessions = make_session_factory(engine)
        built = populate(sessions, args.devices, args.charted, args.raw_step)
        print(f"populated in {built['setup_s']} s (bulk load {built['load_s']} s)", flush=True)
        settings = Settings.model_validate({"database": {"url": url}})
        timed = Timed(create_app(settings, sessions=sessions, clock=lambda: NOW))
        client = TestClient(timed)
        form = client.get("/console/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert csrf is not None
        signed = client.post(
            "/console/login",
            data={"username": "bench", "password": PASSWORD, "csrf_token": csrf.group(1)},
            follow_redirects=False,
        )
        assert signed.status_code == 303, signed.text
        pages = {
            "overview": "/console/",
            "overview_live": "/console/overview/live",
            "devices": "/console/devices",
            "devices_offline_by_last_seen": "/console/devices?presence=offline&sort=last_seen",
            "devices_failed_update": "/console/devices?last_update=failed",
            "device_24h": "/console/devices/dev-000001?range=24h",
            "device_30d": "/console/devices/dev-000001?range=30d",
            "device_live": "/console/devices/dev-000001/live",
            "alarms": "/console/alarms",
            "rollouts": "/console/rollouts",
            "rollout": f"/console/rollouts/{built['rollout']}",
            "bundles": "/console/bundles",
            "recalls": "/console/recalls",
            "recall": f"/console/recalls/{built['recall']}",
            "warranty": "/console/warranty",
            "audit": "/console/audit",
            "users": "/console/users",
        }
        analyses = {
            f"warranty_{part}": f"/console/warranty/analysis?part={part}"
            for part in ("groups", "weibull", "parts")
            if args.analysis_loads > 0
        }
        results: dict[str, Any] = {}
        for name, path in {**pages, **analyses}.items():
            times, sizes = [], []
            for _ in range(args.analysis_loads if name in analyses else args.loads):
                response = client.get(path)
                assert response.status_code == 200, (path, response.status_code)
                times.append(timed.last[0] * 1000)
                sizes.append(timed.last[1])
            times.sort()
            p95 = times[max(0, round(0.95 * len(times)) - 1)]
            results[name] = {
                "median_ms": round(statistics.median(times), 1),
                "p95_ms": round(p95, 1),
                "kb": round(max(sizes) / 1024, 1),
            }
            print(f"{name:30} {results[name]}", flush=True)
        chart = []
        for _ in range(args.loads):
            with sessions() as s:
                t = time.perf_counter()
                got = series.signal_series(
                    s, "dev-000001", "temp_c", since=NOW - 30 * DAY, until=NOW
                )
                chart.append((time.perf_counter() - t) * 1000)
        chart.sort()
        chart_p95 = round(chart[max(0, round(0.95 * len(chart)) - 1)], 1)
        print(f"30-day chart series: p95 {chart_p95} ms, {len(got['points'])} points")
        worst_p95 = max(r["p95_ms"] for n, r in results.items() if n not in analyses)
        worst_kb = max(r["kb"] for r in results.values())
        worst_analysis = max(
            (r["p95_ms"] for n, r in results.items() if n in analyses), default=None
        )
        print(
            json.dumps(
                {
                    "bench": "console",
                    "devices": args.devices,
                    "pages": results,
                    "chart_30d_p95_ms": chart_p95,
                    "worst_p95_ms": worst_p95,
                    "worst_analysis_ms": worst_analysis,
                    "worst_kb": worst_kb,
                    "goals_met": worst_p95 <= 300 and worst_kb <= 500 and chart_p95 <= 150,
                }
            )
        )
    finally:
        drop()


if __name__ == "__main__":
    main()
