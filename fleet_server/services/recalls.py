"""Recall campaigns: draft, open (freeze the population), close, and what operators do to
their members; the API's entries, each owning its transaction.

The rest of a recall lives beside it: :mod:`~fleet_server.services.recall_population`
(who is in and why), :mod:`~fleet_server.services.recall_reports` (completion, snapshots,
exports) and :mod:`~fleet_server.services.recall_holds` (what recalls impose on
deployments and rollouts). The hooks other parts call (names are part of the contract)
are importable from here as well: :func:`recall_held_device_keys`, :func:`recall_holds`,
:func:`remedy_rollout_exempt`, :func:`blocked_versions`, :func:`is_version_blocked`,
:func:`software_remedy_targets`, :func:`mark_remedied_by_version`, the snapshot job
:func:`take_snapshots` and :func:`population`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from fleet_server.db.models import RecallCampaign, RecallDevice
from fleet_server.domain.lifecycles import CAMPAIGN, RECALL_DEVICE, CampaignState, MemberState
from fleet_server.domain.recall_scope import explain, parse_scope
from fleet_server.domain.webhooks import EventType
from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError
from fleet_server.services import audit, webhooks
from fleet_server.services.audit import Actor
from fleet_server.services.paging import Page, PageParams, fetch_page
from fleet_server.services.recall_holds import (
    blocked_versions,
    is_version_blocked,
    mark_remedied_by_version,
    recall_held_device_keys,
    recall_holds,
    remedy_rollout_exempt,
    software_remedy_targets,
)
from fleet_server.services.recall_population import (
    device_by_id,
    explain_device,
    member,
    new_matches,
    population,
    population_keys,
    population_query,
    preview,
    recall_device_view,
)
from fleet_server.services.recall_reports import (
    affected_csv,
    completion,
    completion_now,
    completion_view,
    progress_csv,
    snapshot_view,
    snapshots,
    take_snapshots,
)
from fleet_server.services.registry import device_view

__all__ = [
    "blocked_versions",
    "is_version_blocked",
    "mark_remedied_by_version",
    "population",
    "recall_held_device_keys",
    "recall_holds",
    "remedy_rollout_exempt",
    "software_remedy_targets",
    "take_snapshots",
]
"""Hooks re-exported for callers that know recalls by this module's name."""

CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
PHYSICAL_ACTIONS = ("return", "replace", "inspect")
RESERVED_IDS = frozenset({"blocked-versions"})
"""Ids that would clash with fixed routes under ``/api/v1/recalls``."""


def campaign_view(c: RecallCampaign) -> dict[str, Any]:
    """A campaign as the API shows it."""
    return {
        "id": c.id,
        "title": c.title,
        "description": c.description,
        "state": c.state,
        "safety_critical": c.safety_critical,
        "scope": c.scope,
        "remedy": {
            "software_version": c.remedy_version,
            "blocked_versions": list(c.blocked_versions or []),
            "physical_action": c.physical_action,
            "rollout_id": c.remedy_rollout_id,
        },
        "created_at": c.created_at,
        "created_by": c.created_by,
        "opened_at": c.opened_at,
        "closed_at": c.closed_at,
    }


def get_campaign(session: Session, campaign_id: str) -> RecallCampaign:
    """The campaign or a 404."""
    c = session.get(RecallCampaign, campaign_id)
    if c is None:
        raise NotFoundError("not_found", f"recall {campaign_id!r} does not exist")
    return c


def _require_open(campaign: RecallCampaign) -> None:
    if campaign.state != CampaignState.OPEN:
        raise ConflictError("conflict", f"recall {campaign.id} is {campaign.state}, not open")


