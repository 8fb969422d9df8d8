"""Software composition: the fleet's software inventory (component@version by model,
hardware revision, region or channel), advisories (severity, affected releases, exposed
devices linking to the device list, earliest fix), an advisory's page with the remedy
for operators, and licence reviews with the admin's decision.

Pages call the services ``/api/v1/inventory``, ``/api/v1/advisories...`` and
``/api/v1/bundles/{name}/licence-review`` call, with the same least roles (remedy:
operator; licence decision: admin); each action is audited under the user's name.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fleet_server.api.deps import Db, context
from fleet_server.console.auth import Admin, Form, Operator, Viewer
from fleet_server.console.web import PREFIX, page_params, pager, query_value, render
from fleet_server.errors import InvalidInputError
from fleet_server.services import (
    advisories,
    advisory_remedy,
    composition,
    licences,
    software,
    software_views,
)

router = APIRouter()
SEVERITIES = ("critical", "high", "medium", "low", "none")
REVIEW_STATES = ("pending", "approved", "rejected", "not_required")


@router.get("/software")
def inventory(request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """Component@version -> active devices running it, optionally by a device field."""
    by = query_value(request, "by")
    if by is not None and by not in composition.INVENTORY_GROUPS:
        raise InvalidInputError(
            "validation_error", f"by: one of {', '.join(composition.INVENTORY_GROUPS)}"
        )
    component = query_value(request, "component")
    page = composition.inventory(session, by=by, component=component, params=page_params(request))
    return render(
        request,
        "software.html",
        page=page,
        pager=pager(page),
        by=by,
        component=component,
        groups=list(composition.INVENTORY_GROUPS),
    )


@router.get("/advisories")
def advisory_list(request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """Advisories, most severe first, with their exposure and earliest fix."""
    severity = query_value(request, "severity")
    exposed = query_value(request, "exposed") == "true"
    page = software_views.advisory_rows(
        session, severity=severity, exposed=exposed, params=page_params(request)
    )
    return render(
        request,
        "advisories.html",
        page=page,
        pager=pager(page),
        severity=severity,
        exposed=exposed,
        severities=SEVERITIES,
        events=advisories.list_events(session, page_params(request, 10)).items,
    )


@router.get("/advisories/{advisory_id}")
def advisory_page(advisory_id: str, request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """Affected bundles (VEX status each), exposed devices, earliest fix per model, and
    the remedy per exposed model."""
    detail = advisories.advisory_detail(session, advisory_id)
    devices = advisories.exposed_devices(session, advisory_id, page_params(request, 20))
    return render(request, "advisory.html", a=detail, devices=devices)


@router.post("/advisories/{advisory_id}/remedy")
def remedy(advisory_id: str, request: Request, session: Db, who: Operator, form: Form) -> Response:
    """A staged rollout of the fixing release to exactly the exposed devices of one
    model (started at once with ``start``), or a draft recall when no fix exists."""
    model = str(form.get("model", "")).strip() or None
    outcome = advisory_remedy.start_remedy(
        session,
        advisory_id,
        model=model,
        policy=None,
        start=form.get("start") == "true",
        actor=who.actor,
        now=context(request).clock(),
    )
    if outcome["kind"] == "rollout":
        target = f"{PREFIX}/rollouts/{quote(outcome['rollout_id'], safe='')}"
    else:
        target = f"{PREFIX}/recalls/{quote(outcome['campaign_id'], safe='')}"
    return RedirectResponse(target, status_code=303)


@router.get("/licences")
def licence_reviews(request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """Bundles' licence reviews (pending first by default)."""
    state = query_value(request, "state") or "pending"
    if state != "all" and state not in REVIEW_STATES:
        raise InvalidInputError("validation_error", f"state: all or one of {REVIEW_STATES}")
    page = licences.list_reviews(session, None if state == "all" else state, page_params(request))
    return render(
        request, "licences.html", page=page, pager=pager(page), state=state, states=REVIEW_STATES
    )


@router.post("/licences/{bundle}")
def decide(bundle: str, request: Request, session: Db, who: Admin, form: Form) -> Response:
    """Approve or reject a bundle's licence review, with a reason (admins; audited)."""
    reason = str(form.get("reason", "")).strip()
    if not reason or len(reason) > 2000:
        raise InvalidInputError("validation_error", "reason: 1 to 2000 characters")
    software.decide(
        session,
        bundle,
        str(form.get("decision", "")),
        reason,
        actor=who.actor,
        now=context(request).clock(),
    )
    return RedirectResponse(f"{PREFIX}/licences", status_code=303)
