"""Reliability analytics behind the API, computed from the fleet's own registry and
claims: Weibull with censoring, claims early warning per batch, rates, growth."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from fleet_server.db.models import Device, WarrantyClaim

TODAY = date(2026, 6, 1)


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _seed(sessions) -> None:  # type: ignore[no-untyped-def]
    """6 batches x 30 devices activated over 2025; lot-bad claims a fan on every third
    device after 2-5 months, the others on two devices each."""
    with sessions() as s, s.begin():
        n = 0
        for batch in ("lot-a", "lot-b", "lot-c", "lot-d", "lot-e", "lot-bad"):
            for i in range(30):
                n += 1
                start = date(2025, 1, 1) + timedelta(days=8 * i)
                d = Device(
                    device_id=f"pi-{batch}-{i}",
                    model="thermo-1",
                    batch=batch,
                    activation_date=start,
                    created_at=0.0,
                    software_version="1.0",
                )
                s.add(d)
                s.flush()
                fails = (batch == "lot-bad" and i % 3 == 0) or (batch != "lot-bad" and i in (7, 19))
                if fails:
                    s.add(
                        WarrantyClaim(
                            device_ref=d.device_id,
                            device_key=d.id,
                            failure_mode="fan_failure",
                            failure_date=start + timedelta(days=60 + 3 * i),
                            state="submitted",
                            checks=[],
                            evidence={},
                            created_at=0.0,
                            created_by="t",
                        )
                    )
        # A rejected claim is not a failure.
        s.add(
            WarrantyClaim(
                device_ref="pi-lot-a-1",
                device_key=None,
                failure_mode="fan_failure",
                failure_date=date(2026, 1, 1),
                state="rejected",
                checks=[],
                evidence={},
                created_at=0.0,
                created_by="t",
            )
        )


def test_analytics_endpoints_from_fleet_data(api, sessions) -> None:
    client, tokens, clock = api
    clock.now = datetime(2026, 6, 1, 12, tzinfo=UTC).timestamp()
    _seed(sessions)
    viewer = _h(tokens["viewer"])

    wb = client.get(
        "/api/v1/analytics/weibull", params={"failure_mode": "fan_failure"}, headers=viewer
    )
    assert wb.status_code == 200, wb.text
    body = wb.json()
    assert (body["units"], body["failures"], body["censored"]) == (180, 20, 160)
    assert body["fit"]["beta"] > 0
    assert body["fit"]["eta"] > 0

    ew = client.get("/api/v1/analytics/claims", params={"by": "batch"}, headers=viewer).json()
    assert ew["flagged"] == ["lot-bad"]
    assert ew["groups"][0]["group"] == "lot-bad"
    assert ew["groups"][0]["observed"] == 10

    rates = client.get(
        "/api/v1/analytics/rates", params={"by": "batch", "per": 1000}, headers=viewer
    ).json()
    by_group = {g["group"]: g for g in rates["groups"]}
    assert by_group["lot-bad"]["failures"] == 10
    assert by_group["lot-a"]["failures"] == 2
    assert by_group["lot-bad"]["rate"] > by_group["lot-a"]["upper"]

    growth = client.get(
        "/api/v1/analytics/growth", params={"failure_mode": "fan_failure"}, headers=viewer
    ).json()
    assert growth["n_failures"] == 20
    assert growth["beta"] > 0

    # Not enough data is a clear 422, a bad grouping too.
    none = client.get("/api/v1/analytics/weibull", params={"failure_mode": "psu"}, headers=viewer)
    assert none.status_code == 422
    assert none.json()["error"]["code"] == "insufficient_data"
    bad = client.get("/api/v1/analytics/rates", params={"by": "colour"}, headers=viewer)
    assert bad.status_code == 422
    assert "batch" in bad.json()["error"]["message"]
