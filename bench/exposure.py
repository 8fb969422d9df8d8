"""Benchmark (not a test): vulnerability exposure at fleet scale on PostgreSQL.

100,000 devices run one of 50 releases (two models, 25 releases each) of 2,000
components each (purls drawn from a pool of 20,000 packages; each release moves a
share of its components to newer versions). 20,000 OSV advisories name packages of the
pool with ``introduced``/``fixed`` ranges. Measured with the server's own services
(``services/advisories.py``): the import of the advisories, the matching of all of them
against every release, and the answer to "devices exposed to advisory X" (the count and
the first page of devices, one call) for the advisory matching the most components
(median of runs).
Goal: ``exposed_query_ms`` <= 100.

PostgreSQL comes from ``FLEET_BENCH_DATABASE_URL`` or ``FLEET_TEST_DATABASE_URL``; a fresh
database is created and dropped. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RELEASES = 50
from bench.ingest import scratch_postgres  # noqa: E402

MODELS = ("gw-1", "gw-2")


def _version(release: int, package: int) -> str:
    """Component version in a release: every 5th release moves a package's minor on."""
    return f"1.{(release + package % 5) // 5}.{package % 7}"


def populate(session, rng: random.Random, devices: int, components: int, pool: int) -> None:  # type: ignore[no-untyped-def]
    """Bundles, components and devices, inserted in bulk (publishing is not measured)."""
    from fleet_server.db.models import Bundle, Device
    from fleet_server.db.sbom_models import BundleComponent, BundleMatchState

    bundles = []
    for r in range(RELEASES):
        model = MODELS[r % 2]
        counter = r // 2 + 1
        bundles.append(
            {
                "id": r + 1,
                "name": f"acme-{model}-1.{counter}.0-r{counter}.tar.gz",
                "product": "acme",
                "model": model,
                "version": f"1.{counter}.0",
                "hardware_revisions": ["rev-a"],
                "release_counter": counter,
                "channel": "production",
                "min_agent_version": "0.1.0",
                "sha256": "0" * 64,
                "size": 1,
                "manifest": {},
                "published_at": 0.0,
                "published_by": "bench",
            }
        )
    session.execute(Bundle.__table__.insert(), bundles)
    for b in bundles:
        picks = rng.sample(range(pool), components)
        rows = [
            {
                "bundle_id": b["id"],
                "name": f"pkg-{p}",
                "version": _version(b["release_counter"], p),
                "purl": f"pkg:npm/pkg-{p}@{_version(b['release_counter'], p)}",
                "purl_type": "npm",
                "package": f"pkg-{p}",
                "licence": "MIT",
                "supplier": None,
                "hashes": {},
            }
            for p in picks
        ]
        session.execute(BundleComponent.__table__.insert(), rows)
    session.execute(
        BundleMatchState.__table__.insert(),
        [{"bundle_id": b["id"], "matched_at": 0.0} for b in bundles],
    )
    for start in range(0, devices, 10_000):
        rows = []
        for i in range(start, min(devices, start + 10_000)):
            b = bundles[rng.randrange(RELEASES)]
            rows.append(
                {
                    "device_id": f"dev-{i:06d}",
                    "model": b["model"],
                    "hw_revision": "rev-a",
                    "region": ("eu", "us", "apac")[i % 3],
                    "channel": "production",
                    "software_version": b["version"],
                    "status": "active",
                    "created_at": 0.0,
                    "tags": [],
                    "presence": "unknown",
                    "dropped_total": 0,
                    "open_faults": 0,
                }
            )
        session.execute(Device.__table__.insert(), rows)
    session.commit()


