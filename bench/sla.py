"""SLA bench (a benchmark, not a test): import a ServiceNow-style event log of
1,000,000 events across 100,000 tickets into PostgreSQL, evaluate every ticket's SLA
clocks, and time the "breaching within 4 h" list.

The log is synthetic and seeded: each ticket is opened in the 60 days before ``now`` and
gets about ten updates (new, active, waiting on the user, active again, updates,
resolved, closed), a fifth of the most recent ones are still open; ``made_sla`` turns
false on some. Figures printed:

* import: wall time of ``fleetctl tickets import``'s service (parse + one transaction),
  tickets/s and events/s;
* clock evaluation: events per second through the pure clock plus the ``ticket_sla``
  refresh (``services.sla.tick_tickets`` over every ticket, batches of 1,000);
* the list: median of 20 calls of ``breaching_within(4 h)`` (first page of 100); goal
  <= 200 ms.

Usage: ``python bench/sla.py [--tickets 100000] [--events-per-ticket 10] [--pg URL]``
(default URL: ``FLEET_TEST_DATABASE_URL``; a scratch database is created and dropped).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import scratch_postgres  # the ingest bench's scratch database helper
from sqlalchemy import func, select

from fleet_server.config import SupportSettings
from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.db.ticket_models import Ticket, TicketEvent
from fleet_server.migrations import upgrade_to_head
from fleet_server.services import sla
from fleet_server.services.audit import SYSTEM
from fleet_server.services.paging import PageParams
from fleet_server.services.ticket_import import import_log

HEADER = (
    "number,incident_state,sys_mod_count,made_sla,opened_at,sys_updated_at,resolved_at,"
    "closed_at,priority,category,assignment_group\n"
)
FMT = "%d-%m-%Y %H:%M"
PRIORITIES = ("1 - Critical", "2 - High", "3 - Moderate", "3 - Moderate", "4 - Low")


def stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime(FMT)


def make_log(tickets: int, per_ticket: int, now: float, seed: int = 7) -> tuple[str, int]:
    """The synthetic event log and its row count."""
    rng = random.Random(seed)
    out = io.StringIO()
    out.write(HEADER)
    rows = 0
    for i in range(tickets):
        still_open = i >= tickets * 0.8
        opened = now - rng.uniform(0.2, 3.0 if still_open else 60.0) * 86400
        opened -= opened % 60
        prio = rng.choice(PRIORITIES)
        made = True
        states = ["New", "Active", "Awaiting User Info", "Active"]
        states += ["Active"] * max(0, per_ticket - 6)
        states += [] if still_open else ["Resolved", "Closed"]
        if still_open:
            states += ["Active"] * 2
        t = opened
        resolved = "?"
        for k, state in enumerate(states[:per_ticket]):
            t += rng.uniform(60, 3 * 3600) if not still_open else rng.uniform(60, 900)
            t = min(t, now - 60)
            if made and rng.random() < 0.02:
                made = False
            if state == "Resolved":
                resolved = stamp(t)
            closed = stamp(t) if state == "Closed" else "?"
            out.write(
                f"INC{i:08d},{state},{k},{str(made).lower()},{stamp(opened)},{stamp(t)},"
                f"{resolved},{closed},{prio},Category {i % 40},Group {i % 25}\n"
            )
            rows += 1
    return out.getvalue(), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--events-per-ticket", type=int, default=10)
    parser.add_argument("--pg", default=os.environ.get("FLEET_TEST_DATABASE_URL"))
    args = parser.parse_args()
    if not args.pg:
        sys.exit("needs PostgreSQL: --pg URL or FLEET_TEST_DATABASE_URL")
    now = 1_790_000_000.0
    t0 = time.perf_counter()
    text, rows = make_log(args.tickets, args.events_per_ticket, now)
    print(f"generated {rows} rows for {args.tickets} tickets in {time.perf_counter() - t0:.1f} s")
    url, drop = scratch_postgres(args.pg)
    engine = create_db_engine(url)
    try:
        upgrade_to_head(engine)
        sessions = make_session_factory(engine)
        t0 = time.perf_counter()
        with sessions() as s:
            summary = import_log(s, SYSTEM, text, now=now)
        import_s = time.perf_counter() - t0
        print(
            f"import: {summary['tickets']} tickets, {summary['events']} events in "
            f"{import_s:.1f} s ({summary['events'] / import_s:.0f} events/s)"
        )
        with sessions() as s:
            ids = list(s.execute(select(Ticket.id).order_by(Ticket.id)).scalars())
            clock_events = s.execute(
                select(func.count())
                .select_from(TicketEvent)
                .where(TicketEvent.kind.in_(("created", "state", "response")))
            ).scalar_one()
        support = SupportSettings()
        t0 = time.perf_counter()
        for i in range(0, len(ids), 1000):
            with sessions() as s, s.begin():
                sla.tick_tickets(s, support, now, ids[i : i + 1000])
        eval_s = time.perf_counter() - t0
        print(
            f"clock evaluation: {len(ids)} tickets, {summary['events']} events "
            f"({clock_events} clock events) in {eval_s:.1f} s "
            f"({summary['events'] / eval_s:.0f} events/s)"
        )
        with sessions() as s:
            s.execute(select(func.count()).select_from(Ticket)).scalar_one()
            timings = []
            found = 0
            for _ in range(20):
                t0 = time.perf_counter()
                page = sla.breaching_within(s, 4 * 3600, PageParams(100, 0), now=now)
                timings.append((time.perf_counter() - t0) * 1000)
                found = page.total
        list_ms = statistics.median(timings)
        print(
            f"breaching within 4 h: {found} targets, first page in {list_ms:.1f} ms "
            f"(median of 20; goal <= 200 ms)"
        )
    finally:
        engine.dispose()
        drop()
    print(
        json.dumps(
            {
                "bench": "sla",
                "tickets": summary["tickets"],
                "events": summary["events"],
                "import_s": round(import_s, 2),
                "import_events_per_s": round(summary["events"] / import_s),
                "clock_events_per_s": round(summary["events"] / eval_s),
                "breaching_4h": found,
                "breaching_list_ms": round(list_ms, 1),
                "list_goal_met": list_ms <= 200,
            }
        )
    )


if __name__ == "__main__":
    main()
