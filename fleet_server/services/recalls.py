"""Recall campaigns: scope, frozen population, per-device state, remedies, progress.

Hooks other parts call (names are part of the contract):

- :func:`recall_held_device_keys` / :func:`recall_holds`: devices rollouts must hold out
  (reason ``"recall hold: <campaign>"``), except the campaign's own remedy rollout;
- :func:`blocked_versions` / :func:`is_version_blocked`: versions deployments and
  rollouts must refuse to target;
- :func:`software_remedy_targets`: devices that still need a campaign's software remedy;
- :func:`mark_remedied_by_version`: job turning devices that report the remedy version
  (or a higher release) into ``remedied``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from fleet_server.db.models import Device, RecallCampaign, RecallDevice, RecallSnapshot
from fleet_server.domain.lifecycles import (
    CAMPAIGN,
    RECALL_DEVICE,
    IllegalTransitionError,
)
from fleet_server.domain.recall_progress import Completion, is_unreachable, version_at_least
from fleet_server.domain.recall_scope import Scope, ScopeError, explain, parse_scope
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.registry import RegistryError, device_view

CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
PHYSICAL_ACTIONS = ("return", "replace", "inspect")
RESERVED_IDS = frozenset({"blocked-versions"})
"""Ids that would clash with fixed routes under ``/api/v1/recalls``."""
BLOCKING_STATES = ("open", "closed")
"""A version blocked by a campaign stays blocked after the campaign closes."""


def illegal(exc: IllegalTransitionError) -> RegistryError:
    """An illegal lifecycle move as a 409 naming the allowed moves."""
    return RegistryError(
        "conflict",
        str(exc),
        {"current": exc.current, "wanted": exc.wanted, "allowed": list(exc.allowed)},
    )


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
        raise RegistryError("not_found", f"recall {campaign_id!r} does not exist")
    return c


def _scope(data: Any) -> Scope:
    try:
        return parse_scope(data)
    except ScopeError as exc:
        raise RegistryError("invalid_request", str(exc)) from None


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
        raise RegistryError("invalid_request", "id: 1-64 letters, digits, '.', '_' or '-'")
    if campaign_id in RESERVED_IDS:
        raise RegistryError("invalid_request", f"id: {campaign_id!r} is reserved")
    if session.get(RecallCampaign, campaign_id) is not None:
        raise RegistryError("conflict", f"recall {campaign_id!r} already exists")
    parsed = _scope(scope)
    blocked = sorted(set(blocked_versions))
    if physical_action is not None and physical_action not in PHYSICAL_ACTIONS:
        raise RegistryError(
            "invalid_request", f"physical_action: must be one of {', '.join(PHYSICAL_ACTIONS)}"
        )
    if remedy_version is None and physical_action is None:
        raise RegistryError(
            "invalid_request",
            "remedy: give a software remedy version, a physical action, or both",
        )
    if blocked and remedy_version is None:
        raise RegistryError(
            "invalid_request", "blocked_versions: a version block needs remedy_version"
        )
    if remedy_version is not None and remedy_version in blocked:
        raise RegistryError("invalid_request", "remedy_version: cannot also be blocked")
    if remedy_version is not None and is_version_blocked(session, remedy_version):
        raise RegistryError(
            "conflict", f"remedy_version {remedy_version} is blocked by another recall"
        )
    c = RecallCampaign(
        id=campaign_id,
        title=title,
        description=description,
        state=CAMPAIGN.initial,
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


def _candidates(session: Session, scope: Scope) -> list[tuple[Device, list[str]]]:
    """Devices matching the scope now, with the clauses they matched."""
    query = select(Device)
    if "models" in scope.lists:
        query = query.where(Device.model.in_(scope.lists["models"]))
    if "batches" in scope.lists:
        query = query.where(Device.batch.in_(scope.lists["batches"]))
    if "hw_revisions" in scope.lists:
        query = query.where(Device.hw_revision.in_(scope.lists["hw_revisions"]))
    if "software_versions" in scope.lists:
        query = query.where(Device.software_version.in_(scope.lists["software_versions"]))
    out = []
    for d in session.execute(query.order_by(Device.id)).scalars():
        ok, matched, _failed = explain(scope, device_view(d))
        if ok:
            out.append((d, matched))
    return out


def preview(session: Session, campaign: RecallCampaign) -> list[tuple[Device, list[str]]]:
    """Devices the scope matches now (the population opening would freeze)."""
    return _candidates(session, parse_scope(campaign.scope))


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
    try:
        CAMPAIGN.check(campaign.state, "open")
    except IllegalTransitionError as exc:
        raise illegal(exc) from None
    if campaign.remedy_version and is_version_blocked(session, campaign.remedy_version):
        raise RegistryError(
            "conflict", f"remedy_version {campaign.remedy_version} is blocked by another recall"
        )
    before = campaign_view(campaign)
    found = preview(session, campaign)
    for device, matched in found:
        session.add(
            RecallDevice(
                campaign_id=campaign.id,
                device_key=device.id,
                state=RECALL_DEVICE.initial,
                matched=matched,
                added_at=now,
                added_how="opening",
                state_changed_at=now,
            )
        )
    campaign.state = "open"
    campaign.opened_at = now
    after = {**campaign_view(campaign), "population": len(found)}
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
    wanted = "cancelled" if cancel else "closed"
    try:
        CAMPAIGN.check(campaign.state, wanted)
    except IllegalTransitionError as exc:
        raise illegal(exc) from None
    before = campaign_view(campaign)
    campaign.state = wanted
    campaign.closed_at = now
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


def population_keys(session: Session, campaign_id: str) -> set[int]:
    """Device keys of the frozen population."""
    return set(
        session.execute(
            select(RecallDevice.device_key).where(RecallDevice.campaign_id == campaign_id)
        ).scalars()
    )


def new_matches(session: Session, campaign: RecallCampaign) -> list[tuple[Device, list[str]]]:
    """Devices that match the predicate now but are not in the frozen population (e.g.
    registered after opening): what ``add`` would bring in."""
    known = population_keys(session, campaign.id)
    return [(d, m) for d, m in preview(session, campaign) if d.id not in known]


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
    if campaign.state != "open":
        raise RegistryError("conflict", f"recall {campaign.id} is {campaign.state}, not open")
    scope = parse_scope(campaign.scope)
    known = population_keys(session, campaign.id)
    added: list[str] = []
    problems: list[dict[str, Any]] = []
    for device_id in dict.fromkeys(device_ids):
        d = session.execute(
            select(Device).where(Device.device_id == device_id)
        ).scalar_one_or_none()
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
                state=RECALL_DEVICE.initial,
                matched=matched,
                added_at=now,
                added_how="added",
                state_changed_at=now,
            )
        )
        added.append(device_id)
    if problems:
        raise RegistryError(
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


def recall_device_view(rd: RecallDevice, d: Device) -> dict[str, Any]:
    """A population member as the API shows it."""
    return {
        "device_id": d.device_id,
        "serial": d.serial,
        "model": d.model,
        "batch": d.batch,
        "software_version": d.software_version,
        "state": rd.state,
        "matched": list(rd.matched),
        "added_how": rd.added_how,
        "added_at": rd.added_at,
        "state_changed_at": rd.state_changed_at,
        "remedied_via": rd.remedied_via,
        "note": rd.note,
        "safe_mode_command_id": rd.safe_mode_command_id,
    }


def population_query(campaign_id: str, state: str | None = None) -> Select[Any]:
    """Query of the frozen population, (member, device) rows by device id."""
    q = (
        select(RecallDevice, Device)
        .join(Device, Device.id == RecallDevice.device_key)
        .where(RecallDevice.campaign_id == campaign_id)
    )
    if state:
        q = q.where(RecallDevice.state == state)
    return q.order_by(Device.device_id)


def population(
    session: Session, campaign_id: str, state: str | None = None
) -> list[tuple[RecallDevice, Device]]:
    """The frozen population with each member's device, by device id."""
    return [(rd, d) for rd, d in session.execute(population_query(campaign_id, state)).all()]