def advisories(rng: random.Random, count: int, pool: int) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    """OSV documents: each names one package of the pool with a fixed version."""
    out = []
    for i in range(count):
        p = rng.randrange(pool)
        fixed = f"1.{rng.randrange(1, 7)}.0"
        doc = {
            "id": f"GHSA-bench-{i:05d}",
            "modified": "2026-01-01T00:00:00Z",
            "aliases": [f"CVE-2026-{i:05d}"],
            "summary": f"bench advisory {i}",
            "severity": [
                {
                    "type": "CVSS_V3",
                    "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/"
                    + ("C:H/I:H/A:H" if i % 10 == 0 else "C:L/I:N/A:N"),
                }
            ],
            "affected": [
                {
                    "package": {"ecosystem": "npm", "name": f"pkg-{p}"},
                    "ranges": [
                        {"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": fixed}]}
                    ],
                }
            ],
        }
        out.append((f"{doc['id']}.json", doc))
    return out


def main() -> None:
    """Run the benchmark and print its figures; the last line is JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--components", type=int, default=2_000)
    parser.add_argument("--advisories", type=int, default=20_000)
    parser.add_argument("--pool", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    admin = os.environ.get("FLEET_BENCH_DATABASE_URL") or os.environ.get(
        "FLEET_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
    from sqlalchemy import func, select

    from fleet_server.db import create_db_engine, make_session_factory
    from fleet_server.db.sbom_models import AdvisoryMatch
    from fleet_server.migrations import upgrade_to_head
    from fleet_server.services import advisories as svc
    from fleet_server.services.audit import SYSTEM
    from fleet_server.services.paging import PageParams

    url, drop = scratch_postgres(admin)
    try:
        engine = create_db_engine(url)
        upgrade_to_head(engine)
        sessions = make_session_factory(engine)
        rng = random.Random(19)
        t = time.perf_counter()
        with sessions() as s:
            populate(s, rng, args.devices, args.components, args.pool)
            s.execute(select(func.count()).select_from(AdvisoryMatch))  # warm
        populate_s = time.perf_counter() - t
        print(
            f"populated {args.devices} devices, {RELEASES} releases x {args.components} "
            f"components in {populate_s:.1f} s"
        )
        docs = advisories(rng, args.advisories, args.pool)
        with sessions() as s:
            t = time.perf_counter()
            imported = svc.import_documents(s, docs, actor=SYSTEM, now=1.0)
            import_s = time.perf_counter() - t
        print(f"import: {imported['imported']} advisories in {import_s:.2f} s")
        with sessions() as s:
            t = time.perf_counter()
            matched = svc.match_pending(s, now=2.0)
            match_s = time.perf_counter() - t
        print(f"match: {matched['matches']} matches, {matched['events']} events in {match_s:.2f} s")
        # what autovacuum does on a live database: statistics and the visibility map
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
        with sessions() as s:
            top = s.execute(
                select(AdvisoryMatch.advisory_id, func.count().label("n"))
                .group_by(AdvisoryMatch.advisory_id)
                .order_by(func.count().desc())
                .limit(1)
            ).first()
            assert top is not None, "no advisory matched: the bench data is wrong"
            timings, exposed = [], 0
            for _ in range(args.runs):
                t = time.perf_counter()
                page = svc.exposed_devices(s, top[0], PageParams(limit=100, offset=0))
                timings.append((time.perf_counter() - t) * 1000)
                exposed = page.total
        query_ms = statistics.median(timings)
        print(
            f"exposed to {top[0]}: {exposed} devices, count + first page "
            f"{query_ms:.1f} ms (median of {args.runs})"
        )
        print(
            json.dumps(
                {
                    "bench": "exposure",
                    "devices": args.devices,
                    "releases": RELEASES,
                    "components_per_release": args.components,
                    "advisories": args.advisories,
                    "import_s": round(import_s, 3),
                    "match_s": round(match_s, 3),
                    "matches": matched["matches"],
                    "exposed_query_ms": round(query_ms, 2),
                    "exposed_devices": exposed,
                    "goal_exposed_query_ms": 100,
                }
            )
        )
    finally:
        drop()


if __name__ == "__main__":
    main()
