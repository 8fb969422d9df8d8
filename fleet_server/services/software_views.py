"""Software exposure as people read it in the console: a page of advisories with their
affected releases, exposed device counts and earliest fixes, and the device list
narrowed to the devices exposed to one advisory.

The numbers are the API's: the same :mod:`~fleet_server.services.advisories` functions
answer ``GET /api/v1/advisories/{id}`` and ``.../devices``; this module only batches them
for a page of advisories (one query for the releases and one for the counts of the whole
page) and adds the exposure condition to a device-list query.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import false
from sqlalchemy.orm import Session

from fleet_server.db.models import Device
from fleet_server.services import advisories
from fleet_server.services.fleet_views import DeviceQuery
from fleet_server.services.paging import Page, PageParams, fetch_page


def advisory_rows(
    session: Session, *, severity: str | None, exposed: bool, params: PageParams
) -> Page[dict[str, Any]]:
    """One page of advisories (most severe first), each with the exposed releases
    (``bundles``), the active devices running them (``exposed_devices``) and, per
    exposed model, the earliest fixing release (``earliest_fix``; None: no fix)."""
    page = advisories.list_advisories(session, severity=severity, exposed=exposed, params=params)
    ids = [a["id"] for a in page.items]
    releases = advisories.exposed_by_advisory(session, ids)
    counts = advisories.exposed_counts(session, ids)

    def view(a: dict[str, Any]) -> dict[str, Any]:
        rels = releases.get(a["id"], [])
        return {
            **a,
            "bundles": [r["bundle"] for r in rels],
            "exposed_devices": counts.get(a["id"], 0),
            "earliest_fix": advisories.earliest_fixes(session, a["id"]) if rels else {},
        }

    return page.map(view)


def exposed_device_page(
    session: Session, query: DeviceQuery, advisory_id: str, params: PageParams
) -> Page[Device]:
    """The device list of ``query`` narrowed to the active devices whose committed
    release is exposed to ``advisory_id`` (404 for an unknown advisory)."""
    advisories.get_advisory_row(session, advisory_id)
    exposed = advisories.exposed_query(session, advisory_id).whereclause
    statement = query.statement().where(false() if exposed is None else exposed)
    return fetch_page(session, statement, params, scalars=True)
