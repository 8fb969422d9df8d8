"""Vulnerability exposure: OSV advisories kept on the server, matched to every published
bundle's components, and the devices that run an affected release.

``import_documents`` stores advisories (an advisory already known with the same
``modified`` is left alone; a changed one is re-matched). ``match_pending`` (the jobs
process runs it) matches new or changed advisories against every bundle and new bundles
against every advisory, applying each bundle's VEX statements, and raises an exposure
event when a critical advisory newly reaches devices. Exposure counts a device by the
release it has committed (:mod:`fleet_server.services.composition`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, delete, false, func, or_, select, tuple_, update
from sqlalchemy.orm import Session

from fleet_server.db.models import Bundle, Device
from fleet_server.db.sbom_models import (
    AdvisoryMatch,
    AdvisoryPackage,
    AdvisoryRow,
    BundleComponent,
    BundleMatchState,
    ExposureEvent,
    VexRecord,
)
from fleet_server.domain.exposure import match_component
from fleet_server.domain.osv import Advisory, parse_advisory
from fleet_server.domain.vex import SUPPRESSING, VexStatement
from fleet_server.domain.webhooks import EventType
from fleet_server.errors import FleetError, InvalidInputError, NotFoundError
from fleet_server.services import audit, webhooks
from fleet_server.services.audit import Actor
from fleet_server.services.composition import release_ids
from fleet_server.services.paging import Page, PageParams, fetch_page

_CHUNK = 2000


def import_documents(
    session: Session,
    docs: Iterable[tuple[str, Any]],
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Store OSV documents ((file name, decoded JSON or the error reading it)); returns
    counts and the rejected files with their reason. Audited; commits."""
    known = dict(session.execute(select(AdvisoryRow.id, AdvisoryRow.modified)).all())
    fresh: dict[str, Advisory] = {}
    rejected: list[dict[str, str]] = []
    unchanged = 0
    for name, doc in docs:
        if isinstance(doc, FleetError):
            rejected.append({"file": name, "error": doc.message})
            continue
        try:
            adv = parse_advisory(doc, name)
        except InvalidInputError as exc:
            rejected.append({"file": name, "error": exc.message})
            continue
        if known.get(adv.id) == adv.modified:
            unchanged += 1
            continue
        fresh[adv.id] = adv
    updated = [i for i in fresh if i in known]
    for start in range(0, len(updated), _CHUNK):
        ids = updated[start : start + _CHUNK]
        session.execute(delete(AdvisoryPackage).where(AdvisoryPackage.advisory_id.in_(ids)))
        session.execute(delete(AdvisoryMatch).where(AdvisoryMatch.advisory_id.in_(ids)))
        session.execute(delete(AdvisoryRow).where(AdvisoryRow.id.in_(ids)))
    rows, packages = [], []
    for adv in fresh.values():
        rows.append(
            {
                "id": adv.id,
                "aliases": list(adv.aliases),
                "summary": adv.summary,
                "severity": adv.severity,
                "score": adv.score,
                "vector": adv.vector,
                "modified": adv.modified,
                "withdrawn": adv.withdrawn,
                "document": adv.document,
                "imported_at": now,
                "matched_at": None,
            }
        )
        for key in {(a.purl_type, a.name) for a in adv.affected}:
            packages.append({"advisory_id": adv.id, "purl_type": key[0], "package": key[1]})
    for start in range(0, len(rows), _CHUNK):
        session.execute(AdvisoryRow.__table__.insert(), rows[start : start + _CHUNK])
    for start in range(0, len(packages), _CHUNK):
        session.execute(AdvisoryPackage.__table__.insert(), packages[start : start + _CHUNK])
    result = {
        "imported": len(fresh) - len(updated),
        "updated": len(updated),
        "unchanged": unchanged,
        "rejected": rejected,
    }
    audit.record(
        session,
        actor,
        "advisory.import",
        "advisories",
        None,
        now=now,
        after={k: (len(v) if isinstance(v, list) else v) for k, v in result.items()},
        request_id=request_id,
    )
    session.commit()
    return result


def _vex_by_bundle(session: Session, bundle_ids: Iterable[int]) -> dict[int, list[VexStatement]]:
    out: dict[int, list[VexStatement]] = defaultdict(list)
    ids = list(bundle_ids)
    for start in range(0, len(ids), _CHUNK):
        for v in session.execute(
            select(VexRecord).where(VexRecord.bundle_id.in_(ids[start : start + _CHUNK]))
        ).scalars():
            out[v.bundle_id].append(
                VexStatement(v.vulnerability, v.purl, v.status, v.justification, v.detail)
            )
    return out