def create_campaign(
    session: Session,
    actor: Actor,
    *,
    campaign_id: str,
    title: str,
    scope: Any,
    now: float,
    description: str = "",
    remedy_version: str | None = None,
    blocked_versions: Iterable[str] = (),
    physical_action: str | None = None,
    safety_critical: bool = False,
    request_id: str | None = None,
) -> RecallCampaign:
    """Draft a campaign after validating its scope and remedies (at least one remedy; a
    version block needs a remedy version to move devices to)."""
    if not CAMPAIGN_ID.match(campaign_id):
        raise InvalidInputError("invalid_request", "id: 1-64 letters, digits, '.', '_' or '-'")
    if campaign_id in RESERVED_IDS:
        raise InvalidInputError("invalid_request", f"id: {campaign_id!r} is reserved")
    if session.get(RecallCampaign, campaign_id) is not None:
        raise ConflictError("conflict", f"recall {campaign_id!r} already exists")
    parsed = parse_scope(scope)
    blocked = sorted(set(blocked_versions))
    if physical_action is not None and physical_action not in PHYSICAL_ACTIONS:
        raise InvalidInputError(
            "invalid_request", f"physical_action: must be one of {', '.join(PHYSICAL_ACTIONS)}"
        )
    if remedy_version is None and physical_action is None:
        raise InvalidInputError(
            "invalid_request",
            "remedy: give a software remedy version, a physical action, or both",
        )
    if blocked and remedy_version is None:
        raise InvalidInputError(
            "invalid_request", "blocked_versions: a version block needs remedy_version"
        )
    if remedy_version is not None and remedy_version in blocked:
        raise InvalidInputError("invalid_request", "remedy_version: cannot also be blocked")
    if remedy_version is not None and is_version_blocked(session, remedy_version):
        raise ConflictError(
            "conflict", f"remedy_version {remedy_version} is blocked by another recall"
        )
    c = RecallCampaign(
        id=campaign_id,
        title=title,
        description=description,
        state=CAMPAIGN.initial.value,
        safety_critical=safety_critical,
        scope=parsed.to_json(),
        remedy_version=remedy_version,
        blocked_versions=blocked,
        physical_action=physical_action,
        created_at=now,
        created_by=actor.label,
    )
    session.add(c)
    session.flush()
    audit.record(
        session,
        actor,
        "recall.create",
        "recall",
        c.id,
        now=now,
        after=campaign_view(c),
        request_id=request_id,
    )
    return c


def open_campaign(
    session: Session,
    actor: Actor,
    campaign: RecallCampaign,
    *,
    now: float,
    request_id: str | None = None,
) -> int:
    """Freeze the population (every matching device, with why it matched) and open the
    campaign; its version blocks take effect. Returns the population size."""
    CAMPAIGN.move_to(campaign.state, CampaignState.OPEN)
    if campaign.remedy_version and is_version_blocked(session, campaign.remedy_version):
        raise ConflictError(
            "conflict", f"remedy_version {campaign.remedy_version} is blocked by another recall"
        )
    before = campaign_view(campaign)
    found = preview(session, campaign)
    for device, matched in found:
        session.add(
            RecallDevice(
                campaign_id=campaign.id,
                device_key=device.id,
                state=RECALL_DEVICE.initial.value,
                matched=matched,
                added_at=now,
                added_how="opening",
                state_changed_at=now,
            )
        )
    campaign.state = CampaignState.OPEN.value
    campaign.opened_at = now
    after = {**campaign_view(campaign), "population": len(found)}
    _notify_state(session, campaign, before["state"], now=now, population=len(found))
    audit.record(
        session,
        actor,
        "recall.open",
        "recall",
        campaign.id,
        now=now,
        before=before,
        after=after,
        request_id=request_id,
    )
    return len(found)


def _notify_state(
    session: Session, campaign: RecallCampaign, before: str, *, now: float, **extra: Any
) -> None:
    """Queue the ``recall.state_changed`` webhook in the transaction of the change."""
    webhooks.notify(
        session,
        EventType.RECALL_STATE_CHANGED,
        {
            "campaign_id": campaign.id,
            "title": campaign.title,
            "from_state": before,
            "to_state": campaign.state,
            "safety_critical": campaign.safety_critical,
            **extra,
        },
        now=now,
    )


def close_campaign(
    session: Session,
    actor: Actor,
    campaign: RecallCampaign,
    *,
    now: float,
    cancel: bool = False,
    request_id: str | None = None,
) -> None:
    """Close an open campaign (or cancel a draft); blocks of a closed campaign stay."""
    wanted = CampaignState.CANCELLED if cancel else CampaignState.CLOSED
    before = campaign_view(campaign)
    campaign.state = CAMPAIGN.move_to(campaign.state, wanted).value
    campaign.closed_at = now
    _notify_state(session, campaign, before["state"], now=now)
    audit.record(
        session,
        actor,
        f"recall.{'cancel' if cancel else 'close'}",
        "recall",
        campaign.id,
        now=now,
        before=before,
        after=campaign_view(campaign),
        request_id=request_id,
    )


