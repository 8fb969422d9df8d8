"""The overview's "in quarantine" counter and the device list it links to follow the
quarantine rule (domain/quarantine): a failed install, boot or health check counts until
the operator clears the device; a timeout or a refusal never does."""

from __future__ import annotations

from fleet_server.db.models import Bundle, Device, Execution, RecallCampaign, RecallDevice
from fleet_server.services import fleet_views
from fleet_server.services.paging import PageParams
from fleet_server.services.registry import DeviceFilter

NOW = 1_790_000_000.0


def test_in_quarantine_and_open_recall_counters(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s, s.begin():
        bundle = Bundle(
            name="b-2.0.0.tar.gz",
            product="p",
            model="m",
            version="2.0.0",
            hardware_revisions=[],
            release_counter=1,
            channel="production",
            min_agent_version="0.1.0",
            sha256="0" * 64,
            size=1,
            manifest={},
            published_at=NOW,
            published_by="t",
        )
        s.add(bundle)
        # (device, failure class, cleared before the failure?, cleared after it?)
        cases = [
            ("q-install", "install", None),
            ("q-health", "health", NOW - 500),  # failed after the last clearing
            ("q-cleared", "boot", NOW + 10),  # cleared after the failure
            ("q-timeout", "timeout", None),
            ("q-none", None, None),
        ]
        for name, failure_class, cleared in cases:
            d = Device(device_id=name, model="m", created_at=0.0, quarantine_cleared_at=cleared)
            s.add(d)
            s.flush()
            if failure_class:
                s.add(
                    Execution(
                        id=f"ex-{name}",
                        device_key=d.id,
                        bundle_id=bundle.id,
                        status="failed",
                        phase="done",
                        phase_at=NOW,
                        failure_class=failure_class,
                        timeouts={},
                        created_at=NOW - 1000,
                        finished_at=NOW,
                        created_by="t",
                    )
                )
        # The recall counter: active members of open campaigns, each once.
        retired = Device(device_id="q-retired", model="m", created_at=0.0, status="decommissioned")
        s.add(retired)
        s.flush()
        for cid, state in (("rc-1", "open"), ("rc-2", "open"), ("rc-3", "closed")):
            s.add(
                RecallCampaign(
                    id=cid, title=cid, state=state, scope={}, created_at=NOW, created_by="t"
                )
            )
        s.flush()
        keys = {d.device_id: d.id for d in s.query(Device).all()}
        for cid, device_id in (
            ("rc-1", "q-install"),
            ("rc-2", "q-install"),
            ("rc-1", "q-none"),
            ("rc-1", "q-retired"),
            ("rc-3", "q-timeout"),
        ):
            s.add(
                RecallDevice(
                    campaign_id=cid,
                    device_key=keys[device_id],
                    state="notified",
                    matched=[],
                    added_at=NOW,
                    added_how="scope",
                    state_changed_at=NOW,
                    note="",
                )
            )
    with sessions() as s:
        recall = fleet_views.fleet_overview(s, NOW)["problems"]["under_open_recall"]
        assert recall["count"] == 2
        problem = fleet_views.fleet_overview(s, NOW)["problems"]["in_quarantine"]
        assert problem == {"count": 2, "query": "quarantine=yes"}
        query = fleet_views.DeviceQuery(DeviceFilter(), quarantined=True)
        page = fleet_views.device_page(s, query, PageParams(limit=50, offset=0))
        assert [d.device_id for d in page.items] == ["q-health", "q-install"]
