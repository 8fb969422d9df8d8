"""What the API and ``fleetctl`` ask about software composition, one call each: bundle
components, licence reviews, notices, VEX uploads and advisory imports, by name.

The work is in :mod:`~fleet_server.services.composition`,
:mod:`~fleet_server.services.licences` and :mod:`~fleet_server.services.advisories`;
this module resolves names and commits.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from fleet_server.domain.osv import iter_documents
from fleet_server.domain.vex import parse_vex
from fleet_server.services import advisories, composition, licences
from fleet_server.services.audit import Actor
from fleet_server.services.bundles import get_bundle
from fleet_server.services.paging import Page, PageParams


def components_of(session: Session, name: str, params: PageParams) -> Page[dict[str, Any]]:
    """One page of the components of bundle ``name``."""
    return composition.bundle_components(session, get_bundle(session, name), params)


def review_of(session: Session, name: str) -> dict[str, Any]:
    """The licence review of bundle ``name``."""
    return licences.get_review(session, get_bundle(session, name))


def decide(
    session: Session,
    name: str,
    decision: str,
    note: str,
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Approve or reject the licence review of bundle ``name`` (admin; audited)."""
    bundle = get_bundle(session, name)
    return licences.decide_review(
        session, bundle, decision, note, actor=actor, now=now, request_id=request_id
    )


def notices(session: Session, version: str, model: str | None, fmt: str) -> tuple[str, str]:
    """(bundle name, attribution notice text or HTML) of a release."""
    bundle = licences.release_bundle(session, version, model)
    return bundle.name, licences.notices(bundle, fmt)


def add_vex(
    session: Session,
    name: str,
    data: bytes,
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Parse a CycloneDX VEX or OpenVEX document and attach it to bundle ``name``."""
    bundle = get_bundle(session, name)
    statements = parse_vex(data, "body")
    return advisories.add_vex(
        session, bundle, statements, actor=actor, now=now, request_id=request_id
    )


def import_advisories(
    session: Session,
    filename: str,
    data: bytes,
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Import OSV advisories from a zip (or one JSON document or list), then match."""
    docs = iter_documents(filename, data)
    result = advisories.import_documents(session, docs, actor=actor, now=now, request_id=request_id)
    result["matching"] = advisories.match_pending(session, now=now)
    return result
