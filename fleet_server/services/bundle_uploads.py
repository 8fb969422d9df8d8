"""Publishing an uploaded bundle from the API: the repository it goes to and the commit.

The catalogue (:mod:`fleet_server.services.bundles`) verifies, signs and records a bundle
without committing; this is the API's way in, which owns the transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from fleet_server.config import Settings
from fleet_server.errors import TransientError
from fleet_server.services import bundles as catalog
from fleet_server.services.audit import Actor
from fleet_server.updates.tuf_repository import RepositoryStateError, TufRepository


def open_repository(settings: Settings) -> TufRepository:
    """The configured TUF repository, or 503 ``updates_unavailable`` saying how to set it
    up."""
    try:
        return TufRepository(settings.updates.repo_dir, settings.updates.keys_dir)
    except RepositoryStateError as exc:
        raise TransientError(
            "updates_unavailable",
            f"no TUF repository at [updates] repo_dir: {exc}; run fleet-server init "
            "(or fleet-server keys init-repo)",
        ) from None


def publish_upload(
    session: Session,
    repo: TufRepository,
    path: Path,
    *,
    channel: str | None,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Verify and publish the bundle at ``path`` as a signed TUF target of ``repo`` (see
    :func:`open_repository`), record it in the catalogue (committed) and return it as the
    API shows it."""
    row, _created = catalog.publish_bundle(
        session,
        repo,
        path,
        channel=channel,
        actor=actor,
        now=now,
        request_id=request_id,
    )
    session.commit()
    return catalog.bundle_view(row)
