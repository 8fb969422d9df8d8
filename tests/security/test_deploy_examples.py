"""The example broker configuration in deploy/mosquitto/ is exactly what the renderer
writes, so the documented files never drift from what the tests prove."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_server.identity.mosquitto_config import (
    BrokerSettings,
    render_acl,
    render_mosquitto_conf,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"

EXAMPLE_SETTINGS = BrokerSettings(
    cafile=Path("/var/lib/edgefleet/ca/ca-chain.pem"),
    crlfile=Path("/var/lib/edgefleet/ca/crl.pem"),
    certfile=Path("/etc/edgefleet/broker/server.crt"),
    keyfile=Path("/etc/edgefleet/broker/server.key"),
    acl_file=Path("/etc/mosquitto/edgefleet.acl"),
    port=8883,
    bind_address="0.0.0.0",
    services=("svc-ingest",),
)


@pytest.mark.parametrize(
    ("name", "render"),
    [
        ("edgefleet.conf", lambda: render_mosquitto_conf(EXAMPLE_SETTINGS)),
        ("edgefleet.acl", lambda: render_acl(EXAMPLE_SETTINGS.services)),
    ],
)
def test_example_matches_the_renderer(name, render) -> None:
    assert (DEPLOY / name).read_text() == render(), (
        f"deploy/mosquitto/{name} is stale: regenerate it with "
        "'fleet-server ca mosquitto-config' or the renderer"
    )
