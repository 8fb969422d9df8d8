"""Software composition on the server: licence policy gates publishing and production,
notices, inventory by committed release, OSV exposure with VEX, matching job, remedy."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from firmware_bundles.build import BuiltBundle, build_bundle
from fleet_server.api import create_app
from fleet_server.db.models import AuditEntry, Bundle, Device
from fleet_server.db.rollout_models import Rollout
from fleet_server.db.sbom_models import BundleComponent
from fleet_server.errors import ConflictError, ForbiddenError
from fleet_server.services import advisories, advisory_remedy, deployments, licences, rollouts
from fleet_server.services import software as sw
from fleet_server.services.audit import SYSTEM, Actor
from fleet_server.services.bundles import publish_bundle
from fleet_server.services.registry import create_device
from fleet_server.updates.keys import create_root_keys
from fleet_server.updates.tuf_repository import TufRepository
from tests.server_fixtures import FakeClock, make_tokens, settings_for
from tests.support.sbom_docs import cyclonedx, openvex, osv

T0 = 1_790_000_000.0
ADMIN = Actor("alice", "admin")
OPERATOR = Actor("otto", "operator")


def _comp(name: str, version: str, licence: str, purl: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "library",
        "name": name,
        "version": version,
        "purl": purl,
        "licenses": [{"license": {"id": licence}}],
        **extra,
    }


BUSYBOX = _comp("busybox", "1.36.1", "GPL-2.0-only", "pkg:generic/busybox@1.36.1")
APP = _comp(
    "demo-app", "1", "Apache-2.0", "pkg:generic/demo-app@1", supplier={"name": "Acme <Corp> & Co"}
)


def _openssl(version: str) -> dict[str, Any]:
    return _comp("openssl", version, "Apache-2.0", f"pkg:deb/debian/openssl@{version}")


RELEASES = {
    "1.0.0": (1, [APP, BUSYBOX, _openssl("3.0.11-1")]),
    "1.1.0": (2, [APP, BUSYBOX, _openssl("3.0.13-1")]),
    "1.2.0": (3, [APP, _comp("gplv3-tool", "2.0", "GPL-3.0-only", "pkg:generic/gplv3-tool@2.0")]),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltBundle]:
    """One bundle per release, each with a CycloneDX SBOM next to its manifest."""
    out: dict[str, BuiltBundle] = {}
    for version, (counter, comps) in RELEASES.items():
        src = tmp_path_factory.mktemp(f"src-{version}")
        (src / "payload").mkdir()
        (src / "payload" / "app").write_bytes(version.encode())
        manifest = {
            "product": "acme",
            "model": "gw-1",
            "version": version,
            "hardware_revisions": ["rev-a", "rev-b"],
            "min_agent_version": "0.1.0",
            "release_counter": counter,
        }
        (src / "manifest.json").write_text(json.dumps(manifest))
        (src / "sbom.cdx.json").write_bytes(cyclonedx("1.5", comps))
        out[version] = build_bundle(src, tmp_path_factory.mktemp("out") / "b.tar.gz")
    return out


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    root = create_root_keys(tmp_path / "root", count=1, threshold=1)
    return TufRepository.create(tmp_path / "tuf", tmp_path / "keys", list(root.signers.values()), 1)


def _publish(s: Session, repo: TufRepository, b: BuiltBundle, now: float = T0) -> Bundle:
    row, _ = publish_bundle(s, repo, b.path, channel=None, actor=OPERATOR, now=now)
    s.commit()
    return row


def _device(s: Session, device_id: str, version: str | None, **fields: str) -> Device:
    d = create_device(
        s,
        {"device_id": device_id, "model": "gw-1", "hw_revision": "rev-a", **fields},
        actor=SYSTEM,
        now=T0,
    )
    d.software_version = version
    s.commit()
    return d


def _actions(s: Session) -> list[str]:
    return list(s.execute(select(AuditEntry.action).order_by(AuditEntry.id)).scalars())


def test_licence_policy_gates_publishing_and_production(
    sessions: sessionmaker[Session], repo: TufRepository, built: dict[str, BuiltBundle]
) -> None:
    with sessions() as s:
        licences.set_policy(
            s,
            "gw-1",
            {
                "allowed": ["Apache-2.0"],
                "denied": ["GPL-3.0-only"],
                "needs_review": ["GPL-2.0-only"],
            },
            actor=ADMIN,
            now=T0,
        )
        with pytest.raises(ConflictError) as refused:
            _publish(s, repo, built["1.2.0"])
        assert refused.value.code == "licence_denied"
        assert refused.value.details["denied"][0]["purl"] == "pkg:generic/gplv3-tool@2.0"
        s.rollback()
        assert s.execute(select(func.count()).select_from(Bundle)).scalar_one() == 0
        assert not list((repo.path / "targets").glob("*.tar.gz"))
        with pytest.raises(ForbiddenError):
            licences.add_waiver(
                s, "gw-1", "gplv3-tool@2.0", "internal only", actor=OPERATOR, now=T0
            )
        licences.add_waiver(s, "gw-1", "gplv3-tool@2.0", "tool never ships", actor=ADMIN, now=T0)
        waived = _publish(s, repo, built["1.2.0"])
        review = licences.get_review(s, waived)
        assert review["state"] == "not_required"
        assert review["evaluation"]["waived"][0]["reason"] == "tool never ships"

        bundle = _publish(s, repo, built["1.0.0"])
        review = licences.get_review(s, bundle)
        assert review["state"] == "pending"
        assert [c["name"] for c in review["evaluation"]["needs_review"]] == ["busybox"]
        assert "source_offer" in review["evaluation"]["obligations"]
        assert (
            s.execute(
                select(func.count()).where(BundleComponent.bundle_id == bundle.id)
            ).scalar_one()
            == 3
        )
        _device(s, "pi-1", "0.9.0")
        rollout = rollouts.create_rollout(
            s,
            name="prod",
            bundle=bundle,
            selector={"model": "gw-1"},
            policy=None,
            actor=ADMIN,
            now=T0,
        )
        s.commit()
        with pytest.raises(ConflictError) as gated:
            rollouts.start_rollout(s, rollout, actor=ADMIN, now=T0, force_reason="hotfix")
        assert gated.value.code == "licence_review_required"
        s.rollback()
        with pytest.raises(ForbiddenError):
            licences.decide_review(s, bundle, "approved", "ok", actor=OPERATOR, now=T0)
        licences.decide_review(
            s, bundle, "approved", "busybox: source offer in box", actor=ADMIN, now=T0
        )
        rollout = s.get(Rollout, rollout.id)
        assert rollout is not None
        rollouts.start_rollout(s, rollout, actor=ADMIN, now=T0, force_reason="hotfix")
        s.commit()
        actions = _actions(s)
        for action in ("licence.policy", "licence.waive", "licence.evaluate", "licence.review"):
            assert action in actions
        name, text = sw.notices(s, "1.0.0", None, "text")
        assert name == bundle.name
        assert "Acme <Corp> & Co" in text
        assert "busybox 1.36.1\n  licence: GPL-2.0-only" in text
        _name, page = sw.notices(s, "1.0.0", "gw-1", "html")
        assert "Acme &lt;Corp&gt; &amp; Co" in page
        assert "<Corp>" not in page


def _zip(files: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, doc in files.items():
            z.writestr(name, doc if isinstance(doc, str) else json.dumps(doc))
    return buf.getvalue()


OPENSSL_ADV = osv(
    "DSA-5000-1",
    {"ecosystem": "Debian:12", "name": "openssl"},
    [{"introduced": "0"}, {"fixed": "3.0.13-1"}],
    aliases=["CVE-2026-0001"],
)
BUSYBOX_ADV = osv(
    "GHSA-bbbb-0001",
    {"purl": "pkg:generic/busybox"},
    [{"introduced": "1.30.0"}, {"fixed": "1.37.0"}],
    vector="CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N",
)


def test_exposure_by_committed_release_vex_jobs_and_remedy(
    sessions: sessionmaker[Session],
    repo: TufRepository,
    built: dict[str, BuiltBundle],
    db_url: str,
) -> None:
    with sessions() as s:
        old = _publish(s, repo, built["1.0.0"])
        for i, region in ((1, "eu"), (2, "eu"), (3, "us")):
            _device(s, f"pi-{i}", "1.0.0", region=region)
        _device(s, "pi-new", "1.1.0", region="eu")
        moving = _device(s, "pi-moving", "1.0.0", region="us")
        result = sw.import_advisories(
            s,
            "osv.zip",
            _zip(
                {
                    "debian/DSA-5000-1.json": OPENSSL_ADV,
                    "ghsa/GHSA-bbbb-0001.json": BUSYBOX_ADV,
                    "broken.json": "{nope",
                    "noid.json": {"modified": "x"},
                }
            ),
            actor=OPERATOR,
            now=T0,
        )
        assert (result["imported"], len(result["rejected"])) == (2, 2)
        assert {r["file"] for r in result["rejected"]} == {"broken.json", "noid.json"}
        assert result["matching"]["events"] == 1  # openssl is critical and reaches devices
        again = sw.import_advisories(
            s, "osv.zip", _zip({"a.json": OPENSSL_ADV}), actor=OPERATOR, now=T0 + 1
        )
        assert again["unchanged"] == 1
        assert again["matching"]["events"] == 0

        # a new bundle: the jobs process matches it; it is the earliest fix of openssl
        detail = advisories.advisory_detail(s, "DSA-5000-1")
        assert detail["earliest_fix"] == {"gw-1": None}
        fixed = _publish(s, repo, built["1.1.0"], now=T0 + 10)
        # pi-moving is mid-update to the fix: it still runs (and counts as) 1.0.0
        deployments.create_execution(s, moving, fixed, actor=OPERATOR, now=T0 + 11)
        s.commit()
        assert advisories.match_pending(s, now=T0 + 20)["bundles"] == 1
        detail = advisories.advisory_detail(s, "DSA-5000-1")
        assert detail["severity"] == "critical"
        assert [b["bundle"] for b in detail["affected_bundles"]] == [old.name]
        assert detail["affected_bundles"][0]["fixed_in"] == "3.0.13-1"
        assert detail["exposed_devices"] == 4
        assert detail["earliest_fix"]["gw-1"]["bundle"] == fixed.name
        busybox = advisories.advisory_detail(s, "GHSA-bbbb-0001")
        assert busybox["exposed_devices"] == 5
        assert busybox["earliest_fix"] == {"gw-1": None}

        remedy = advisory_remedy.start_remedy(
            s, "DSA-5000-1", model=None, policy=None, start=False, actor=OPERATOR, now=T0 + 30
        )
        assert remedy["kind"] == "rollout"
        rollout = s.get(Rollout, remedy["rollout_id"])
        assert rollout is not None
        assert sorted(rollout.selector["device_ids"]) == ["pi-1", "pi-2", "pi-3", "pi-moving"]
        recall = advisory_remedy.start_remedy(
            s,
            "GHSA-bbbb-0001",
            model="gw-1",
            policy=None,
            start=False,
            actor=OPERATOR,
            now=T0 + 31,
        )
        assert (recall["kind"], recall["devices"]) == ("recall", 5)

        vex = openvex(
            "GHSA-bbbb-0001",
            "pkg:generic/busybox",
            "not_affected",
            "vulnerable_code_not_in_execute_path",
        )
        for bundle in (old, fixed):
            sw.add_vex(s, bundle.name, vex, actor=OPERATOR, now=T0 + 40)
        busybox = advisories.advisory_detail(s, "GHSA-bbbb-0001")
        assert busybox["exposed_devices"] == 0
        assert {b["status"] for b in busybox["affected_bundles"]} == {"not_affected"}
        assert busybox["affected_bundles"][0]["justification"] == (
            "vulnerable_code_not_in_execute_path"
        )
        actions = _actions(s)
        for action in ("advisory.import", "advisory.remedy", "advisory.vex", "bundle.publish"):
            assert action in actions

    clock = FakeClock(T0 + 50)
    app = create_app(settings_for(db_url), sessions=sessions, clock=clock)
    tokens = make_tokens(sessions)
    hdr = {"Authorization": f"Bearer {tokens['viewer']}"}
    with TestClient(app) as client:
        inv = client.get("/api/v1/inventory", params={"component": "openssl"}, headers=hdr)
        assert inv.status_code == 200, inv.text
        assert {(r["version"], r["devices"]) for r in inv.json()["items"]} == {
            ("3.0.11-1", 4),
            ("3.0.13-1", 1),
        }
        by_region = client.get(
            "/api/v1/inventory", params={"by": "region", "component": "openssl"}, headers=hdr
        ).json()["items"]
        assert {
            "component": "openssl",
            "version": "3.0.11-1",
            "purl": "pkg:deb/debian/openssl@3.0.11-1",
            "region": "us",
            "devices": 2,
        } in by_region
        comps = client.get("/api/v1/devices/pi-moving/components", headers=hdr).json()
        assert comps["bundle"] == old.name
        assert {c["name"] for c in comps["components"]} == {"demo-app", "busybox", "openssl"}
        exposed = client.get("/api/v1/advisories/DSA-5000-1/devices", headers=hdr).json()
        assert exposed["total"] == 4
        events = client.get("/api/v1/advisories/events", headers=hdr).json()["items"]
        assert [(e["advisory"], e["exposed_devices"]) for e in events] == [("DSA-5000-1", 4)]
        listed = client.get("/api/v1/advisories", params={"exposed": True}, headers=hdr).json()
        assert [a["id"] for a in listed["items"]] == ["DSA-5000-1"]
        html = client.get("/api/v1/releases/1.0.0/notices", params={"format": "html"}, headers=hdr)
        assert html.headers["content-type"].startswith("text/html")
        comps = client.get(f"/api/v1/bundles/{old.name}/components", headers=hdr).json()
        assert comps["items"][0]["purl"]