def add_devices(
    session: Session,
    actor: Actor,
    campaign: RecallCampaign,
    device_ids: list[str],
    *,
    now: float,
    request_id: str | None = None,
) -> list[str]:
    """Add devices found later to an open campaign, explicitly. Each must exist and match
    the predicate now (the stored reason must stay true); returns the ids added."""
    _require_open(campaign)
    scope = parse_scope(campaign.scope)
    known = population_keys(session, campaign.id)
    added: list[str] = []
    problems: list[dict[str, Any]] = []
    for device_id in dict.fromkeys(device_ids):
        d = device_by_id(session, device_id)
        if d is None:
            problems.append({"device_id": device_id, "problem": "no such device"})
            continue
        if d.id in known:
            problems.append({"device_id": device_id, "problem": "already in the population"})
            continue
        ok, matched, failed = explain(scope, device_view(d))
        if not ok:
            problems.append({"device_id": device_id, "problem": "does not match", "failed": failed})
            continue
        session.add(
            RecallDevice(
                campaign_id=campaign.id,
                device_key=d.id,
                state=RECALL_DEVICE.initial.value,
                matched=matched,
                added_at=now,
                added_how="added",
                state_changed_at=now,
            )
        )
        added.append(device_id)
    if problems:
        raise InvalidInputError(
            "invalid_request", f"{len(problems)} device(s) cannot be added; none were", problems
        )
    audit.record(
        session,
        actor,
        "recall.add_devices",
        "recall",
        campaign.id,
        now=now,
        after={"added": added},
        request_id=request_id,
    )
    return added


def set_device_state(
    session: Session,
    actor: Actor,
    campaign: RecallCampaign,
    device_id: str,
    state: str,
    *,
    now: float,
    note: str = "",
    via: str | None = None,
    request_id: str | None = None,
) -> RecallDevice:
    """Move one member along its lifecycle (e.g. physical remedy done, inspected and not
    needed, exported abroad). Only while the campaign is open."""
    _require_open(campaign)
    rd, d = member(session, campaign.id, device_id)
    before = recall_device_view(rd, d)
    rd.state = RECALL_DEVICE.move_to(rd.state, state).value
    rd.state_changed_at = now
    rd.note = note
    if rd.state == MemberState.REMEDIED:
        rd.remedied_via = via or campaign.physical_action or "manual"
    audit.record(
        session,
        actor,
        "recall.device_state",
        "recall",
        f"{campaign.id}/{device_id}",
        now=now,
        before=before,
        after=recall_device_view(rd, d),
        request_id=request_id,
    )
    return rd


def set_remedy_rollout(
    session: Session,
    actor: Actor,
    campaign: RecallCampaign,
    rollout_id: str | None,
    *,
    now: float,
    request_id: str | None = None,
) -> None:
    """Record the rollout carrying the software remedy (it is exempt from the hold)."""
    if campaign.remedy_version is None:
        raise ConflictError("conflict", f"recall {campaign.id} has no software remedy")
    before = campaign_view(campaign)
    campaign.remedy_rollout_id = rollout_id
    audit.record(
        session,
        actor,
        "recall.remedy_rollout",
        "recall",
        campaign.id,
        now=now,
        before=before,
        after=campaign_view(campaign),
        request_id=request_id,
    )


# --- API entries: one call per route, each owning its transaction -----------------------


def campaigns_query(state: str | None = None) -> Select[tuple[RecallCampaign]]:
    """Campaigns (optionally in one state), newest first, for a paged list."""
    q = select(RecallCampaign)
    if state:
        q = q.where(RecallCampaign.state == state)
    return q.order_by(RecallCampaign.created_at.desc())


def campaign_detail(session: Session, campaign: RecallCampaign) -> dict[str, Any]:
    """A campaign as the API shows it, with its completion."""
    return {
        **campaign_view(campaign),
        "completion": completion_view(completion(session, campaign.id)),
    }


def show_campaign(session: Session, campaign_id: str) -> dict[str, Any]:
    """One campaign with its remedies and completion."""
    return campaign_detail(session, get_campaign(session, campaign_id))


def draft_campaign(session: Session, actor: Actor, **fields: Any) -> dict[str, Any]:
    """:func:`create_campaign` (same arguments), committed, as the API shows it."""
    c = create_campaign(session, actor, **fields)
    session.commit()
    return campaign_detail(session, c)


def open_recall(
    session: Session, actor: Actor, campaign_id: str, *, now: float, request_id: str | None
) -> dict[str, Any]:
    """Open the campaign (population frozen, blocks in effect), committed."""
    c = get_campaign(session, campaign_id)
    open_campaign(session, actor, c, now=now, request_id=request_id)
    session.commit()
    return campaign_detail(session, c)


def close_recall(
    session: Session, actor: Actor, campaign_id: str, *, now: float, request_id: str | None
) -> dict[str, Any]:
    """Close an open campaign or cancel a draft, committed."""
    c = get_campaign(session, campaign_id)
    cancel = c.state == CampaignState.DRAFT
    close_campaign(session, actor, c, now=now, cancel=cancel, request_id=request_id)
    session.commit()
    return campaign_detail(session, c)