def member(session: Session, campaign_id: str, device_id: str) -> tuple[RecallDevice, Device]:
    """One population member, or a 404 saying whether the device exists at all."""
    row = session.execute(
        select(RecallDevice, Device)
        .join(Device, Device.id == RecallDevice.device_key)
        .where(RecallDevice.campaign_id == campaign_id, Device.device_id == device_id)
    ).first()
    if row is None:
        raise RegistryError(
            "not_found", f"device {device_id!r} is not in the population of recall {campaign_id}"
        )
    return row[0], row[1]


def explain_device(session: Session, campaign: RecallCampaign, device_id: str) -> dict[str, Any]:
    """Why a device is (or is not) affected: frozen reason and state, and the predicate
    evaluated on its registry fields now."""
    d = session.execute(select(Device).where(Device.device_id == device_id)).scalar_one_or_none()
    if d is None:
        raise RegistryError("not_found", f"device {device_id!r} does not exist")
    ok, matched, failed = explain(parse_scope(campaign.scope), device_view(d))
    rd = session.get(RecallDevice, (campaign.id, d.id))
    return {
        "campaign_id": campaign.id,
        "device_id": device_id,
        "in_population": rd is not None,
        "state": rd.state if rd else None,
        "frozen_reason": list(rd.matched) if rd else None,
        "added_how": rd.added_how if rd else None,
        "matches_now": ok,
        "matched_now": matched,
        "failed_now": failed,
    }


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
    if campaign.state != "open":
        raise RegistryError("conflict", f"recall {campaign.id} is {campaign.state}, not open")
    rd, d = member(session, campaign.id, device_id)
    try:
        RECALL_DEVICE.check(rd.state, state)
    except IllegalTransitionError as exc:
        raise illegal(exc) from None
    before = recall_device_view(rd, d)
    rd.state = state
    rd.state_changed_at = now
    rd.note = note
    if state == "remedied":
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
        raise RegistryError("conflict", f"recall {campaign.id} has no software remedy")
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


