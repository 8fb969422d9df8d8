"""The bundle catalogue: verify a bundle, publish it to the TUF repository, record it.

The TUF repository is the authority devices trust; the ``bundles`` table is the server's
index of it (searchable, joined by executions and rollouts). Publishing writes the
repository first, then the row: publishing the same bytes again is a no-op in TUF (or a
channel change), so a row that failed to commit is repaired by simply publishing again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware_bundles.errors import BundleError
from firmware_bundles.manifest import manifest_to_dict
from firmware_bundles.verify import verify_bundle
from fleet_server.db.models import Bundle
from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError
from fleet_server.services import audit, composition, licences
from fleet_server.services.audit import Actor
from fleet_server.services.paging import Page, PageParams, fetch_page
from fleet_server.updates.tuf_repository import PublishedTarget, PublishError


class BundleRefusedError(InvalidInputError):
    """The bundle (``invalid_bundle``, the verifier's reason in ``details``) or the channel
    asked for (``invalid_channel``) is invalid (422)."""


class BundleConflictError(ConflictError):
    """Another bundle with different bytes already has this name (409)."""


class BundleNotFoundError(NotFoundError):
    """No published bundle has this name (404)."""


class Repository(Protocol):
    """The part of :class:`~fleet_server.updates.tuf_repository.TufRepository` used here."""

    def publish(self, bundle_path: Path, channel: str | None = None) -> PublishedTarget:
        """Verify, store and sign ``bundle_path`` as a target."""
        ...


@dataclass(frozen=True)
class BundleFilter:
    """Filters of the bundle list (None = any)."""

    model: str | None = None
    version: str | None = None
    channel: str | None = None


def publish_bundle(
    session: Session,
    repo: Repository,
    path: Path,
    *,
    channel: str | None,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> tuple[Bundle, bool]:
    """Verify ``path``, evaluate its licences (a denied one refuses it before anything
    is written), publish it (channel: given, else the manifest's, else ``production``),
    upsert its catalogue row with its components and licence review, and audit; returns
    (row, created)."""
    try:
        manifest = verify_bundle(path)
    except BundleError as exc:
        raise BundleRefusedError(
            "invalid_bundle", f"bundle refused: {exc}", {"reason": exc.reason.value}
        ) from None
    evaluation = licences.evaluate_for_publish(session, manifest)  # before anything is written
    try:
        target = repo.publish(path, channel)
    except PublishError as exc:
        text = str(exc)
        if "already published" in text:
            raise BundleConflictError("conflict", text) from None
        wrong_channel = text.startswith("cannot publish on channel")
        code = "invalid_channel" if wrong_channel else "invalid_bundle"
        raise BundleRefusedError(code, text) from None
    row = session.execute(select(Bundle).where(Bundle.name == target.name)).scalar_one_or_none()
    created = row is None
    before = None if row is None else {"channel": row.channel}
    if row is None:
        row = Bundle(
            name=target.name,
            product=manifest.product,
            model=manifest.model,
            version=manifest.version,
            hardware_revisions=list(manifest.hardware_revisions),
            release_counter=manifest.release_counter,
            channel=target.meta.channel,
            min_agent_version=manifest.min_agent_version,
            sha256=target.sha256,
            size=target.length,
            manifest=manifest_to_dict(manifest),
            published_at=now,
            published_by=actor.label,
        )
        session.add(row)
        session.flush()
        composition.store_components(session, row, manifest)
        licences.record_review(
            session, row, evaluation, actor=actor, now=now, request_id=request_id
        )
    else:
        row.channel = target.meta.channel
    audit.record(
        session,
        actor,
        "bundle.publish",
        "bundle",
        target.name,
        now=now,
        before=before,
        after={
            "channel": target.meta.channel,
            "sha256": target.sha256,
            "size": target.length,
            "version": manifest.version,
            "release_counter": manifest.release_counter,
        },
        request_id=request_id,
    )
    session.flush()
    return row, created


def get_bundle(session: Session, name: str) -> Bundle:
    """The catalogue row of target ``name``, or BundleNotFoundError ``not_found``."""
    row = session.execute(select(Bundle).where(Bundle.name == name)).scalar_one_or_none()
    if row is None:
        raise BundleNotFoundError("not_found", f"no published bundle named {name!r}")
    return row


def list_bundles(session: Session, filt: BundleFilter, params: PageParams) -> Page[dict[str, Any]]:
    """One page of bundles matching ``filt``, newest first, shaped for the API."""
    where = []
    if filt.model is not None:
        where.append(Bundle.model == filt.model)
    if filt.version is not None:
        where.append(Bundle.version == filt.version)
    if filt.channel is not None:
        where.append(Bundle.channel == filt.channel)
    query = select(Bundle).where(*where).order_by(Bundle.published_at.desc(), Bundle.id.desc())
    return fetch_page(session, query, params, scalars=True).map(bundle_view)


def bundle_view(b: Bundle, *, with_manifest: bool = False) -> dict[str, Any]:
    """A catalogue row as the API shows it (the manifest only when asked)."""
    out: dict[str, Any] = {
        "name": b.name,
        "product": b.product,
        "model": b.model,
        "version": b.version,
        "hardware_revisions": list(b.hardware_revisions),
        "release_counter": b.release_counter,
        "channel": b.channel,
        "min_agent_version": b.min_agent_version,
        "sha256": b.sha256,
        "size": b.size,
        "published_at": b.published_at,
        "published_by": b.published_by,
        "preprod_completed_at": b.preprod_completed_at,
    }
    if with_manifest:
        out["manifest"] = b.manifest
    return out
