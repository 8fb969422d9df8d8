"""Background jobs of signed updates, in the scheduler's ``fn(sessions, settings, now)`` form:
failing silent deployments, and keeping the TUF repository's online metadata signed."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from fleet_server.config import Settings
from fleet_server.services.deployments import expire_silent
from fleet_server.updates.resign_job import ResignJob
from fleet_server.updates.tuf_repository import RefreshResult, RepositoryStateError, TufRepository

log = logging.getLogger(__name__)


def run_execution_expiry(
    sessions: sessionmaker[Session], settings: Settings, now: float
) -> list[str]:
    """Fail executions silent past their phase timeout; returns their ids."""
    del settings
    with sessions() as session, session.begin():
        return [e.id for e in expire_silent(session, now=now)]


class TufResignTask:
    """The scheduler job around :class:`ResignJob`: opens the configured repository on
    first use (and again after a failure), then re-signs what is due at ``now``."""

    def __init__(self) -> None:
        self.job: ResignJob | None = None
        self._warned = False

    def __call__(
        self, sessions: sessionmaker[Session], settings: Settings, now: float
    ) -> RefreshResult | None:
        """Re-sign expiring timestamp/snapshot/targets; a missing repository is logged
        once and skipped (the server runs without updates until it is initialised)."""
        del sessions
        if self.job is None:
            try:
                repo = TufRepository(settings.updates.repo_dir, settings.updates.keys_dir)
            except RepositoryStateError as exc:
                if not self._warned:
                    log.warning("TUF re-signing skipped: %s", exc)
                    self._warned = True
                return None
            self.job = ResignJob(repo, interval_s=settings.updates.resign_interval_s)
        result = self.job.tick(datetime.fromtimestamp(now, UTC).replace(microsecond=0))
        return result if result is not None and result.resigned else None