# --- progress --------------------------------------------------------------------------


def completion(session: Session, campaign_id: str) -> Completion:
    """Counts of the population by state, as a :class:`Completion`."""
    counts = dict(
        session.execute(
            select(RecallDevice.state, func.count())
            .where(RecallDevice.campaign_id == campaign_id)
            .group_by(RecallDevice.state)
        ).all()
    )
    return Completion(
        population=int(sum(counts.values())),
        remedied=int(counts.get("remedied", 0)),
        not_needed=int(counts.get("not_needed", 0)),
        unreachable=int(counts.get("unreachable", 0)),
    )


def completion_view(c: Completion) -> dict[str, Any]:
    """Completion with both rates, labelled."""
    return {
        "population": c.population,
        "remedied": c.remedied,
        "not_needed": c.not_needed,
        "unreachable": c.unreachable,
        "raw_rate": c.raw_rate,
        "adjusted_rate": c.adjusted_rate,
        "raw_rate_definition": "(remedied + not needed) / population",
        "adjusted_rate_definition": "(remedied + not needed) / (population - unreachable)",
    }


def refresh_unreachable(session: Session, *, now: float, offline_days: float) -> int:
    """Mark notified members of open campaigns unreachable when gone from the registry or
    offline too long, and bring back ones that reappeared. Returns how many changed."""
    changed = 0
    rows = session.execute(
        select(RecallDevice, Device)
        .join(Device, Device.id == RecallDevice.device_key)
        .join(RecallCampaign, RecallCampaign.id == RecallDevice.campaign_id)
        .where(
            RecallCampaign.state == "open",
            RecallDevice.state.in_(("notified", "unreachable")),
        )
    ).all()
    for rd, d in rows:
        why = is_unreachable(d.status, d.presence, d.last_seen, now, offline_days)
        if why and rd.state == "notified":
            rd.state, rd.note, rd.state_changed_at = "unreachable", why, now
            changed += 1
        elif not why and rd.state == "unreachable":
            rd.state, rd.note, rd.state_changed_at = "notified", "reachable again", now
            changed += 1
    return changed


def take_snapshots(session: Session, *, now: float, offline_days: float) -> int:
    """The snapshot job: refresh unreachable members, then record one progress snapshot
    per open campaign. Returns the number of snapshots written."""
    refresh_unreachable(session, now=now, offline_days=offline_days)
    session.flush()
    n = 0
    for c in session.execute(
        select(RecallCampaign).where(RecallCampaign.state == "open")
    ).scalars():
        comp = completion(session, c.id)
        session.add(
            RecallSnapshot(
                campaign_id=c.id,
                at=now,
                population=comp.population,
                remedied=comp.remedied,
                not_needed=comp.not_needed,
                unreachable=comp.unreachable,
                raw_rate=comp.raw_rate,
                adjusted_rate=comp.adjusted_rate,
            )
        )
        n += 1
    return n


def snapshots(session: Session, campaign_id: str) -> list[RecallSnapshot]:
    """The campaign's progress series, oldest first."""
    return list(
        session.execute(
            select(RecallSnapshot)
            .where(RecallSnapshot.campaign_id == campaign_id)
            .order_by(RecallSnapshot.at, RecallSnapshot.id)
        ).scalars()
    )


def snapshot_view(s: RecallSnapshot) -> dict[str, Any]:
    """One snapshot as the API shows it."""
    return {
        "at": s.at,
        "population": s.population,
        "remedied": s.remedied,
        "not_needed": s.not_needed,
        "unreachable": s.unreachable,
        "raw_rate": s.raw_rate,
        "adjusted_rate": s.adjusted_rate,
    }


AFFECTED_COLUMNS = (
    "device_id",
    "serial",
    "model",
    "batch",
    "software_version",
    "state",
    "added_how",
    "matched",
    "remedied_via",
    "note",
)
PROGRESS_COLUMNS = (
    "at",
    "population",
    "remedied",
    "not_needed",
    "unreachable",
    "raw_rate (done/population)",
    "adjusted_rate (done/(population-unreachable))",
)


