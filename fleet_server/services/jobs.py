"""Background jobs as plain functions, and the small scheduler loop that runs them.

Tests call :func:`run_presence_sweep`, :func:`run_retention_job` and
:func:`run_command_expiry` directly with a chosen ``now``; ``fleet-server run`` and
``fleet-server jobs`` call them from :class:`Scheduler`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from fleet_server.config import Settings
from fleet_server.db.partitions import DAY_S, WEEK_S, ensure_partitions
from fleet_server.services.advisories import match_pending
from fleet_server.services.clock import Clock, system_clock
from fleet_server.services.commands import expire_commands
from fleet_server.services.presence import sweep_presence
from fleet_server.services.recalls import mark_remedied_by_version, take_snapshots
from fleet_server.services.retention import RetentionResult, run_retention
from fleet_server.services.sla import tick as sla_tick
from fleet_server.services.slo import run_slo_job
from fleet_server.services.ticket_rules import run_ticket_rules
from fleet_server.services.update_jobs import TufResignTask, run_execution_expiry
from fleet_server.services.webhook_delivery import WebhookDeliveryJob
from fleet_server.services.webhooks import notify_offline

log = logging.getLogger(__name__)


def run_presence_sweep(
    sessions: sessionmaker[Session], settings: Settings, now: float
) -> list[str]:
    """Mark silent devices offline and queue ``device.offline`` webhooks for devices
    offline past a subscription's threshold; returns the ids marked offline."""
    with sessions() as session, session.begin():
        gone = sweep_presence(
            session,
            now=now,
            default_keepalive_s=settings.presence.default_keepalive_s,
            default_interval_s=settings.presence.default_interval_s,
            factor=settings.presence.timeout_factor,
        )
        notify_offline(session, now=now)
        return gone


def run_retention_job(
    sessions: sessionmaker[Session], settings: Settings, now: float
) -> RetentionResult:
    """Create the telemetry partitions ahead (PostgreSQL), then downsample and drop or
    delete raw telemetry past the retention window."""
    r = settings.retention
    with sessions() as session, session.begin():
        period = WEEK_S if r.partition == "week" else DAY_S
        ensure_partitions(session, now, period_s=period, ahead_s=r.partitions_ahead_days * DAY_S)
        return run_retention(session, now=now, raw_days=r.raw_days)


def run_command_expiry(sessions: sessionmaker[Session], settings: Settings, now: float) -> int:
    """Expire unanswered commands."""
    del settings
    with sessions() as session, session.begin():
        return expire_commands(session, now=now)


def run_recall_snapshots(sessions: sessionmaker[Session], settings: Settings, now: float) -> int:
    """Mark unreachable recall members and snapshot every open recall's completion."""
    with sessions() as session, session.begin():
        return take_snapshots(session, now=now, offline_days=settings.recalls.offline_days)


def run_recall_remedy_check(sessions: sessionmaker[Session], settings: Settings, now: float) -> int:
    """Members of software-remedy recalls now on the remedy version become remedied."""
    del settings
    with sessions() as session, session.begin():
        return mark_remedied_by_version(session, now)


def run_advisory_matching(
    sessions: sessionmaker[Session], settings: Settings, now: float
) -> dict[str, int]:
    """Match new advisories and new bundles; raise exposure events (critical ones)."""
    del settings
    with sessions() as session:
        result = match_pending(session, now=now)
        return result if any(result.values()) else {}


ADVISORY_MATCH_INTERVAL_S = 60.0


@dataclass
class _Job:
    name: str
    interval: float
    fn: Callable[[sessionmaker[Session], Settings, float], object]
    next_at: float = 0.0


class Scheduler:
    """Runs each job at its interval in one thread; a failing job is logged and retried
    at its next interval, never stopping the others."""

    def __init__(
        self, sessions: sessionmaker[Session], settings: Settings, clock: Clock = system_clock
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.clock = clock
        self._stop = threading.Event()
        self.jobs = [
            _Job("presence-sweep", settings.presence.sweep_interval_s, run_presence_sweep),
            _Job("command-expiry", settings.presence.sweep_interval_s, run_command_expiry),
            _Job("retention", settings.retention.interval_s, run_retention_job),
            _Job("execution-expiry", settings.updates.expiry_interval_s, run_execution_expiry),
            _Job("tuf-resign", settings.updates.resign_interval_s, TufResignTask()),
            _Job(
                "recall-remedy", settings.recalls.remedy_check_interval_s, run_recall_remedy_check
            ),
            _Job("recall-snapshots", settings.recalls.snapshot_interval_s, run_recall_snapshots),
            _Job("webhook-delivery", settings.webhooks.interval_s, WebhookDeliveryJob()),
            _Job("advisory-matching", ADVISORY_MATCH_INTERVAL_S, run_advisory_matching),
            _Job("ticket-rules", settings.support.tick_interval_s, run_ticket_rules),
            _Job("sla-tick", settings.support.tick_interval_s, sla_tick),
            _Job("slo", settings.support.tick_interval_s, run_slo_job),
        ]
        self._thread: threading.Thread | None = None

    def add_job(
        self,
        name: str,
        interval: float,
        fn: Callable[[sessionmaker[Session], Settings, float], object],
    ) -> None:
        """Register another periodic job (e.g. a rollout ``tick``); call before start."""
        self.jobs.append(_Job(name, interval, fn))

    def run_due(self) -> float:
        """Run every job that is due; return seconds until the next one is."""
        now = self.clock()
        for job in self.jobs:
            if now >= job.next_at:
                try:
                    result = job.fn(self.sessions, self.settings, now)
                    if result:
                        log.info("job %s: %s", job.name, result)
                except Exception:
                    log.exception("job %s failed; retrying at its next interval", job.name)
                job.next_at = now + job.interval
        return max(0.05, min(job.next_at for job in self.jobs) - self.clock())

    def start(self) -> None:
        """Run in a background thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="fleet-jobs", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.run_due())

    def stop(self) -> None:
        """Stop the loop and wait for the running job to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
