"""What recalls impose on the rest of the fleet: held devices, blocked versions, and the
software remedy's progress.

- :func:`recall_held_device_keys` / :func:`recall_holds`: devices rollouts must hold out
  (reason ``"recall hold: <campaign>"``), except the campaign's own remedy rollout
  (:func:`remedy_rollout_exempt`);
- :func:`blocked_versions` / :func:`is_version_blocked`: versions deployments and
  rollouts must refuse to target;
- :func:`software_remedy_targets`: devices that still need a campaign's software remedy;
- :func:`mark_remedied_by_version`: job turning devices that report the remedy version
  (or a higher release) into ``remedied``.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.models import Device, RecallCampaign, RecallDevice
from fleet_server.domain.lifecycles import (
    RECALL_DEVICE,
    CampaignState,
    MemberEvent,
    MemberState,
)
from fleet_server.domain.recall_progress import version_at_least
from fleet_server.services import audit
from fleet_server.services.recall_population import population

BLOCKING_STATES = (CampaignState.OPEN.value, CampaignState.CLOSED.value)
"""A version blocked by a campaign stays blocked after the campaign closes."""


def recall_holds(session: Session) -> dict[int, str]:
    """Device key -> id of the open campaign holding it (members still ``notified``)."""
    rows = session.execute(
        select(RecallDevice.device_key, RecallDevice.campaign_id)
        .join(RecallCampaign, RecallCampaign.id == RecallDevice.campaign_id)
        .where(
            RecallCampaign.state == CampaignState.OPEN,
            RecallDevice.state == MemberState.NOTIFIED,
        )
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
            RecallCampaign.state == CampaignState.OPEN,
            RecallCampaign.remedy_rollout_id == rollout_id,
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
    if campaign.remedy_version is None or campaign.state != CampaignState.OPEN:
        return []
    return [
        d
        for rd, d in population(session, campaign.id)
        if rd.state == MemberState.NOTIFIED
        and not version_at_least(d.software_version, campaign.remedy_version)
    ]


def mark_remedied_by_version(session: Session, now: float) -> int:
    """Job: members of open software-only remedy campaigns that report the remedy version
    (or higher) become ``remedied`` (via ``software <version>``). Returns how many."""
    n = 0
    campaigns = session.execute(
        select(RecallCampaign).where(
            RecallCampaign.state == CampaignState.OPEN,
            RecallCampaign.remedy_version.is_not(None),
            RecallCampaign.physical_action.is_(None),
        )
    ).scalars()
    remediable = {s for s in MemberState if MemberEvent.REMEDY in RECALL_DEVICE.allowed_events(s)}
    for c in list(campaigns):
        for rd, d in population(session, c.id):
            if rd.state in remediable and version_at_least(
                d.software_version, c.remedy_version or ""
            ):
                rd.state = RECALL_DEVICE.apply(rd.state, MemberEvent.REMEDY).value
                rd.remedied_via = f"software {d.software_version}"
                rd.state_changed_at = now
                audit.record(
                    session,
                    audit.SYSTEM,
                    "recall.device_state",
                    "recall",
                    f"{c.id}/{d.device_id}",
                    now=now,
                    after={"state": rd.state, "via": rd.remedied_via},
                )
                n += 1
    return n
