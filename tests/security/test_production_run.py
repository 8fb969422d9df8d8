"""``fleet-server run`` in production mode with a complete secure configuration: HTTPS
API, ingest and command publisher on their own certificates through the mutual-TLS,
ACL'd Mosquitto, provisioning from the CA; a device's telemetry is stored."""

from __future__ import annotations

import getpass
import io
import json
import os
import signal
import ssl
import subprocess
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import protocol as p
from agent.credentials import read_bundle
from fleet_server.identity import ca_store
from fleet_server.identity.mosquitto_config import BrokerSettings, render_acl, render_mosquitto_conf
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.mosquitto

BIN = Path(sys.executable).parent
NOW = datetime.now(UTC).replace(microsecond=0)
SERVICES = ["svc-ingest-1", "svc-commands"]


def test_production_run_end_to_end(mosquitto_factory, tmp_path: Path) -> None:
    ca_store.init_root(tmp_path / "root", NOW)
    ca = ca_store.init_issuing(tmp_path / "root", tmp_path / "ca", NOW)
    ca.server_certificate(["127.0.0.1"], tmp_path / "broker", NOW)
    ca.server_certificate(["127.0.0.1"], tmp_path / "api", NOW)
    urls = {"mqtt_url": "mqtts://127.0.0.1:8883", "api_url": "https://127.0.0.1"}
    ca.service_credentials("svc-ingest-1", tmp_path / "ingest", NOW, **urls)
    ca.service_credentials("svc-commands", tmp_path / "commands", NOW, **urls)
    acl = tmp_path / "fleet.acl"
    acl.write_text(render_acl(SERVICES))
    broker = mosquitto_factory(
        render_mosquitto_conf(
            BrokerSettings(
                cafile=ca.chain_path,
                certfile=tmp_path / "broker/server.crt",
                keyfile=tmp_path / "broker/server.key",
                crlfile=ca.crl_path,
                acl_file=acl,
                port="{port}",
                user=getpass.getuser(),
                services=SERVICES,
                persistence_dir="{workdir}",
            )
        )
    )
    api_port = free_port()
    mqtt_url = f"mqtts://127.0.0.1:{broker.port}"
    cfg = tmp_path / "fleet-server.toml"
    cfg.write_text(
        f"""
[database]
url = "sqlite:///{tmp_path}/fleet.db"
[mqtt]
url = "{mqtt_url}"
[api]
port = {api_port}
base_url = "https://127.0.0.1:{api_port}"
[ingest]
client_id = "svc-ingest-1"
[security]
ca_dir = "{tmp_path}/ca"
device_mqtt_url = "{mqtt_url}"
[tls]
api_cert = "{tmp_path}/api/server.crt"
api_key = "{tmp_path}/api/server.key"
mqtt_ca = "{ca.chain_path}"
mqtt_cert = "{tmp_path}/ingest/device.crt"
mqtt_key = "{tmp_path}/ingest/device.key"
command_cert = "{tmp_path}/commands/device.crt"
command_key = "{tmp_path}/commands/device.key"
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    # production needs a TUF root of 2 of 3 keys kept offline (here: outside var/)
    keys = subprocess.run(
        [str(BIN / "fleet-server"), "keys", "create-root", "--out", str(tmp_path / "offline")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert keys.returncode == 0, keys.stderr
    init = subprocess.run(
        [
            str(BIN / "fleet-server"),
            "init",
            "--json",
            "--config",
            str(cfg),
            "--root-keys",
            str(tmp_path / "offline"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    headers = {"Authorization": f"Bearer {json.loads(init.stdout)['admin_token']}"}
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "fleet-server"), "run", "--config", str(cfg)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"https://127.0.0.1:{api_port}"
    trust = ssl.create_default_context(cafile=str(ca.chain_path))
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{api}/healthz", verify=trust, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=30)
        health = httpx.get(f"{api}/healthz", verify=trust, timeout=5).json()
        assert health["mode"] == "production"
        assert health["warning"] is None
        with httpx.Client(base_url=api, verify=trust, headers=headers, timeout=10) as client:
            assert client.post("/api/v1/devices", json={"device_id": "pi-p"}).status_code == 201
            bundle_tgz = client.post("/api/v1/devices/pi-p/provision")
            assert bundle_tgz.status_code == 200
            with tarfile.open(fileobj=io.BytesIO(bundle_tgz.content), mode="r:gz") as tar:
                tar.extractall(tmp_path / "device", filter="tar")
            bundle = read_bundle(tmp_path / "device/pi-p")
            assert bundle.mqtt_url == mqtt_url
            device = mqtt.Client(CallbackAPIVersion.VERSION2, "pi-p", protocol=mqtt.MQTTv5)
            device.tls_set(
                ca_certs=str(bundle.chain_path),
                certfile=str(bundle.cert_path),
                keyfile=str(bundle.key_path),
            )
            device.connect(broker.host, broker.port)
            device.loop_start()
            msg = p.Telemetry(
                device_id="pi-p",
                boot_id="b",
                seq=1,
                ts=NOW.timestamp(),
                samples=[p.Sample(ts=NOW.timestamp(), cpu_pct=3.0)],
            )
            device.publish(p.topic("pi-p", p.Kind.TELEMETRY), p.encode(msg), qos=1)

            def stored() -> bool:
                r = client.get("/api/v1/devices/pi-p/telemetry")
                return r.status_code == 200 and r.json()["total"] == 1

            wait_for(stored, timeout=30)
            # The command publisher's identity works too.
            sent = client.post("/api/v1/devices/pi-p/commands", json={"kind": "reboot"})
            assert sent.status_code == 202, sent.text
            device.loop_stop()
            device.disconnect()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
    output = (tmp_path / "run.log").read_text()
    assert code == 0, output
    assert "INSECURE" not in output