def match_pending(session: Session, *, now: float) -> dict[str, Any]:
    """Match new or changed advisories against every bundle and new bundles against
    every advisory; raise exposure events for critical advisories that newly reach
    devices. Commits; returns what it did."""
    pending = set(
        session.execute(select(AdvisoryRow.id).where(AdvisoryRow.matched_at.is_(None))).scalars()
    )
    new_bundles = set(
        session.execute(
            select(Bundle.id).where(~Bundle.id.in_(select(BundleMatchState.bundle_id)))
        ).scalars()
    )
    if not pending and not new_bundles:
        return {"advisories": 0, "bundles": 0, "matches": 0, "events": 0}
    for start in range(0, max(len(pending), 1), _CHUNK):
        chunk = sorted(pending)[start : start + _CHUNK]
        session.execute(delete(AdvisoryMatch).where(AdvisoryMatch.advisory_id.in_(chunk)))
    if new_bundles:
        session.execute(delete(AdvisoryMatch).where(AdvisoryMatch.bundle_id.in_(new_bundles)))
    candidates = session.execute(
        select(
            AdvisoryPackage.advisory_id,
            BundleComponent.id,
            BundleComponent.bundle_id,
            BundleComponent.purl,
        )
        .join(
            BundleComponent,
            and_(
                BundleComponent.purl_type == AdvisoryPackage.purl_type,
                BundleComponent.package == AdvisoryPackage.package,
            ),
        )
        .join(AdvisoryRow, AdvisoryRow.id == AdvisoryPackage.advisory_id)
        .where(or_(AdvisoryRow.matched_at.is_(None), BundleComponent.bundle_id.in_(new_bundles)))
    ).all()
    parsed: dict[str, Advisory] = {}
    needed = sorted({c[0] for c in candidates})
    for start in range(0, len(needed), _CHUNK):
        for row in session.execute(
            select(AdvisoryRow.id, AdvisoryRow.document).where(
                AdvisoryRow.id.in_(needed[start : start + _CHUNK])
            )
        ):
            parsed[row.id] = parse_advisory(row.document, row.id, rate=False)
    vex = _vex_by_bundle(session, {c[2] for c in candidates})
    rows = []
    for advisory_id, component_id, bundle_id, purl in candidates:
        adv = parsed[advisory_id]
        pairs = [(adv, aff) for aff in adv.affected] if not adv.withdrawn else []
        for m in match_component(pairs, purl, vex.get(bundle_id, ())):
            rows.append(
                {
                    "advisory_id": advisory_id,
                    "bundle_id": bundle_id,
                    "component_id": component_id,
                    "status": m.status,
                    "justification": m.justification,
                    "fixed_in": m.fixed_in,
                }
            )
            break
    for start in range(0, len(rows), _CHUNK):
        session.execute(AdvisoryMatch.__table__.insert(), rows[start : start + _CHUNK])
    for start in range(0, len(pending), _CHUNK):
        chunk = sorted(pending)[start : start + _CHUNK]
        session.execute(update(AdvisoryRow).where(AdvisoryRow.id.in_(chunk)).values(matched_at=now))
    if new_bundles:
        session.execute(
            BundleMatchState.__table__.insert(),
            [{"bundle_id": b, "matched_at": now} for b in sorted(new_bundles)],
        )
    reaching = {r["advisory_id"] for r in rows if r["status"] not in SUPPRESSING}
    events = _raise_events(session, reaching, now)
    session.commit()
    return {
        "advisories": len(pending),
        "bundles": len(new_bundles),
        "matches": len(rows),
        "events": events,
    }


