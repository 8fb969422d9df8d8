"""What runs on the fleet: every published bundle's components, and the software
inventory by the release each device has committed.

A device's release is the bundle of its model whose version it reports running
(``devices.software_version`` moves only when an update commits or rolls back, so a
device mid-update counts by what it runs); when several bundles share model and version,
the highest release counter is the release.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, func, select
from sqlalchemy.orm import Session

from firmware_bundles.manifest import Manifest
from fleet_server.db.models import Bundle, Device
from fleet_server.db.sbom_models import BundleComponent
from fleet_server.domain.osv import purl_key
from fleet_server.errors import InvalidInputError
from fleet_server.services.paging import Page, PageParams, fetch_page
from fleet_server.services.registry import get_device

INVENTORY_GROUPS = {
    "model": Device.model,
    "hw_revision": Device.hw_revision,
    "region": Device.region,
    "channel": Device.channel,
}
"""Device fields the inventory can be broken down by."""


def store_components(session: Session, bundle: Bundle, manifest: Manifest) -> int:
    """Record the bundle's components (once per bundle); returns how many."""
    if session.execute(
        select(BundleComponent.id).where(BundleComponent.bundle_id == bundle.id).limit(1)
    ).first():
        return 0
    rows = []
    for comp in manifest.sbom:
        key = purl_key(comp.purl) if comp.purl else None
        rows.append(
            {
                "bundle_id": bundle.id,
                "name": comp.name,
                "version": comp.version,
                "purl": comp.purl,
                "purl_type": key[0] if key else None,
                "package": key[1] if key else None,
                "licence": comp.licence,
                "supplier": comp.supplier,
                "hashes": dict(comp.hashes),
            }
        )
    if rows:
        session.execute(BundleComponent.__table__.insert(), rows)
    return len(rows)


def component_view(c: BundleComponent) -> dict[str, Any]:
    """A component as the API shows it."""
    return {
        "name": c.name,
        "version": c.version,
        "purl": c.purl,
        "licence": c.licence,
        "supplier": c.supplier,
        "hashes": c.hashes,
    }


def bundle_components(session: Session, bundle: Bundle, params: PageParams) -> Page[dict[str, Any]]:
    """One page of a bundle's components, by name."""
    query = (
        select(BundleComponent)
        .where(BundleComponent.bundle_id == bundle.id)
        .order_by(BundleComponent.name, BundleComponent.id)
    )
    return fetch_page(session, query, params, scalars=True).map(component_view)


def release_ids() -> Select[Any]:
    """(bundle id, model, version) of the release of each (model, version): the highest
    release counter."""
    ranked = select(
        Bundle.id,
        Bundle.model,
        Bundle.version,
        func.row_number()
        .over(partition_by=(Bundle.model, Bundle.version), order_by=Bundle.release_counter.desc())
        .label("rank"),
    ).subquery()
    return select(ranked.c.id, ranked.c.model, ranked.c.version).where(ranked.c.rank == 1)


def device_release(session: Session, device: Device) -> Bundle | None:
    """The published bundle the device runs (its committed release), if known."""
    if not device.model or not device.software_version:
        return None
    return session.execute(
        select(Bundle)
        .where(Bundle.model == device.model, Bundle.version == device.software_version)
        .order_by(Bundle.release_counter.desc())
        .limit(1)
    ).scalar_one_or_none()


def device_components(session: Session, device_id: str) -> dict[str, Any]:
    """The components of the release the device has committed."""
    device = get_device(session, device_id)
    bundle = device_release(session, device)
    out: dict[str, Any] = {
        "device_id": device.device_id,
        "software_version": device.software_version,
        "bundle": bundle.name if bundle else None,
        "components": [],
    }
    if bundle is not None:
        rows = session.execute(
            select(BundleComponent)
            .where(BundleComponent.bundle_id == bundle.id)
            .order_by(BundleComponent.name, BundleComponent.id)
        ).scalars()
        out["components"] = [component_view(c) for c in rows]
    return out


def inventory(
    session: Session,
    *,
    by: str | None = None,
    component: str | None = None,
    params: PageParams,
) -> Page[dict[str, Any]]:
    """Component@version -> active devices running it, optionally broken down by a
    device field (``model``, ``hw_revision``, ``region``, ``channel``) and filtered to a
    component name."""
    if by is not None and by not in INVENTORY_GROUPS:
        raise InvalidInputError("invalid_request", f"by: one of {', '.join(INVENTORY_GROUPS)}")
    rel = release_ids().subquery()
    group = INVENTORY_GROUPS[by] if by else None
    cols: list[Any] = [BundleComponent.name, BundleComponent.version, BundleComponent.purl]
    if group is not None:
        cols.append(group.label("group"))
    query = (
        select(*cols, func.count(func.distinct(Device.id)).label("devices"))
        .select_from(Device)
        .join(rel, and_(rel.c.model == Device.model, rel.c.version == Device.software_version))
        .join(BundleComponent, BundleComponent.bundle_id == rel.c.id)
        .where(Device.status == "active")
        .group_by(*cols)
        .order_by(func.count(func.distinct(Device.id)).desc(), *cols)
    )
    if component:
        query = query.where(BundleComponent.name == component)
    page = fetch_page(session, query, params)
    return page.map(
        lambda r: {
            "component": r.name,
            "version": r.version,
            "purl": r.purl,
            **({by: r.group} if by else {}),
            "devices": r.devices,
        }
    )
