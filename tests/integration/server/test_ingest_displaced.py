"""Another client takes the ingest's client id: the ingest notices, says so and recovers.

Issue 13, finding 6: a client connecting once with the ingest's client id took its session;
nothing was stored for minutes, no log line, ``/healthz`` still ok. On this harness broker
nothing reserves the id (the generated configuration does, with
``use_username_as_clientid``), and Mosquitto 2.0.11 closes the old connection without the
0x8E reason, so the ingest must infer it: reconnects that find the persistent session gone,
and unexpected disconnects in a row. Real Mosquitto, real uvicorn serving ``/readyz``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

import protocol as p
from fleet_server.api import create_app
from fleet_server.config import Settings
from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.db.models import ReceivedMessage
from fleet_server.migrations import upgrade_to_head
from fleet_server.runtime import broker_target, build_ingest
from fleet_server.services.audit import SYSTEM
from fleet_server.services.metrics import IngestMetrics
from fleet_server.services.registry import create_device
from tests.conftest import MosquittoBroker, wait_for
from tests.support.tuf_serving import asgi_server

pytestmark = pytest.mark.mosquitto

T0 = 1_700_000_000.0
CLIENT_ID = "fleet-ingest"
BROKER = """\
listener {port} 127.0.0.1
allow_anonymous true
sys_interval 1
"""


class Intruder:
    """Keeps connecting with the ingest's client id (clean start) until stopped."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.connects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=CLIENT_ID, protocol=mqtt.MQTTv5
            )
            gone = threading.Event()
            client.on_disconnect = lambda *_a, g=gone: g.set()
            try:
                client.connect(self.broker.host, self.broker.port, clean_start=True)
            except OSError:
                continue
            client.loop_start()
            self.connects += 1
            # Displaced in turn when the ingest reconnects; then take the id again.
            while not gone.wait(0.05) and not self._stop.is_set():
                pass
            client.loop_stop()
            client.disconnect()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def stack(mosquitto_factory: Any, tmp_path: Path) -> Iterator[tuple[Any, ...]]:
    broker = mosquitto_factory(BROKER)
    db = f"sqlite:///{tmp_path}/fleet.db"
    engine = create_db_engine(db)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    with sessions() as s:
        create_device(s, {"device_id": "pi-d"}, actor=SYSTEM, now=T0)
        s.commit()
    settings = Settings.model_validate(
        {
            "database": {"url": db},
            "mqtt": {"url": broker.url},
            "ingest": {"client_id": CLIENT_ID, "broker_sys_interval_s": 1, "stable_s": 2},
        }
    )
    metrics = IngestMetrics()
    worker = build_ingest(
        settings, sessions, broker_target(settings, start_embedded=False), metrics
    )
    worker.connect(timeout=15)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    try:
        with asgi_server(create_app(settings, sessions=sessions, metrics=metrics)) as url:
            yield broker, sessions, metrics, url
    finally:
        worker.stop()
        runner.join(timeout=30)
        engine.dispose()


def _ready(url: str) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{url}/readyz", timeout=5)
    return r.status_code, r.json()


def test_a_client_taking_the_ingest_id_is_detected_and_the_ingest_recovers(
    stack: tuple[Any, ...], caplog: pytest.LogCaptureFixture
) -> None:
    broker, sessions, metrics, url = stack
    wait_for(lambda: _ready(url)[0] == 200, timeout=10)
    health = httpx.get(f"{url}/healthz", timeout=5).json()
    assert health["status"] == "ok"
    assert health["ingest"]["ready"] is True
    assert health["ingest"]["connected"] is True

    def counter(name: str) -> float:
        return metrics.registry.get_sample_value(name) or 0.0

    not_ready: list[dict[str, Any]] = []
    with caplog.at_level(logging.ERROR):
        intruder = Intruder(broker)
        try:

            def displaced_and_seen() -> bool:
                code, body = _ready(url)
                if code == 503:
                    not_ready.append(body)
                return counter("fleet_ingest_displaced_total") >= 1 and bool(not_ready)

            wait_for(displaced_and_seen, timeout=30, interval=0.1)
        finally:
            intruder.stop()
        assert intruder.connects >= 3
        assert counter("fleet_ingest_session_lost_total") >= 1
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(
            f"session taken over by another client using id '{CLIENT_ID}'" in e for e in errors
        )
        assert any("no longer has its persistent session" in e for e in errors)
        reasons = " ".join(r for body in not_ready for r in body["reasons"])
        assert "flapping" in reasons or "persistent session" in reasons
        health = httpx.get(f"{url}/healthz", timeout=5).json()
        assert health["status"] == "degraded"
        assert health["ingest"]["ready"] is False

        # Recovered: ready again within 10 s, and what a device sends is stored.
        wait_for(lambda: _ready(url)[0] == 200, timeout=10, interval=0.1)
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pi-d", protocol=mqtt.MQTTv5)
    device.connect(broker.host, broker.port)
    device.loop_start()
    try:
        for seq in range(1, 21):
            msg = p.Telemetry(
                device_id="pi-d",
                boot_id="b1",
                seq=seq,
                ts=T0 + seq,
                samples=[p.Sample(ts=T0 + seq, cpu_pct=1.0)],
            )
            device.publish(p.topic("pi-d", p.Kind.TELEMETRY), p.encode(msg), qos=1)

        def stored() -> int:
            with sessions() as s:
                return int(
                    s.execute(select(func.count()).select_from(ReceivedMessage)).scalar_one()
                )

        wait_for(lambda: stored() == 20, timeout=15)
    finally:
        device.loop_stop()
        device.disconnect()
    assert _ready(url)[0] == 200
