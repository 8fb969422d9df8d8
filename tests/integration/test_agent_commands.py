"""Commands over a real Mosquitto: every command acknowledged, bad ones rejected with a
reason while the agent keeps running, diagnostics uploaded, reboots recorded."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.daemon import AgentDaemon
from protocol import (
    AckStatus,
    Boot,
    CollectDiagnostics,
    CommandAck,
    Reboot,
    RebootReason,
    RejectReason,
    Telemetry,
    encode,
    topic,
)
from tests.conftest import MosquittoBroker, wait_for
from tests.integration.agent_harness import CountingCollector, Receiver, RunningAgent, agent_config

pytestmark = pytest.mark.mosquitto
DEVICE = "pi-test-1"


@pytest.fixture
def receiver(mosquitto: MosquittoBroker) -> Iterator[Receiver]:
    rx = Receiver(mosquitto.host, mosquitto.port)
    wait_for(rx.subscribed.is_set, timeout=10)
    yield rx
    rx.close()


@pytest.fixture
def send(mosquitto: MosquittoBroker) -> Iterator[Callable[[bytes], None]]:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="test-operator", protocol=mqtt.MQTTv5
    )
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()

    def publish(payload: bytes) -> None:
        client.publish(topic(DEVICE, "command"), payload, qos=1).wait_for_publish(timeout=10)

    yield publish
    client.loop_stop()
    client.disconnect()


def command(cls: type, **fields: Any) -> bytes:
    now = time.time()
    base = {"device_id": DEVICE, "boot_id": "srv", "seq": 1, "ts": now, "expires_at": now + 300}
    return encode(cls(**{**base, **fields}))


def acks_for(receiver: Receiver, command_id: str) -> list[CommandAck]:
    return [a for a in receiver.of(CommandAck) if a.command_id == command_id]


def start_agent(
    mosquitto: MosquittoBroker, receiver: Receiver, tmp_path: Path, **overrides: Any
) -> RunningAgent:
    agent = RunningAgent(
        agent_config(mosquitto.url, tmp_path / "state", **overrides), CountingCollector()
    )
    wait_for(lambda: agent.daemon.transport.connected and receiver.of(Boot), timeout=15)
    return agent


def test_bad_commands_are_rejected_and_the_agent_keeps_running(
    mosquitto: MosquittoBroker, receiver: Receiver, send: Callable[[bytes], None], tmp_path: Path
) -> None:
    agent = start_agent(mosquitto, receiver, tmp_path)
    send(b"\x00 not json")
    send(b'{"v": "1.0", "kind": "reboot"}')
    send(msgspec.json.encode({"v": "1.0", "id": "k1", "kind": "format_disk"}))
    send(command(Reboot, id="late", expires_at=time.time() - 1))
    send(msgspec.json.encode({"v": "9.0", "id": "v9", "kind": "reboot"}))
    wait_for(
        lambda: (
            acks_for(receiver, "k1") and acks_for(receiver, "late") and acks_for(receiver, "v9")
        ),
        timeout=15,
    )
    assert acks_for(receiver, "k1")[0].reason is RejectReason.UNKNOWN_COMMAND
    assert acks_for(receiver, "late")[0].reason is RejectReason.EXPIRED
    assert acks_for(receiver, "v9")[0].reason is RejectReason.INVALID
    assert agent.daemon.core.intake.unreadable_total == 2
    # still sampling and publishing
    before = len(receiver.of(Telemetry))
    wait_for(lambda: len(receiver.of(Telemetry)) > before + 2, timeout=15)
    assert agent.thread.is_alive()
    agent.stop()


class _Upload(BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []
    status = 201

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(body)
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upload_server() -> Iterator[tuple[str, type[_Upload]]]:
    handler = type("Upload", (_Upload,), {"bodies": [], "status": 201})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/diagnostics", handler
    server.shutdown()
    server.server_close()


def test_collect_diagnostics_uploads_a_bundle_and_acks_its_digest(
    mosquitto: MosquittoBroker,
    receiver: Receiver,
    send: Callable[[bytes], None],
    tmp_path: Path,
    upload_server: tuple[str, type[_Upload]],
) -> None:
    url, handler = upload_server
    agent = start_agent(mosquitto, receiver, tmp_path)
    send(command(CollectDiagnostics, id="diag1", upload_url=url))

    def final_ack() -> list[CommandAck]:
        return [a for a in acks_for(receiver, "diag1") if a.status is not AckStatus.ACCEPTED]

    wait_for(final_ack, timeout=20)
    ack = final_ack()[0]
    assert ack.status is AckStatus.COMPLETED, ack.detail
    [body] = handler.bodies
    assert ack.result["sha256"] == hashlib.sha256(body).hexdigest()
    assert ack.result["size"] == len(body)
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        names = set(tar.getnames())
        config = tar.extractfile("diagnostics/config.json")
        assert config is not None
        assert b'"device_id": "pi-test-1"' in config.read()
    assert {
        "diagnostics/logs.txt",
        "diagnostics/vitals.json",
        "diagnostics/faults.json",
        "diagnostics/versions.json",
    } <= names

    handler.status = 503
    send(command(CollectDiagnostics, id="diag2", upload_url=url))
    wait_for(
        lambda: any(a.status is AckStatus.FAILED for a in acks_for(receiver, "diag2")), timeout=20
    )
    failed = next(a for a in acks_for(receiver, "diag2") if a.status is AckStatus.FAILED)
    assert "HTTP 503" in failed.detail
    agent.stop()


def test_reboot_runs_the_command_and_the_next_start_reports_it(
    mosquitto: MosquittoBroker, receiver: Receiver, send: Callable[[bytes], None], tmp_path: Path
) -> None:
    marker = tmp_path / "rebooted"
    agent = start_agent(mosquitto, receiver, tmp_path, reboot_command=["touch", str(marker)])
    send(command(Reboot, id="r1", reason="maintenance"))
    wait_for(
        lambda: (
            [a.status for a in acks_for(receiver, "r1")]
            == [AckStatus.ACCEPTED, AckStatus.COMPLETED]
        ),
        timeout=15,
    )
    assert marker.exists()
    send(command(Reboot, id="r1"))  # redelivered: not run twice
    agent.stop()
    assert len(acks_for(receiver, "r1")) == 2

    again = AgentDaemon(agent.daemon.config, collector=CountingCollector())
    assert again.reboot_reason is RebootReason.REMOTE_COMMAND
    again.shutdown()


def test_failed_reboot_command_is_acked_as_failed(
    mosquitto: MosquittoBroker, receiver: Receiver, send: Callable[[bytes], None], tmp_path: Path
) -> None:
    agent = start_agent(mosquitto, receiver, tmp_path, reboot_command=["false"])
    send(command(Reboot, id="r2"))
    wait_for(
        lambda: any(a.status is AckStatus.FAILED for a in acks_for(receiver, "r2")), timeout=15
    )
    agent.stop()
    again = AgentDaemon(agent.daemon.config, collector=CountingCollector())
    assert again.reboot_reason is RebootReason.AGENT_RESTART
    again.shutdown()
