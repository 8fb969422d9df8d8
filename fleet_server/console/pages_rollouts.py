"""Rollouts: the list, and a rollout's page with its waves and strata, criteria beside
their evidence, decision history, operator buttons, and ``explain`` for any device."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from fleet_server.api.deps import Db, context
from fleet_server.console.auth import Form, Operator, Viewer
from fleet_server.console.web import PREFIX, page_params, pager, query_value, render
from fleet_server.errors import InvalidInputError
from fleet_server.rollouts.evidence_table import criteria_evidence
from fleet_server.rollouts.policy import parse_policy
from fleet_server.services import rollouts, rollouts_explain

router = APIRouter()
ACTIONS = ("pause", "resume", "cancel", "rollback")


@router.get("/rollouts")
def rollout_list(request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """Rollouts newest first, optionally in one state."""
    state = query_value(request, "state")
    page = rollouts.list_rollouts(session, page_params(request), state=state)
    return render(request, "rollouts.html", page=page, pager=pager(page), state=state)


def _status(session: Session, rollout_id: str) -> dict[str, Any]:
    status = rollouts.status_of(session, rollout_id)
    status["evidence"] = criteria_evidence(parse_policy(status["policy"]), status)
    return status


@router.get("/rollouts/{rollout_id}")
def rollout_page(rollout_id: str, request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """Waves, strata, criteria and evidence, history, buttons, explain form."""
    status = _status(session, rollout_id)
    explained = None
    device_id = query_value(request, "explain")
    if device_id:
        explained = rollouts_explain.explain(
            session, device_id, now=context(request).clock(), rollout_id=rollout_id
        )
    return render(
        request,
        "rollout.html",
        r=status,
        history=rollouts.history_of(session, rollout_id),
        explained=explained,
        explain_id=device_id,
        actions=ACTIONS,
    )


@router.get("/rollouts/{rollout_id}/live")
def rollout_live(rollout_id: str, request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """The rollout's state, waves and evidence, for htmx polling."""
    return render(request, "_rollout_live.html", r=_status(session, rollout_id), actions=ACTIONS)


@router.post("/rollouts/{rollout_id}/{action}")
def rollout_action(
    rollout_id: str, action: str, request: Request, session: Db, who: Operator, form: Form
) -> Response:
    """Start a draft, or pause / resume / cancel / roll back (operators; audited under
    the user's name, as the API audits a token's)."""
    now = context(request).clock()
    reason = str(form.get("reason", ""))[:500]
    if action == "start":
        rollouts.start(session, rollout_id, actor=who.actor, now=now)
    elif action in ACTIONS:
        to_version = query_value_form(form, "to_version")
        rollouts.act(
            session,
            rollout_id,
            action,
            actor=who.actor,
            now=now,
            reason=reason or "from the console",
            to_version=to_version,
        )
    else:
        raise InvalidInputError("validation_error", f"action: start or one of {ACTIONS}")
    return RedirectResponse(f"{PREFIX}/rollouts/{quote(rollout_id, safe='')}", status_code=303)


def query_value_form(form: Any, name: str) -> str | None:
    """A non-empty form field, stripped, or None."""
    value = str(form.get(name, "")).strip()
    return value or None
