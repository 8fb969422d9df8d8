"""The remedy an operator starts from an advisory: a staged rollout of the earliest
fixing release to exactly the exposed devices of one model, or, when no fix is
published, a draft recall of the exposed releases."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.models import RecallCampaign
from fleet_server.errors import ConflictError, InvalidInputError
from fleet_server.services import advisories, audit, recalls, rollouts
from fleet_server.services import bundles as catalog
from fleet_server.services.audit import Actor


def start_remedy(
    session: Session,
    advisory_id: str,
    *,
    model: str | None,
    policy: dict[str, Any] | None,
    start: bool,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Create (and with ``start`` start) the remedy for the advisory's exposed devices
    of ``model`` (needed when several models are exposed). Audited; commits.

    Raises:
        NotFoundError: no such advisory.
        ConflictError: ``no_devices`` when nothing is exposed.
        InvalidInputError: ``invalid_request`` when the model is ambiguous.
    """
    adv = advisories.get_advisory_row(session, advisory_id)
    releases = advisories.exposed_releases(session, advisory_id)
    models = sorted({r["model"] for r in releases})
    if model is None and len(models) > 1:
        raise InvalidInputError(
            "invalid_request", f"several models are exposed ({', '.join(models)}); give model"
        )
    model = model or (models[0] if models else None)
    devices = list(session.execute(advisories.exposed_query(session, advisory_id, model)).scalars())
    if model is None or not devices:
        raise ConflictError("no_devices", f"no device is exposed to {advisory_id}")
    fix = advisories.earliest_fixes(session, advisory_id).get(model)
    if fix is not None:
        rollout = rollouts.create_rollout(
            session,
            name=f"{advisory_id} remedy",
            bundle=catalog.get_bundle(session, fix["bundle"]),
            selector={"device_ids": [d.device_id for d in devices], "model": model},
            policy=policy,
            actor=actor,
            now=now,
            request_id=request_id,
        )
        if start:
            rollouts.start_rollout(session, rollout, actor=actor, now=now, request_id=request_id)
        outcome: dict[str, Any] = {
            "kind": "rollout",
            "rollout_id": rollout.id,
            "state": rollout.state,
            "bundle": fix["bundle"],
        }
    else:
        campaign_id = _campaign_id(session, advisory_id)
        versions = sorted({r["version"] for r in releases if r["model"] == model})
        campaign = recalls.create_campaign(
            session,
            actor,
            campaign_id=campaign_id,
            title=f"{advisory_id}: no fixed release of {model}",
            description=(adv.summary or "")[:500],
            scope={"models": [model], "software_versions": versions},
            physical_action="inspect",
            now=now,
            request_id=request_id,
        )
        outcome = {"kind": "recall", "campaign_id": campaign.id, "state": campaign.state}
    outcome.update(advisory=advisory_id, model=model, devices=len(devices))
    audit.record(
        session,
        actor,
        "advisory.remedy",
        "advisory",
        advisory_id,
        now=now,
        after=outcome,
        request_id=request_id,
    )
    session.commit()
    return outcome


def _campaign_id(session: Session, advisory_id: str) -> str:
    base = "ADV-" + re.sub(r"[^A-Za-z0-9._-]", "-", advisory_id)[:50]
    taken = set(
        session.execute(
            select(RecallCampaign.id).where(RecallCampaign.id.like(f"{base}%"))
        ).scalars()
    )
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate
