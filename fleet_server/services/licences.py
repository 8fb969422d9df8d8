"""Licence compliance of bundles: per-model policies, admin waivers, the review a bundle
needs before production, and the attribution notice of a release.

Publishing evaluates the bundle's components against its model's policy
(:mod:`fleet_server.domain.licence_policy`) before anything is written: a denied licence
refuses it (``licence_denied``, 409) unless an admin waived that component with a reason.
Components that need review put the bundle's review in ``pending``; a production rollout
of it then needs the review ``approved`` (``licence_review_required``, 409). A model
without a policy is not gated (``no_policy``). Every decision is audited.
"""

from __future__ import annotations

import html
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware_bundles.licences import LicenceError, check_expression
from firmware_bundles.manifest import Manifest
from fleet_server.db.models import Bundle
from fleet_server.db.sbom_models import LicencePolicy, LicenceReview, LicenceWaiver
from fleet_server.domain.licence_policy import (
    REVIEW,
    Evaluation,
    Policy,
    ReviewEvent,
    ReviewState,
    evaluate,
    parse_policy,
    policy_to_dict,
)
from fleet_server.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.paging import Page, PageParams, fetch_page

CLEARED = (ReviewState.NO_POLICY, ReviewState.NOT_REQUIRED, ReviewState.APPROVED)


def policy_for(session: Session, model: str) -> Policy | None:
    """The model's policy, or None when it has none (then nothing is gated)."""
    row = session.get(LicencePolicy, model)
    return None if row is None else parse_policy(row.policy)