def _cell(value: Any) -> Any:
    """Neutralise spreadsheet formulas in free-text cells (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def affected_csv(session: Session, campaign_id: str) -> str:
    """The affected list as CSV (one row per population member, reason included)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(AFFECTED_COLUMNS)
    for rd, d in population(session, campaign_id):
        v = recall_device_view(rd, d)
        w.writerow(
            [_cell(v[c] if c != "matched" else "; ".join(v["matched"])) for c in AFFECTED_COLUMNS]
        )
    return buf.getvalue()


def progress_csv(session: Session, campaign_id: str) -> str:
    """The progress report (snapshots) as CSV, rates labelled with their definitions."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(PROGRESS_COLUMNS)
    for s in snapshots(session, campaign_id):
        w.writerow(
            [
                f"{s.at:.0f}",
                s.population,
                s.remedied,
                s.not_needed,
                s.unreachable,
                f"{s.raw_rate:.4f}",
                "" if s.adjusted_rate is None else f"{s.adjusted_rate:.4f}",
            ]
        )
    return buf.getvalue()


# --- hooks for rollouts and deployments -------------------------------------------------


def recall_holds(session: Session) -> dict[int, str]:
    """Device key -> id of the open campaign holding it (members still ``notified``)."""
    rows = session.execute(
        select(RecallDevice.device_key, RecallDevice.campaign_id)
        .join(RecallCampaign, RecallCampaign.id == RecallDevice.campaign_id)
        .where(RecallCampaign.state == "open", RecallDevice.state == "notified")
        .order_by(RecallDevice.campaign_id)
    ).all()
    out: dict[int, str] = {}
    for key, campaign_id in rows:
        out.setdefault(key, campaign_id)
    return out


def recall_held_device_keys(session: Session) -> set[int]:
    """Devices in an open recall that are not remedied / not needed / unreachable:
    rollouts exclude them with reason ``"recall hold: <campaign>"`` (see
    :func:`recall_holds`), except the campaign's own remedy rollout (see
    :func:`remedy_rollout_exempt`)."""
    return set(recall_holds(session))


def remedy_rollout_exempt(session: Session, rollout_id: str) -> set[int]:
    """Held devices a rollout may still target because it is their campaign's remedy."""
    campaigns = session.execute(
        select(RecallCampaign.id).where(
            RecallCampaign.state == "open", RecallCampaign.remedy_rollout_id == rollout_id
        )
    ).scalars()
    ids = set(campaigns)
    return {k for k, c in recall_holds(session).items() if c in ids}


def blocked_versions(session: Session) -> dict[str, str]:
    """Version -> id of the (open or closed) campaign that blocked it."""
    out: dict[str, str] = {}
    for c in session.execute(
        select(RecallCampaign)
        .where(RecallCampaign.state.in_(BLOCKING_STATES))
        .order_by(RecallCampaign.opened_at)
    ).scalars():
        for v in c.blocked_versions or []:
            out.setdefault(v, c.id)
    return out


def is_version_blocked(session: Session, version: str) -> bool:
    """True when a recall blocked ``version``: deployments and rollouts refuse it."""
    return version in blocked_versions(session)


def software_remedy_targets(session: Session, campaign: RecallCampaign) -> list[Device]:
    """Members that still need the software remedy: not done, not unreachable, and not yet
    on the remedy version (or a higher release). Devices on a blocked version are in it."""
    if campaign.remedy_version is None or campaign.state != "open":
        return []
    return [
        d
        for rd, d in population(session, campaign.id)
        if rd.state == "notified"
        and not version_at_least(d.software_version, campaign.remedy_version)
    ]


def mark_remedied_by_version(session: Session, now: float) -> int:
    """Job: members of open software-only remedy campaigns that report the remedy version
    (or higher) become ``remedied`` (via ``software <version>``). Returns how many."""
    n = 0
    campaigns = session.execute(
        select(RecallCampaign).where(
            RecallCampaign.state == "open",
            RecallCampaign.remedy_version.is_not(None),
            RecallCampaign.physical_action.is_(None),
        )
    ).scalars()
    for c in list(campaigns):
        for rd, d in population(session, c.id):
            if rd.state in ("notified", "unreachable") and version_at_least(
                d.software_version, c.remedy_version or ""
            ):
                rd.state = "remedied"
                rd.remedied_via = f"software {d.software_version}"
                rd.state_changed_at = now
                audit.record(
                    session,
                    audit.SYSTEM,
                    "recall.device_state",
                    "recall",
                    f"{c.id}/{d.device_id}",
                    now=now,
                    after={"state": "remedied", "via": rd.remedied_via},
                )
                n += 1
    return n
