"""``fleetctl webhooks``, ``fleetctl groups`` and ``fleetctl bulk`` as people run them,
against a live API server and a real webhook receiver on loopback."""

from __future__ import annotations

import json
from pathlib import Path

from fleet_server.domain import webhooks as rules
from tests.integration.server.test_clis import live, run  # noqa: F401  (fixture)
from tests.support.webhook_receiver import start_receiver


def _env(tmp_path: Path, url: str, token: str) -> dict[str, str]:
    return {"HOME": str(tmp_path), "FLEET_URL": url, "FLEET_TOKEN": token}


def test_fleetctl_webhooks(live, tmp_path: Path) -> None:  # noqa: F811
    server, tokens = live
    admin = _env(tmp_path, server.url, tokens["admin"])
    receiver = start_receiver()
    try:
        created = run(
            [
                "fleetctl",
                "webhooks",
                "create",
                "pager",
                "--url",
                receiver.url,
                "-e",
                "alarm.raised",
                "-e",
                "claim.filed",
                "--min-severity",
                "major",
                "--json",
            ],
            admin,
        )
        assert created.returncode == 0, created.stderr
        hook = json.loads(created.stdout)
        secret = hook["secret"]
        listed = run(["fleetctl", "webhooks", "list"], admin)
        assert "pager" in listed.stdout
        assert secret not in listed.stdout
        tested = run(["fleetctl", "webhooks", "test", str(hook["id"])], admin)
        assert tested.returncode == 0, tested.stderr
        assert "delivered (receiver answered 200)" in tested.stdout
        got = receiver.requests[-1]
        ts = got.headers[rules.TIMESTAMP_HEADER]
        assert rules.verify(secret, ts, got.headers[rules.SIGNATURE_HEADER], got.body, now=int(ts))
        log = run(["fleetctl", "webhooks", "deliveries", str(hook["id"]), "--json"], admin)
        assert json.loads(log.stdout)["items"][0]["event_type"] == "webhook.test"
        shown = run(["fleetctl", "webhooks", "show", str(hook["id"])], admin)
        assert "delivered 1" in shown.stdout
        receiver.always = 500
        failing = run(["fleetctl", "webhooks", "test", str(hook["id"])], admin)
        assert failing.returncode == 1
        assert "failed (receiver answered 500)" in failing.stdout
        deleted = run(["fleetctl", "webhooks", "delete", str(hook["id"]), "--yes"], admin)
        assert deleted.returncode == 0, deleted.stderr
    finally:
        receiver.stop()


def test_fleetctl_groups_and_bulk(live, tmp_path: Path) -> None:  # noqa: F811
    server, tokens = live
    ops = _env(tmp_path, server.url, tokens["operator"])
    csv = tmp_path / "factory.csv"
    csv.write_text("device_id,model,region\npi-1,m1,eu\npi-2,m1,eu\npi-3,m1,us\n")
    assert run(["fleetctl", "devices", "import", str(csv)], ops).returncode == 0

    dynamic = run(["fleetctl", "groups", "create", "eu", "--where", "region=eu"], ops)
    assert dynamic.returncode == 0, dynamic.stderr
    assert "group eu (dynamic): 2 device(s)" in dynamic.stdout
    static = run(["fleetctl", "groups", "create", "lab", "-d", "pi-1", "-d", "pi-3"], ops)
    assert "group lab (static): 2 device(s)" in static.stdout
    shown = run(["fleetctl", "groups", "show", "lab", "--json"], ops)
    assert [m["device_id"] for m in json.loads(shown.stdout)["members"]["items"]] == [
        "pi-1",
        "pi-3",
    ]
    assert "eu" in run(["fleetctl", "groups", "list"], ops).stdout

    # Without --yes the count is shown and the answer asked for; "n" changes nothing.
    declined = run(["fleetctl", "bulk", "tag", "trial", "--group", "eu"], ops, stdin="n\n")
    assert declined.returncode == 1
    assert "tag on 2 device(s): pi-1, pi-2" in declined.stdout
    accepted = run(["fleetctl", "bulk", "tag", "trial", "--group", "eu"], ops, stdin="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert "tag: 2/2 device(s)" in accepted.stdout
    owner = run(["fleetctl", "bulk", "set", "owner=acme", "-w", "tags=trial", "--yes"], ops)
    assert owner.returncode == 0, owner.stderr
    listed = run(["fleetctl", "devices", "list", "--owner", "acme", "--json"], ops)
    assert [d["device_id"] for d in json.loads(listed.stdout)["items"]] == ["pi-1", "pi-2"]
    audit = run(["fleetctl", "audit", "list", "--action", "bulk.", "--json"], ops)
    assert json.loads(audit.stdout)["total"] == 6  # 2 x (2 devices + 1 summary)
