"""``fleet-server run`` with no broker configured: the embedded MQTT 3.1.1 broker, ingest,
jobs and API in one process, stopped cleanly by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

import protocol as p
from tests.conftest import free_port, wait_for

BIN = Path(sys.executable).parent


def test_run_with_embedded_broker_ingests_and_stops_cleanly(tmp_path: Path) -> None:
    broker_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(
        FLEET_DATABASE_URL=f"sqlite:///{tmp_path}/fleet.db",
        FLEET_MQTT_EMBEDDED_PORT=str(broker_port),
        FLEET_API_PORT=str(api_port),
        FLEET_INGEST_AUTO_REGISTER="true",
        FLEET_UPDATES_REPO_DIR=str(tmp_path / "tuf"),
        FLEET_UPDATES_KEYS_DIR=str(tmp_path / "tuf-keys"),
    )
    init = subprocess.run(
        [str(BIN / "fleet-server"), "init", "--json"], env=env, capture_output=True, text=True
    )
    token = json.loads(init.stdout)["admin_token"]
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "fleet-server"), "run"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    api = f"http://127.0.0.1:{api_port}"
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{api}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=90)  # generous: a loaded CI machine starts slowly
        device = mqtt.Client(CallbackAPIVersion.VERSION2, "pi-e", protocol=mqtt.MQTTv311)
        device.connect("127.0.0.1", broker_port)
        device.loop_start()
        for seq in range(30):
            msg = p.Telemetry(
                device_id="pi-e",
                boot_id="b",
                seq=seq,
                ts=1.79e9 + seq,
                samples=[p.Sample(ts=1.79e9 + seq, cpu_pct=3.0)],
            )
            info = device.publish(p.topic("pi-e", p.Kind.TELEMETRY), p.encode(msg), qos=1)
            info.wait_for_publish(timeout=10)
        device.disconnect()
        device.loop_stop()
        headers = {"Authorization": f"Bearer {token}"}

        def stored() -> bool:
            r = httpx.get(f"{api}/api/v1/devices/pi-e/telemetry", headers=headers, timeout=5)
            return r.status_code == 200 and r.json()["total"] == 30

        wait_for(stored, timeout=60)
        metrics = httpx.get(f"{api}/metrics", timeout=5).text
        assert 'fleet_ingest_messages_total{kind="telemetry"} 30.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
    output = (tmp_path / "run.log").read_text()
    assert code == 0, output
    assert "flushing ingest" in output