def preview_recall(session: Session, campaign_id: str) -> dict[str, Any]:
    """For a draft: who opening would freeze; for an open campaign: who matches now but
    is not in the population."""
    c = get_campaign(session, campaign_id)
    draft = c.state == CampaignState.DRAFT
    found = preview(session, c) if draft else new_matches(session, c)
    return {
        "campaign_id": c.id,
        "state": c.state,
        "new_only": not draft,
        "count": len(found),
        "devices": [{"device_id": d.device_id, "matched": m} for d, m in found],
    }


def add_recall_devices(
    session: Session,
    actor: Actor,
    campaign_id: str,
    device_ids: list[str],
    *,
    now: float,
    request_id: str | None,
) -> dict[str, Any]:
    """Add devices found after opening (all or nothing), committed."""
    c = get_campaign(session, campaign_id)
    added = add_devices(session, actor, c, device_ids, now=now, request_id=request_id)
    session.commit()
    return {"added": added, "completion": completion_view(completion(session, c.id))}


def members_query(session: Session, campaign_id: str, state: str | None) -> Select[Any]:
    """The frozen population of an existing campaign, for a paged list."""
    return population_query(get_campaign(session, campaign_id).id, state)


def explain_member(session: Session, campaign_id: str, device_id: str) -> dict[str, Any]:
    """Why a device is (or is not) in the campaign (see :func:`explain_device`)."""
    return explain_device(session, get_campaign(session, campaign_id), device_id)


def move_member(
    session: Session,
    actor: Actor,
    campaign_id: str,
    device_id: str,
    state: str,
    *,
    now: float,
    note: str,
    via: str | None,
    request_id: str | None,
) -> dict[str, Any]:
    """Set one member's next state (see :func:`set_device_state`), committed."""
    c = get_campaign(session, campaign_id)
    set_device_state(
        session, actor, c, device_id, state, now=now, note=note, via=via, request_id=request_id
    )
    session.commit()
    return recall_device_view(*member(session, c.id, device_id))


def link_remedy_rollout(
    session: Session,
    actor: Actor,
    campaign_id: str,
    rollout_id: str | None,
    *,
    now: float,
    request_id: str | None,
) -> dict[str, Any]:
    """Record the remedy rollout (see :func:`set_remedy_rollout`), committed."""
    c = get_campaign(session, campaign_id)
    set_remedy_rollout(session, actor, c, rollout_id, now=now, request_id=request_id)
    session.commit()
    return campaign_detail(session, c)


def remedy_targets(session: Session, campaign_id: str) -> dict[str, Any]:
    """Members that still need the software remedy."""
    c = get_campaign(session, campaign_id)
    return {
        "campaign_id": c.id,
        "remedy_version": c.remedy_version,
        "device_ids": [d.device_id for d in software_remedy_targets(session, c)],
    }


def progress(
    session: Session,
    campaign_id: str,
    *,
    now: float | None = None,
    offline_days: float | None = None,
) -> dict[str, Any]:
    """Current completion and the snapshot series. With ``now`` and ``offline_days`` the
    current completion is computed on demand (unreachable members as of ``now``), not
    as of the last snapshot job."""
    c = get_campaign(session, campaign_id)
    if now is not None and offline_days is not None:
        current = completion_view(completion_now(session, c.id, now=now, offline_days=offline_days))
        current["computed_at"] = now
    else:
        current = completion_view(completion(session, c.id))
    return {
        "campaign_id": c.id,
        "current": current,
        "snapshots": [snapshot_view(s) for s in snapshots(session, c.id)],
    }


def export_affected(session: Session, campaign_id: str) -> str:
    """The affected list of an existing campaign as CSV."""
    return affected_csv(session, get_campaign(session, campaign_id).id)


def export_progress(session: Session, campaign_id: str) -> str:
    """The progress report of an existing campaign as CSV."""
    return progress_csv(session, get_campaign(session, campaign_id).id)


def list_campaigns(
    session: Session, params: PageParams, state: str | None = None
) -> Page[dict[str, Any]]:
    """One page of campaigns, newest first, with their completion."""
    page = fetch_page(session, campaigns_query(state), params, scalars=True)
    return page.map(lambda campaign: campaign_detail(session, campaign))


def list_members(
    session: Session, campaign_id: str, params: PageParams, state: str | None = None
) -> Page[dict[str, Any]]:
    """One page of a campaign's frozen population with each member's state and reason."""
    page = fetch_page(session, members_query(session, campaign_id, state), params)
    return page.map(lambda row: recall_device_view(row[0], row[1]))