def exposed_by_advisory(
    session: Session, advisory_ids: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Per advisory, the releases (the highest release counter of a model and version)
    with an unsuppressed match: bundle, model, version, release counter. One query per
    chunk of advisories."""
    rel = release_ids().subquery()
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for start in range(0, len(advisory_ids), _CHUNK):
        rows = session.execute(
            select(
                AdvisoryMatch.advisory_id,
                Bundle.name,
                Bundle.model,
                Bundle.version,
                Bundle.release_counter,
            )
            .distinct()
            .join(Bundle, Bundle.id == AdvisoryMatch.bundle_id)
            .join(rel, rel.c.id == Bundle.id)
            .where(
                AdvisoryMatch.advisory_id.in_(advisory_ids[start : start + _CHUNK]),
                AdvisoryMatch.status.not_in(SUPPRESSING),
            )
            .order_by(AdvisoryMatch.advisory_id, Bundle.model, Bundle.release_counter)
        ).all()
        for adv, name, model, version, counter in rows:
            out[adv].append(
                {"bundle": name, "model": model, "version": version, "release_counter": counter}
            )
    return out


def exposed_counts(session: Session, advisory_ids: list[str]) -> dict[str, int]:
    """Active devices running an exposed release, per advisory: the releases per
    advisory, then one grouped count of devices per (model, version)."""
    by_advisory = exposed_by_advisory(session, advisory_ids)
    pairs = {(r["model"], r["version"]) for rels in by_advisory.values() for r in rels}
    if not pairs:
        return {}
    running: dict[tuple[str, str], int] = {}
    listed = sorted(pairs)
    for start in range(0, len(listed), _CHUNK):
        for model, version, n in session.execute(
            select(Device.model, Device.software_version, func.count())
            .where(
                Device.status == "active",
                tuple_(Device.model, Device.software_version).in_(listed[start : start + _CHUNK]),
            )
            .group_by(Device.model, Device.software_version)
        ).all():
            running[(model, version)] = int(n)
    return {
        adv: sum(running.get((r["model"], r["version"]), 0) for r in rels)
        for adv, rels in by_advisory.items()
    }


def _raise_events(session: Session, advisory_ids: set[str], now: float) -> int:
    """An exposure event (and an ``advisory.exposure`` webhook) for each critical
    advisory that reaches devices and has no open event yet (one per advisory)."""
    critical = list(
        session.execute(
            select(AdvisoryRow.id, AdvisoryRow.severity).where(
                AdvisoryRow.id.in_(sorted(advisory_ids)),
                AdvisoryRow.severity == "critical",
                ~AdvisoryRow.id.in_(
                    select(ExposureEvent.advisory_id).where(ExposureEvent.state == "open")
                ),
            )
        ).all()
    )
    ids = [c[0] for c in critical]
    counts = exposed_counts(session, ids)
    releases = exposed_by_advisory(session, ids)
    raised = 0
    for advisory_id, severity in critical:
        count = counts.get(advisory_id, 0)
        if count == 0:
            continue
        bundles = [p["bundle"] for p in releases[advisory_id]]
        session.add(
            ExposureEvent(
                advisory_id=advisory_id,
                severity=severity,
                exposed_devices=count,
                bundles=bundles,
                state="open",
                raised_at=now,
            )
        )
        webhooks.notify(
            session,
            EventType.ADVISORY_EXPOSURE,
            {"advisory": advisory_id, "severity": severity, "devices": count, "bundles": bundles},
            now=now,
        )
        raised += 1
    return raised


def exposed_releases(session: Session, advisory_id: str) -> list[dict[str, Any]]:
    """The releases (bundle of a model and version) with an unsuppressed match."""
    return exposed_by_advisory(session, [advisory_id]).get(advisory_id, [])


def _exposed_where(session: Session, advisory_id: str, model: str | None) -> Any:
    """The condition on devices: active and running an exposed (model, version); None
    when no release is exposed."""
    pairs = [
        (r["model"], r["version"])
        for r in exposed_releases(session, advisory_id)
        if model is None or r["model"] == model
    ]
    if not pairs:
        return None
    return and_(Device.status == "active", tuple_(Device.model, Device.software_version).in_(pairs))


def exposed_query(session: Session, advisory_id: str, model: str | None = None) -> Any:
    """The active devices whose committed release is exposed (a SELECT of devices)."""
    where = _exposed_where(session, advisory_id, model)
    return select(Device).where(false() if where is None else where).order_by(Device.device_id)


def exposed_count(session: Session, advisory_id: str) -> int:
    """How many active devices run an exposed release."""
    return exposed_counts(session, [advisory_id]).get(advisory_id, 0)


def exposed_devices(session: Session, advisory_id: str, params: PageParams) -> Page[dict[str, Any]]:
    """One page of the devices exposed to an advisory, and their number (a count
    answered from the (model, software_version, status) index, and one page by id)."""
    where = _exposed_where(session, advisory_id, None)
    if where is None:
        if session.get(AdvisoryRow, advisory_id) is None:
            raise NotFoundError("not_found", f"no advisory {advisory_id!r}")
        return Page([], 0, params.offset)
    total = session.execute(select(func.count()).select_from(Device).where(where)).scalar_one()
    rows = session.execute(
        select(
            Device.device_id,
            Device.model,
            Device.hw_revision,
            Device.region,
            Device.channel,
            Device.software_version,
        )
        .where(where)
        .order_by(Device.device_id)
        .limit(params.limit)
        .offset(params.offset)
    ).all()
    return Page([dict(r._mapping) for r in rows], int(total), params.offset)


def earliest_fixes(session: Session, advisory_id: str) -> dict[str, dict[str, Any] | None]:
    """Per exposed model, the lowest published release above every exposed one that
    has been matched and is not affected (None: no fix published)."""
    exposed = exposed_releases(session, advisory_id)
    out: dict[str, dict[str, Any] | None] = {}
    for model in sorted({r["model"] for r in exposed}):
        top = max(r["release_counter"] for r in exposed if r["model"] == model)
        still = select(AdvisoryMatch.bundle_id).where(
            AdvisoryMatch.advisory_id == advisory_id, AdvisoryMatch.status.not_in(SUPPRESSING)
        )
        fix = session.execute(
            select(Bundle)
            .join(BundleMatchState, BundleMatchState.bundle_id == Bundle.id)
            .where(Bundle.model == model, Bundle.release_counter > top, ~Bundle.id.in_(still))
            .order_by(Bundle.release_counter, Bundle.id)
            .limit(1)
        ).scalar_one_or_none()
        out[model] = (
            None
            if fix is None
            else {"bundle": fix.name, "version": fix.version, "channel": fix.channel}
        )
    return out


def get_advisory_row(session: Session, advisory_id: str) -> AdvisoryRow:
    """The stored advisory (404 ``not_found``)."""
    row = session.get(AdvisoryRow, advisory_id)
    if row is None:
        raise NotFoundError("not_found", f"no advisory {advisory_id!r}")
    return row


def advisory_view(row: AdvisoryRow) -> dict[str, Any]:
    """An advisory's own facts as the API shows them."""
    return {
        "id": row.id,
        "aliases": row.aliases,
        "summary": row.summary,
        "severity": row.severity,
        "score": row.score,
        "vector": row.vector,
        "modified": row.modified,
        "withdrawn": row.withdrawn,
        "matched_at": row.matched_at,
    }


def advisory_detail(session: Session, advisory_id: str) -> dict[str, Any]:
    """An advisory with its affected bundles (VEX status each), exposed device count and
    earliest fixing release per model."""
    row = get_advisory_row(session, advisory_id)
    matches = session.execute(
        select(AdvisoryMatch, Bundle.name, BundleComponent.name, BundleComponent.purl)
        .join(Bundle, Bundle.id == AdvisoryMatch.bundle_id)
        .join(BundleComponent, BundleComponent.id == AdvisoryMatch.component_id)
        .where(AdvisoryMatch.advisory_id == advisory_id)
        .order_by(Bundle.name)
    ).all()
    return {
        **advisory_view(row),
        "affected_bundles": [
            {
                "bundle": name,
                "component": comp,
                "purl": purl,
                "status": m.status,
                "justification": m.justification,
                "fixed_in": m.fixed_in,
            }
            for m, name, comp, purl in matches
        ],
        "exposed_devices": exposed_count(session, advisory_id),
        "earliest_fix": earliest_fixes(session, advisory_id),
    }


def list_advisories(
    session: Session, *, severity: str | None, exposed: bool, params: PageParams
) -> Page[dict[str, Any]]:
    """One page of advisories (most severe first), optionally only those that match an
    unsuppressed component of some bundle."""
    query = select(AdvisoryRow)
    if severity:
        query = query.where(AdvisoryRow.severity == severity)
    if exposed:
        query = query.where(
            AdvisoryRow.id.in_(
                select(AdvisoryMatch.advisory_id).where(AdvisoryMatch.status.not_in(SUPPRESSING))
            )
        )
    query = query.order_by(AdvisoryRow.score.desc().nulls_last(), AdvisoryRow.id)
    return fetch_page(session, query, params, scalars=True).map(advisory_view)


def list_events(session: Session, params: PageParams) -> Page[dict[str, Any]]:
    """Exposure events, newest first."""
    query = select(ExposureEvent).order_by(ExposureEvent.raised_at.desc(), ExposureEvent.id)
    return fetch_page(session, query, params, scalars=True).map(
        lambda e: {
            "id": e.id,
            "advisory": e.advisory_id,
            "severity": e.severity,
            "exposed_devices": e.exposed_devices,
            "bundles": e.bundles,
            "state": e.state,
            "raised_at": e.raised_at,
        }
    )


def add_vex(
    session: Session,
    bundle: Bundle,
    statements: list[VexStatement],
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Attach VEX statements to a bundle and re-match it at once; audited, commits."""
    for st in statements:
        session.add(
            VexRecord(
                bundle_id=bundle.id,
                vulnerability=st.vulnerability,
                purl=st.purl,
                status=st.status,
                justification=st.justification,
                detail=st.detail,
                created_at=now,
                created_by=actor.label,
            )
        )
    session.execute(delete(BundleMatchState).where(BundleMatchState.bundle_id == bundle.id))
    audit.record(
        session,
        actor,
        "advisory.vex",
        "bundle",
        bundle.name,
        now=now,
        after={"statements": [(s.vulnerability, s.purl, s.status) for s in statements]},
        request_id=request_id,
    )
    session.flush()
    result = match_pending(session, now=now)
    session.commit()
    return {"bundle": bundle.name, "statements": len(statements), "matching": result}
