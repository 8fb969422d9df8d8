"""A saved group is a saved view of the registry: the console's device list (and the
service behind it) narrows to a static group's members or a dynamic group's selector."""

from __future__ import annotations

import pytest

from fleet_server.errors import NotFoundError
from fleet_server.services import fleet_views, groups
from fleet_server.services.audit import SYSTEM
from fleet_server.services.paging import PageParams
from fleet_server.services.registry import DeviceFilter, create_device

NOW = 1_790_000_000.0


def test_device_list_narrowed_to_a_saved_group(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:  # the registry commits its own transactions
        for device_id, region in [("g-1", "eu"), ("g-2", "eu"), ("g-3", "us")]:
            create_device(s, {"device_id": device_id, "region": region}, actor=SYSTEM, now=NOW)
    with sessions() as s:  # create_group commits its own transaction
        groups.create_group(
            s, name="pair", kind="static", device_ids=["g-1", "g-3"], actor=SYSTEM, now=NOW
        )
        groups.create_group(
            s, name="europe", kind="dynamic", selector={"region": "eu"}, actor=SYSTEM, now=NOW
        )
    query = fleet_views.DeviceQuery(filt=DeviceFilter())
    params = PageParams(limit=50, offset=0)
    with sessions() as s:
        ids = {
            name: [d.device_id for d in fleet_views.device_page(s, query, params, name).items]
            for name in ("pair", "europe")
        }
        assert ids == {"pair": ["g-1", "g-3"], "europe": ["g-1", "g-2"]}
        assert fleet_views.device_page(s, query, params).total == 3
        with pytest.raises(NotFoundError, match="no device group"):
            fleet_views.device_page(s, query, params, "nope")