def set_policy(
    session: Session,
    model: str,
    doc: dict[str, Any],
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Replace the model's policy (validated), audited; returns it."""
    policy = policy_to_dict(parse_policy(doc))
    row = session.get(LicencePolicy, model)
    before = None if row is None else row.policy
    if row is None:
        row = LicencePolicy(model=model, policy=policy, updated_at=now, updated_by=actor.label)
        session.add(row)
    else:
        row.policy, row.updated_at, row.updated_by = policy, now, actor.label
    audit.record(
        session,
        actor,
        "licence.policy",
        "model",
        model,
        now=now,
        before=before,
        after=policy,
        request_id=request_id,
    )
    session.commit()
    return {"model": model, "policy": policy, "updated_at": now, "updated_by": actor.label}


def get_policy(session: Session, model: str) -> dict[str, Any]:
    """The model's policy and waivers as the API shows them."""
    row = session.get(LicencePolicy, model)
    if row is None:
        raise NotFoundError("not_found", f"model {model!r} has no licence policy")
    waivers = session.execute(
        select(LicenceWaiver).where(LicenceWaiver.model == model).order_by(LicenceWaiver.id)
    ).scalars()
    return {
        "model": model,
        "policy": row.policy,
        "updated_at": row.updated_at,
        "updated_by": row.updated_by,
        "waivers": [
            {"component": w.component, "reason": w.reason, "by": w.created_by, "at": w.created_at}
            for w in waivers
        ],
    }


def add_waiver(
    session: Session,
    model: str,
    component: str,
    reason: str,
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """An admin waives a denied component (``name@version`` or purl) for ``model``."""
    if actor.role not in ("admin", "system"):
        raise ForbiddenError("forbidden", "only an admin may waive a licence")
    if not component.strip() or not reason.strip():
        raise InvalidInputError("invalid_request", "a waiver needs a component and a reason")
    row = LicenceWaiver(
        model=model,
        component=component.strip(),
        reason=reason.strip(),
        created_at=now,
        created_by=actor.label,
    )
    session.add(row)
    audit.record(
        session,
        actor,
        "licence.waive",
        "model",
        model,
        now=now,
        after={"component": row.component, "reason": row.reason},
        request_id=request_id,
    )
    session.commit()
    return {"model": model, "component": row.component, "reason": row.reason}


def _waivers(session: Session, model: str) -> dict[str, str]:
    rows = session.execute(select(LicenceWaiver).where(LicenceWaiver.model == model)).scalars()
    return {w.component: w.reason for w in rows}


def evaluate_for_publish(session: Session, manifest: Manifest) -> Evaluation | None:
    """Check the manifest's licences (SPDX list) and evaluate them against the model's
    policy; refuse the bundle when a denied component has no waiver. None: no policy.

    Raises:
        InvalidInputError: ``invalid_bundle``, a licence is not a valid SPDX expression.
        ConflictError: ``licence_denied`` with the denied components in ``details``.
    """
    for comp in manifest.sbom:
        if comp.licence:
            try:
                check_expression(comp.licence)
            except LicenceError as exc:
                raise InvalidInputError(
                    "invalid_bundle", f"bundle refused: component {comp.name}: {exc}"
                ) from None
    policy = policy_for(session, manifest.model)
    if policy is None:
        return None
    result = evaluate(manifest.sbom, policy, _waivers(session, manifest.model))
    if result.denied:
        names = [f"{c.name}@{c.version} ({c.licence})" for c in result.denied]
        raise ConflictError(
            "licence_denied",
            f"bundle refused: denied licence in {', '.join(names[:5])}; an admin may waive "
            "a component with a reason",
            {"denied": result.violations()},
        )
    return result


def evaluation_to_dict(result: Evaluation) -> dict[str, Any]:
    """The stored form of an evaluation: counts, the components to review, waivers."""
    return {
        "licences": result.licence_counts(),
        "needs_review": [
            {"name": c.name, "version": c.version, "purl": c.purl, "licence": c.licence}
            for c in result.needs_review
        ],
        "waived": [
            {"name": c.name, "version": c.version, "licence": c.licence, "reason": c.waived}
            for c in result.components
            if c.waived
        ],
        "obligations": sorted({o for c in result.components for o in c.obligations}),
    }


def record_review(
    session: Session,
    bundle: Bundle,
    result: Evaluation | None,
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> LicenceReview:
    """Store the bundle's licence review state after publishing, audited."""
    if result is None:
        state, evaluation = ReviewState.NO_POLICY, {}
    else:
        evaluation = evaluation_to_dict(result)
        state = ReviewState.PENDING if result.needs_review else ReviewState.NOT_REQUIRED
    row = session.get(LicenceReview, bundle.id)
    if row is None:
        row = LicenceReview(bundle_id=bundle.id, state=state, evaluation=evaluation, note="")
        session.add(row)
    else:
        row.state, row.evaluation = state, evaluation
    if result is None:
        return row  # no policy, nothing decided
    audit.record(
        session,
        actor,
        "licence.evaluate",
        "bundle",
        bundle.name,
        now=now,
        after={"state": state.value, **evaluation},
        request_id=request_id,
    )
    return row


def review_view(bundle: Bundle, row: LicenceReview | None) -> dict[str, Any]:
    """A bundle's licence review as the API shows it."""
    if row is None:
        return {"bundle": bundle.name, "state": ReviewState.NO_POLICY.value, "evaluation": {}}
    return {
        "bundle": bundle.name,
        "state": row.state,
        "evaluation": row.evaluation,
        "decided_at": row.decided_at,
        "decided_by": row.decided_by,
        "note": row.note,
    }


def get_review(session: Session, bundle: Bundle) -> dict[str, Any]:
    """The bundle's licence review."""
    return review_view(bundle, session.get(LicenceReview, bundle.id))


def decide_review(
    session: Session,
    bundle: Bundle,
    decision: str,
    note: str,
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Approve or reject a bundle's licence review (admin), audited."""
    if actor.role not in ("admin", "system"):
        raise ForbiddenError("forbidden", "only an admin may decide a licence review")
    row = session.get(LicenceReview, bundle.id)
    if row is None or row.state in (ReviewState.NO_POLICY, ReviewState.NOT_REQUIRED):
        raise ConflictError("illegal_transition", f"{bundle.name} needs no licence review")
    event = {"approved": ReviewEvent.APPROVE, "rejected": ReviewEvent.REJECT}.get(decision)
    if event is None:
        raise InvalidInputError("invalid_request", "decision: approved or rejected")
    new = REVIEW.apply(row.state, event)  # IllegalTransitionError is a ConflictError
    before = row.state
    row.state, row.decided_at, row.decided_by, row.note = new.value, now, actor.label, note
    audit.record(
        session,
        actor,
        "licence.review",
        "bundle",
        bundle.name,
        now=now,
        before={"state": before},
        after={"state": new.value, "note": note},
        request_id=request_id,
    )
    session.commit()
    return review_view(bundle, row)


def require_cleared(session: Session, bundle: Bundle) -> None:
    """Refuse a production rollout of a bundle whose licence review is not cleared.

    Raises:
        ConflictError: ``licence_review_required``.
    """
    row = session.get(LicenceReview, bundle.id)
    if row is not None and row.state not in CLEARED:
        raise ConflictError(
            "licence_review_required",
            f"{bundle.name}: licence review is {row.state}; an admin must approve it "
            "before production",
        )


def notices(bundle: Bundle, fmt: str = "text") -> str:
    """The attribution notice of a release: every component, its licence and supplier
    (HTML escaped when ``fmt`` is ``html``)."""
    comps = sorted(
        bundle.manifest.get("sbom") or [], key=lambda c: (c["name"].lower(), c["version"])
    )
    title = f"Third-party software in {bundle.product} {bundle.model} {bundle.version}"
    if fmt == "html":
        e = html.escape
        rows = "\n".join(
            f"<tr><td>{e(c['name'])}</td><td>{e(c['version'])}</td>"
            f"<td>{e(c.get('licence') or 'NOASSERTION')}</td>"
            f"<td>{e(c.get('supplier') or '')}</td><td>{e(c.get('purl') or '')}</td></tr>"
            for c in comps
        )
        return (
            f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"</head><body>\n<h1>{e(title)}</h1>\n<table>\n<tr><th>component</th>"
            f"<th>version</th><th>licence</th><th>supplier</th><th>purl</th></tr>\n{rows}\n"
            "</table>\n<p>Source code of components under copyleft licences is available "
            "on request.</p>\n</body></html>\n"
        )
    if fmt != "text":
        raise InvalidInputError("invalid_request", "format: text or html")
    lines = [title, "=" * len(title), ""]
    for c in comps:
        lines.append(f"{c['name']} {c['version']}")
        lines.append(f"  licence: {c.get('licence') or 'NOASSERTION'}")
        if c.get("supplier"):
            lines.append(f"  supplier: {c['supplier']}")
        if c.get("purl"):
            lines.append(f"  purl: {c['purl']}")
        lines.append("")
    lines.append("Source code of components under copyleft licences is available on request.")
    return "\n".join(lines) + "\n"


def release_bundle(session: Session, version: str, model: str | None) -> Bundle:
    """The published bundle of ``version`` (of ``model`` when several models have it;
    the highest release counter)."""
    query = select(Bundle).where(Bundle.version == version)
    if model:
        query = query.where(Bundle.model == model)
    rows = session.execute(query.order_by(Bundle.release_counter.desc())).scalars().all()
    if not rows:
        raise NotFoundError("not_found", f"no published bundle of version {version!r}")
    if len({r.model for r in rows}) > 1:
        raise InvalidInputError(
            "invalid_request", f"several models have version {version}; give the model"
        )
    return rows[0]


def list_reviews(session: Session, state: str | None, params: PageParams) -> Page[dict[str, Any]]:
    """Bundles' licence reviews (``state``: pending, approved, rejected...), newest
    bundle first, with the components that need review."""
    query = select(Bundle, LicenceReview).join(LicenceReview, LicenceReview.bundle_id == Bundle.id)
    if state:
        query = query.where(LicenceReview.state == state)
    query = query.order_by(Bundle.published_at.desc(), Bundle.id.desc())
    return fetch_page(session, query, params).map(
        lambda row: {**review_view(*row), "model": row[0].model, "version": row[0].version}
    )
