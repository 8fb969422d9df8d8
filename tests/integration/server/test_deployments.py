"""Deployments end to end: publish a bundle through the API, ask a device to install it,
follow the device's reports through a real Mosquitto and the real ingest, time out a silent
device, refuse reports on executions that are not the device's, and serve the TUF
repository to a stock ``tuf.ngclient`` client from the running API."""

from __future__ import annotations

import gzip
import io
import itertools
import json
import os
import queue
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

import protocol as p
from firmware_bundles.build import BuiltBundle
from firmware_bundles.examples import build_examples
from fleet_server.adapters.mqtt_ingest import IngestOptions, IngestWorker, wait_connected
from fleet_server.adapters.mqtt_publisher import PahoPublisher
from fleet_server.api import create_app
from fleet_server.db.models import AuditEntry, Bundle, Device, DeviceEvent, Execution
from fleet_server.fleetctl.client import EXIT_FORBIDDEN, EXIT_INVALID
from fleet_server.services import deployments
from fleet_server.services.audit import SYSTEM
from fleet_server.services.bundles import publish_bundle
from fleet_server.services.ingest import BatchWriter, Inbound
from fleet_server.services.jobs import Scheduler
from fleet_server.services.metrics import IngestMetrics
from fleet_server.services.registry import create_device
from fleet_server.updates.keys import create_root_keys
from fleet_server.updates.tuf_repository import TufRepository, root_bytes
from tests.conftest import wait_for
from tests.server_fixtures import make_tokens, serve, settings_for
from tests.support.tuf_serving import stock_updater

T0 = 1_790_000_000.0


# -- fixtures ------------------------------------------------------------------------------


@dataclass
class UpdateWorld:
    """A TUF repository (2-of-3 offline root), example bundles and matching settings."""

    tmp: Path
    repo_dir: Path
    keys_dir: Path
    bundles: dict[str, BuiltBundle]

    def settings(self, db_url: str, **sections: dict[str, Any]) -> Any:
        return settings_for(
            db_url,
            updates={"repo_dir": str(self.repo_dir), "keys_dir": str(self.keys_dir)},
            **sections,
        )

    def repo(self) -> TufRepository:
        return TufRepository(self.repo_dir, self.keys_dir)


@pytest.fixture(scope="module")
def built_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltBundle]:
    """The example bundles, built once for the module."""
    out = tmp_path_factory.mktemp("bundles")
    return build_examples(out, ("good-1.1.0", "good-1.2.0", "wrong-hardware"))


@pytest.fixture
def world(tmp_path: Path, built_bundles: dict[str, BuiltBundle]) -> UpdateWorld:
    root = create_root_keys(tmp_path / "offline-root", count=3, threshold=2)
    TufRepository.create(
        tmp_path / "tuf", tmp_path / "tuf-keys", list(root.signers.values())[:2], threshold=2
    )
    return UpdateWorld(tmp_path, tmp_path / "tuf", tmp_path / "tuf-keys", built_bundles)


def _register(sessions: sessionmaker[Session], device_id: str, hw: str = "rev-a") -> None:
    with sessions() as s:
        create_device(
            s,
            {"device_id": device_id, "model": "gw-100", "hw_revision": hw},
            actor=SYSTEM,
            now=T0,
        )
        s.commit()


@pytest.fixture
def ingest(mosquitto, sessions) -> Iterator[tuple[IngestWorker, IngestMetrics]]:
    """The real ingest (MQTT 5 shared subscription) on the private broker."""
    metrics = IngestMetrics()
    worker = IngestWorker(
        BatchWriter(sessions, metrics=metrics),
        IngestOptions(mosquitto.host, mosquitto.port, client_id="ingest-deploy"),
    )
    worker.connect(timeout=10)
    assert wait_connected(worker, 10)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    yield worker, metrics
    worker.stop()
    thread.join(timeout=10)


class EmulatedDevice:
    """A device on the wire: receives its ``Install`` commands and reports update states
    for them, the way the agent's update flow does."""

    def __init__(self, broker: Any, device_id: str) -> None:
        self.device_id = device_id
        self.seq = itertools.count(1)
        self.installs: queue.Queue[p.Install] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(p.topic(device_id, p.Kind.COMMAND), qos=1)
        assert subscribed.wait(10)

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        command = p.decode(message.topic, message.payload)
        if isinstance(command, p.Install):
            self.installs.put(command)

    def next_install(self) -> p.Install:
        return self.installs.get(timeout=10)

    def report(
        self,
        install: p.Install | None,
        state: str,
        *,
        execution_id: str | None = None,
        failure_class: str | None = None,
        reason: str = "",
        attack: str | None = None,
        version: str | None = None,
    ) -> None:
        seq = next(self.seq)
        event = p.UpdateStateChanged(
            device_id=self.device_id,
            boot_id="boot-1",
            seq=seq,
            ts=T0 + seq,
            execution_id=execution_id or (install.execution_id if install else None),
            version=version or (install.version if install else "1.1.0"),
            state=p.UpdateState(state),
            failure_class=p.FailureClass(failure_class) if failure_class else None,
            reason=reason,
            attack=attack,
        )
        info = self.client.publish(p.topic(self.device_id, p.Kind.EVENT), p.encode(event), qos=1)
        info.wait_for_publish(timeout=10)

    def reject(self, install: p.Install) -> None:
        """Answer the command as an agent with updates disabled does."""
        detail = "updates are not enabled on this agent"
        self.answer(install, "rejected", detail, reason=p.RejectReason.UNKNOWN_COMMAND)

    def answer(
        self,
        install: p.Install,
        status: str,
        detail: str,
        reason: p.RejectReason | None = None,
        **result: Any,
    ) -> None:
        """Acknowledge the command with ``status`` (accepted, rejected, failed...)."""
        seq = next(self.seq)
        ack = p.CommandAck(
            device_id=self.device_id,
            boot_id="boot-1",
            seq=seq,
            ts=T0 + seq,
            command_id=install.id,
            status=p.AckStatus(status),
            reason=reason,
            detail=detail,
            result=result,
        )
        info = self.client.publish(p.topic(self.device_id, p.Kind.EVENT), p.encode(ack), qos=1)
        info.wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def deploy_api(mosquitto, sessions, db_url, world) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The API with a publisher on the private broker and the test's TUF repository."""
    publisher = PahoPublisher(mosquitto.host, mosquitto.port)
    assert publisher.wait_connected(10)
    app = create_app(world.settings(db_url), sessions=sessions, publisher=publisher)
    tokens = make_tokens(sessions)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, tokens
    finally:
        publisher.close()


def _hdr(tokens: dict[str, str], role: str = "operator") -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[role]}"}


def _execution(sessions: sessionmaker[Session], execution_id: str) -> dict[str, Any]:
    with sessions() as s:
        return deployments.execution_view(s.get(Execution, execution_id))


def _upload(client: TestClient, tokens: dict[str, str], bundle: BuiltBundle, **params: str) -> Any:
    return client.post(
        "/api/v1/bundles",
        content=bundle.path.read_bytes(),
        params=params,
        headers={**_hdr(tokens), "Content-Type": "application/octet-stream"},
    )


# -- through MQTT --------------------------------------------------------------------------


@pytest.mark.mosquitto
def test_execution_commits_only_when_the_device_reports_committed(
    mosquitto, ingest, sessions, deploy_api, world
) -> None:
    client, tokens = deploy_api
    _register(sessions, "pi-ok")
    up = _upload(client, tokens, world.bundles["good-1.1.0"], channel="beta")
    assert up.status_code == 201, up.text
    name = up.json()["name"]
    assert up.json()["channel"] == "beta"
    device = EmulatedDevice(mosquitto, "pi-ok")
    try:
        r = client.post("/api/v1/devices/pi-ok/update", json={"bundle": name}, headers=_hdr(tokens))
        assert r.status_code == 202, r.text
        ex_id = r.json()["id"]
        assert r.json()["status"] == "sent"
        install = device.next_install()
        assert (install.execution_id, install.target, install.version) == (ex_id, name, "1.1.0")
        # Every step short of committed leaves it in progress, whatever the order.
        for state in ("downloading", "verified", "installing", "installed", "rebooting"):
            device.report(install, state)
        device.report(install, "trial")
        wait_for(lambda: _execution(sessions, ex_id)["phase"] == "trial", timeout=15)
        assert _execution(sessions, ex_id)["status"] == "in_progress"
        device.report(install, "committed")
        wait_for(lambda: _execution(sessions, ex_id)["status"] == "committed", timeout=15)
        shown = client.get(f"/api/v1/executions/{ex_id}", headers=_hdr(tokens, "viewer")).json()
        assert shown["finished_at"] is not None
        assert [e["state"] for e in shown["events"]] == [
            "sent",
            "downloading",
            "verified",
            "installing",
            "installed",
            "rebooting",
            "trial",
            "committed",
        ]
        assert (
            client.get("/api/v1/devices/pi-ok", headers=_hdr(tokens)).json()["software_version"]
            == "1.1.0"
        )
        listed = client.get(
            "/api/v1/executions", params={"device": "pi-ok"}, headers=_hdr(tokens, "viewer")
        ).json()
        assert [e["id"] for e in listed["items"]] == [ex_id]
        assert listed["items"][0]["status"] == "committed"
        # The device is free again for the next release.
        nxt = _upload(client, tokens, world.bundles["good-1.2.0"]).json()["name"]
        again = client.post(
            "/api/v1/devices/pi-ok/update", json={"bundle": nxt}, headers=_hdr(tokens)
        )
        assert again.status_code == 202, again.text
    finally:
        device.close()


@pytest.mark.mosquitto
def test_reported_failures_and_attacks_fail_the_execution_with_their_class(
    mosquitto, ingest, sessions, deploy_api, world
) -> None:
    client, tokens = deploy_api
    name = _upload(client, tokens, world.bundles["good-1.1.0"]).json()["name"]
    for device_id in ("pi-health", "pi-attack", "pi-old"):
        _register(sessions, device_id)
    health = EmulatedDevice(mosquitto, "pi-health")
    attacked = EmulatedDevice(mosquitto, "pi-attack")
    old = EmulatedDevice(mosquitto, "pi-old")
    try:
        # An agent without updates refuses the command: failed at once, not at the timeout.
        ex0 = client.post(
            "/api/v1/devices/pi-old/update", json={"bundle": name}, headers=_hdr(tokens)
        ).json()["id"]
        old.reject(old.next_install())
        wait_for(lambda: _execution(sessions, ex0)["status"] == "failed", timeout=15)
        refused = _execution(sessions, ex0)
        assert "rejected the install command" in refused["reason"]
        assert "updates are not enabled" in refused["reason"]
        assert refused["failure_class"] is None
        ex1 = client.post(
            "/api/v1/devices/pi-health/update", json={"bundle": name}, headers=_hdr(tokens)
        ).json()["id"]
        ex2 = client.post(
            "/api/v1/devices/pi-attack/update", json={"bundle": name}, headers=_hdr(tokens)
        ).json()["id"]
        first = health.next_install()
        health.report(first, "trial")
        health.report(first, "rolled_back", failure_class="health", reason="demo-app exited with 3")
        second = attacked.next_install()
        attacked.report(second, "downloading")
        attacked.report(
            second,
            "failed",
            failure_class="security",
            reason="target hash mismatch",
            attack="tampered_target",
        )
        wait_for(lambda: _execution(sessions, ex1)["status"] == "failed", timeout=15)
        wait_for(lambda: _execution(sessions, ex2)["status"] == "failed", timeout=15)
        one, two = _execution(sessions, ex1), _execution(sessions, ex2)
        assert (one["failure_class"], one["reason"], one["phase"]) == (
            "health",
            "demo-app exited with 3",
            "rolled_back",
        )
        assert (two["failure_class"], two["attack"]) == ("security", "tampered_target")
        failed = client.get(
            "/api/v1/executions", params={"status": "failed"}, headers=_hdr(tokens, "viewer")
        ).json()
        assert {e["id"] for e in failed["items"]} == {ex0, ex1, ex2}
        with sessions() as s:  # a failed update leaves the reported version alone
            assert (
                s.execute(
                    select(Device.software_version).where(Device.device_id == "pi-health")
                ).scalar_one()
                is None
            )
    finally:
        health.close()
        attacked.close()
        old.close()


@pytest.mark.mosquitto
def test_an_accepted_install_the_agent_never_started_fails_at_once(
    mosquitto, ingest, sessions, deploy_api, world
) -> None:
    """An agent that accepted an install while its last update wound down, then stopped
    or restarted before starting it, answers ``failed`` with ``started`` false: the
    execution fails then, not at its accept timeout. A failed ack without it changes
    nothing of its execution (its state events tell the outcome)."""
    client, tokens = deploy_api
    name = _upload(client, tokens, world.bundles["good-1.1.0"]).json()["name"]
    for device_id in ("pi-restarted", "pi-ran"):
        _register(sessions, device_id)
    restarted = EmulatedDevice(mosquitto, "pi-restarted")
    ran = EmulatedDevice(mosquitto, "pi-ran")
    try:
        ids = [
            client.post(
                f"/api/v1/devices/{d}/update", json={"bundle": name}, headers=_hdr(tokens)
            ).json()["id"]
            for d in ("pi-restarted", "pi-ran")
        ]
        lost = restarted.next_install()
        restarted.answer(lost, "accepted", "")
        why = "the agent restarted before it could start"
        restarted.answer(lost, "failed", why, started=False)
        wait_for(lambda: _execution(sessions, ids[0])["status"] == "failed", timeout=15)
        execution = _execution(sessions, ids[0])
        assert (
            execution["reason"]
            == f"the device accepted the install command but never started it: {why}"
        )
        assert execution["failure_class"] is None
        done = ran.next_install()
        ran.answer(done, "accepted", "")
        ran.answer(done, "failed", "some other failure")  # no "started": false
        ran.report(done, "downloading")
        wait_for(lambda: _execution(sessions, ids[1])["phase"] == "downloading", timeout=15)
        assert _execution(sessions, ids[1])["status"] == "in_progress"
        ran.report(done, "failed", failure_class="download", reason="mirror unreachable")
        ran.answer(done, "failed", "failed: mirror unreachable")
        wait_for(lambda: _execution(sessions, ids[1])["status"] == "failed", timeout=15)
        assert _execution(sessions, ids[1])["failure_class"] == "download"
    finally:
        restarted.close()
        ran.close()


@pytest.mark.mosquitto
def test_reports_on_unknown_or_foreign_executions_are_refused_and_counted(
    mosquitto, ingest, sessions, deploy_api, world
) -> None:
    client, tokens = deploy_api
    _worker, metrics = ingest
    name = _upload(client, tokens, world.bundles["good-1.1.0"]).json()["name"]
    _register(sessions, "pi-owner")
    _register(sessions, "pi-other")
    owner = EmulatedDevice(mosquitto, "pi-owner")
    other = EmulatedDevice(mosquitto, "pi-other")
    try:
        ex_id = client.post(
            "/api/v1/devices/pi-owner/update", json={"bundle": name}, headers=_hdr(tokens)
        ).json()["id"]
        owner.next_install()
        other.report(None, "committed", execution_id=ex_id)  # another device's execution
        other.report(None, "committed", execution_id="ex-made-up")  # no such execution
        other.report(None, "downloading")  # names no execution: an update it started itself

        def refused() -> float:
            return metrics.rejected.labels(reason="unknown_execution")._value.get()

        wait_for(lambda: refused() == 2, timeout=15)
        wait_for(lambda: _update_events(sessions, "pi-other") == 1, timeout=15)
        shown = _execution(sessions, ex_id)
        assert shown["status"] == "sent"  # never applied
        with sessions() as s:
            assert (
                s.execute(
                    select(Device.software_version).where(Device.device_id == "pi-other")
                ).scalar_one()
                is None
            )
        assert [
            e["state"]
            for e in client.get(f"/api/v1/executions/{ex_id}", headers=_hdr(tokens)).json()[
                "events"
            ]
        ] == ["sent"]
    finally:
        owner.close()
        other.close()


def _set_version(sessions: sessionmaker[Session], device_id: str, version: str) -> None:
    """What the device's Boot events would have recorded."""
    with sessions() as s:
        s.execute(
            update(Device).where(Device.device_id == device_id).values(software_version=version)
        )
        s.commit()


@pytest.mark.mosquitto
def test_repeated_reports_are_applied_once_and_a_rollback_restores_the_version(
    mosquitto, ingest, sessions, deploy_api, world
) -> None:
    """After a restart the agent may report a state (or its outcome) again, from a new
    boot: the server keeps one history entry per ``(execution_id, state)``. A rollback
    puts the device's software version back to the one it ran before the execution."""
    client, tokens = deploy_api
    name = _upload(client, tokens, world.bundles["good-1.1.0"]).json()["name"]
    _register(sessions, "pi-again")
    _set_version(sessions, "pi-again", "1.0.0")
    device = EmulatedDevice(mosquitto, "pi-again")
    try:
        ex_id = client.post(
            "/api/v1/devices/pi-again/update", json={"bundle": name}, headers=_hdr(tokens)
        ).json()["id"]
        install = device.next_install()
        for state in ("downloading", "downloading", "verified", "trial", "trial"):
            device.report(install, state)
        wait_for(lambda: _execution(sessions, ex_id)["phase"] == "trial", timeout=15)
        _set_version(sessions, "pi-again", "1.1.0")  # the trial boot named the new slot
        for _ in range(2):
            device.report(install, "rolled_back", failure_class="boot", reason="crashed")
        device.report(install, "downloading")  # a stale repeat after the end
        wait_for(lambda: _execution(sessions, ex_id)["status"] == "failed", timeout=15)
        wait_for(lambda: _update_events(sessions, "pi-again") == 8, timeout=15)
        shown = client.get(f"/api/v1/executions/{ex_id}", headers=_hdr(tokens)).json()
        assert [e["state"] for e in shown["events"]] == [
            "sent",
            "downloading",
            "verified",
            "trial",
            "rolled_back",
        ]
        assert (shown["failure_class"], shown["phase"]) == ("boot", "rolled_back")
        assert (
            client.get("/api/v1/devices/pi-again", headers=_hdr(tokens)).json()["software_version"]
            == "1.0.0"
        )
    finally:
        device.close()


def _update_events(sessions: sessionmaker[Session], device_id: str) -> int:
    with sessions() as s:
        return int(
            s.execute(
                select(func.count())
                .select_from(DeviceEvent)
                .join(Device, Device.id == DeviceEvent.device_key)
                .where(Device.device_id == device_id, DeviceEvent.kind == "update_state")
            ).scalar_one()
        )


@pytest.mark.mosquitto
def test_silent_devices_time_out_per_phase_and_late_reports_do_not_resurrect(
    mosquitto, sessions, world
) -> None:
    publisher = PahoPublisher(mosquitto.host, mosquitto.port)
    assert publisher.wait_connected(10)
    for device_id in ("pi-quiet", "pi-stuck"):
        _register(sessions, device_id)
    timeouts = {"accept_s": 60, "download_s": 300, "install_s": 120, "reboot_s": 90}
    try:
        with sessions() as s:
            bundle, _ = publish_bundle(
                s,
                world.repo(),
                world.bundles["good-1.1.0"].path,
                channel=None,
                actor=SYSTEM,
                now=T0,
            )
            s.commit()
            devices = {d.device_id: d for d in s.execute(select(Device)).scalars() if d.device_id}
            quiet = deployments.create_execution(
                s, devices["pi-quiet"], bundle, actor=SYSTEM, now=T0, timeouts=timeouts
            )
            stuck = deployments.create_execution(
                s, devices["pi-stuck"], bundle, actor=SYSTEM, now=T0, timeouts=timeouts
            )
            s.commit()
            for ex in (quiet, stuck):
                deployments.dispatch(s, publisher, ex, now=T0, ttl_s=60)
            quiet_id, stuck_id = quiet.id, stuck.id
            report = p.UpdateStateChanged(
                device_id="pi-stuck",
                boot_id="b",
                seq=1,
                ts=T0 + 10,
                execution_id=stuck_id,
                version="1.1.0",
                state=p.UpdateState.DOWNLOADING,
            )
            deployments.apply_update_report(s, devices["pi-stuck"], report, now=T0 + 10)
            s.commit()
            # Within every limit: nothing expires.
            assert deployments.expire_silent(s, now=T0 + 60) == []
            # Past accept_s only the one that never answered expires.
            gone = deployments.expire_silent(s, now=T0 + 61)
            assert [e.id for e in gone] == [quiet_id]
            s.commit()
            assert deployments.expire_silent(s, now=T0 + 10 + 300) == []
        # The scheduler's job does the same for the downloading one.
        scheduler = Scheduler(sessions, world.settings("sqlite://"), lambda: T0 + 311)
        job = next(j for j in scheduler.jobs if j.name == "execution-expiry")
        assert job.fn(sessions, scheduler.settings, T0 + 311) == [stuck_id]
        q, st = _execution(sessions, quiet_id), _execution(sessions, stuck_id)
        assert (q["status"], q["failure_class"]) == ("failed", "timeout")
        assert "phase sent" in q["reason"]
        assert "accept_s" in q["reason"]
        assert (st["status"], st["failure_class"]) == ("failed", "timeout")
        assert "phase downloading" in st["reason"]
        assert "301 s" in st["reason"]
        # A report arriving after the timeout is kept in the history, status unchanged.
        with sessions() as s:
            dev = s.execute(select(Device).where(Device.device_id == "pi-quiet")).scalar_one()
            late = p.UpdateStateChanged(
                device_id="pi-quiet",
                boot_id="b",
                seq=2,
                ts=T0 + 400,
                execution_id=quiet_id,
                version="1.1.0",
                state=p.UpdateState.COMMITTED,
            )
            deployments.apply_update_report(s, dev, late, now=T0 + 400)
            s.commit()
            events = deployments.execution_events(s, s.get(Execution, quiet_id))
        assert _execution(sessions, quiet_id)["status"] == "failed"
        assert events[-1]["state"] == "committed"
    finally:
        publisher.close()


@pytest.mark.mosquitto
def test_refusals_incompatible_busy_decommissioned_and_cancel(sessions, deploy_api, world) -> None:
    client, tokens = deploy_api
    _register(sessions, "pi-a")
    _register(sessions, "pi-z", hw="rev-z")
    good = _upload(client, tokens, world.bundles["good-1.1.0"]).json()["name"]
    wrong = _upload(client, tokens, world.bundles["wrong-hardware"]).json()["name"]
    r = client.post("/api/v1/devices/pi-a/update", json={"bundle": wrong}, headers=_hdr(tokens))
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "incompatible"
    assert "rev-z" in r.json()["error"]["message"]
    r = client.post("/api/v1/devices/pi-z/update", json={"bundle": good}, headers=_hdr(tokens))
    assert r.json()["error"]["code"] == "incompatible"
    r = client.post(
        "/api/v1/devices/pi-a/update",
        json={"bundle": good, "timeouts": {"download_s": -1}},
        headers=_hdr(tokens),
    )
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_timeouts")
    r = client.post(
        "/api/v1/devices/pi-a/update", json={"bundle": "nope.tar.gz"}, headers=_hdr(tokens)
    )
    assert r.status_code == 404
    first = client.post(
        "/api/v1/devices/pi-a/update",
        json={"bundle": good, "timeouts": {"download_s": 7200}},
        headers=_hdr(tokens),
    )
    assert first.status_code == 202
    assert first.json()["timeouts"]["download_s"] == 7200
    busy = client.post("/api/v1/devices/pi-a/update", json={"bundle": good}, headers=_hdr(tokens))
    assert (busy.status_code, busy.json()["error"]["code"]) == (409, "busy")
    ex_id = first.json()["id"]
    cancelled = client.post(
        f"/api/v1/executions/{ex_id}/cancel", json={"reason": "wrong day"}, headers=_hdr(tokens)
    )
    assert cancelled.json()["status"] == "cancelled"
    again = client.post(f"/api/v1/executions/{ex_id}/cancel", headers=_hdr(tokens))
    assert (again.status_code, again.json()["error"]["code"]) == (409, "conflict")
    assert (
        client.post(
            "/api/v1/devices/pi-a/decommission", json={"reason": "rma"}, headers=_hdr(tokens)
        ).status_code
        == 200
    )
    r = client.post("/api/v1/devices/pi-a/update", json={"bundle": good}, headers=_hdr(tokens))
    assert (r.status_code, r.json()["error"]["code"]) == (409, "decommissioned")
    with sessions() as s:
        actions = set(s.execute(select(AuditEntry.action)).scalars())
    assert {"bundle.publish", "deployment.create", "deployment.cancel"} <= actions


# -- bundles and the TUF repository --------------------------------------------------------


def _tampered(bundle: BuiltBundle) -> bytes:
    """The bundle with one payload file's bytes changed (its manifest hash no longer
    matches), re-packed as a valid tar.gz."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(bundle.path.read_bytes()), mode="r:gz") as src,
        tarfile.open(fileobj=out, mode="w") as dst,
    ):
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if data is not None and member.name.startswith("payload/") and data:
                data = bytes([data[0] ^ 0x01]) + data[1:]
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return gzip.compress(out.getvalue(), mtime=0)


@pytest.mark.mosquitto
def test_bundle_upload_verifies_and_refuses_tampering(sessions, deploy_api, world) -> None:
    client, tokens = deploy_api
    bad = client.post(
        "/api/v1/bundles",
        content=_tampered(world.bundles["good-1.1.0"]),
        headers={**_hdr(tokens), "Content-Type": "application/octet-stream"},
    )
    assert bad.status_code == 422, bad.text
    err = bad.json()["error"]
    assert err["code"] == "invalid_bundle"
    assert err["details"]["reason"]
    assert "sha256" in err["message"] or "hash" in err["message"]
    junk = client.post(
        "/api/v1/bundles",
        content=b"not a bundle",
        headers={**_hdr(tokens), "Content-Type": "application/octet-stream"},
    )
    assert junk.status_code == 422
    bad_channel = _upload(client, tokens, world.bundles["good-1.1.0"], channel="Not A Slug")
    assert (bad_channel.status_code, bad_channel.json()["error"]["code"]) == (
        422,
        "invalid_channel",
    )
    assert world.repo().list_targets() == []
    with sessions() as s:
        assert s.execute(select(func.count()).select_from(Bundle)).scalar_one() == 0
    # multipart upload works too; the form's channel applies
    bundle = world.bundles["good-1.2.0"]
    ok = client.post(
        "/api/v1/bundles",
        files={"file": (bundle.path.name, bundle.path.read_bytes(), "application/gzip")},
        data={"channel": "beta"},
        headers=_hdr(tokens),
    )
    assert ok.status_code == 201, ok.text
    assert ok.json()["channel"] == "beta"
    assert ok.json()["sha256"] == bundle.sha256
    shown = client.get(f"/api/v1/bundles/{ok.json()['name']}", headers=_hdr(tokens, "viewer"))
    assert shown.json()["manifest"]["version"] == "1.2.0"
    listed = client.get(
        "/api/v1/bundles", params={"model": "gw-100", "channel": "beta"}, headers=_hdr(tokens)
    ).json()
    assert [b["name"] for b in listed["items"]] == [ok.json()["name"]]
    assert [t.name for t in world.repo().list_targets()] == [ok.json()["name"]]


def test_stock_tuf_client_refreshes_and_downloads_from_the_running_api(
    sessions, db_url, world
) -> None:
    app = create_app(world.settings(db_url), sessions=sessions)
    tokens = make_tokens(sessions)
    live = serve(app)
    try:
        import httpx

        bundle = world.bundles["good-1.1.0"]
        r = httpx.post(
            f"{live.url}/api/v1/bundles",
            content=bundle.path.read_bytes(),
            headers={**_hdr(tokens), "Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 201, r.text
        device = stock_updater(
            world.tmp / "device",
            f"{live.url}/tuf/metadata/",
            f"{live.url}/tuf/targets/",
            root_bytes(world.repo_dir),
        )
        device.refresh()
        info = device.get_targetinfo(r.json()["name"])
        assert info is not None
        assert Path(device.download_target(info)).read_bytes() == bundle.path.read_bytes()
    finally:
        live.stop()


def test_fleet_server_init_sets_up_the_update_repository(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    bin_dir = Path(sys.executable).parent
    env.update(
        FLEET_DATABASE_URL=f"sqlite:///{tmp_path}/fleet.db",
        FLEET_UPDATES_REPO_DIR=str(tmp_path / "tuf"),
        FLEET_UPDATES_KEYS_DIR=str(tmp_path / "keys" / "online"),
    )
    dev = subprocess.run(
        [str(bin_dir / "fleet-server"), "init", "--json"], env=env, capture_output=True, text=True
    )
    assert dev.returncode == 0, dev.stderr
    out = json.loads(dev.stdout)
    assert out["tuf_setup"] == "created-dev"
    assert "DEVELOPMENT root" in dev.stderr
    assert (tmp_path / "tuf" / "metadata" / "root.json").is_file()
    assert Path(out["tuf_dev_root"]).is_dir()
    # With offline root keys, the root carries their threshold.
    create_root_keys(tmp_path / "offline", count=3, threshold=2)
    env["FLEET_DATABASE_URL"] = f"sqlite:///{tmp_path}/fleet2.db"
    env["FLEET_UPDATES_REPO_DIR"] = str(tmp_path / "tuf2")
    env["FLEET_UPDATES_KEYS_DIR"] = str(tmp_path / "keys2")
    prod = subprocess.run(
        [str(bin_dir / "fleet-server"), "init", "--root-keys", str(tmp_path / "offline")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert prod.returncode == 0, prod.stderr
    assert "DEVELOPMENT" not in prod.stderr
    root = json.loads((tmp_path / "tuf2" / "metadata" / "root.json").read_text())
    assert root["signed"]["roles"]["root"]["threshold"] == 2
    bad = subprocess.run(
        [str(bin_dir / "fleet-server"), "init", "--force", "--root-keys", str(tmp_path)],
        env={**env, "FLEET_UPDATES_REPO_DIR": str(tmp_path / "tuf3")},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    assert "root key directory" in bad.stderr


def test_ingest_refusal_is_per_message(sessions) -> None:
    """Without MQTT: the batch writer refuses only the bad report of a batch."""
    _register(sessions, "pi-b1")
    writer = BatchWriter(sessions)
    msgs = [
        p.UpdateStateChanged(
            device_id="pi-b1",
            boot_id="b",
            seq=i,
            ts=T0 + i,
            execution_id=ex,
            version="1.0.0",
            state=p.UpdateState.DOWNLOADING,
        )
        for i, ex in ((1, "ex-nothing"), (2, None))
    ]
    result = writer.write([Inbound(p.topic("pi-b1", p.Kind.EVENT), p.encode(m), T0) for m in msgs])
    assert result.rejected["unknown_execution"] == 1
    assert result.accepted["event"] == 1
    assert _update_events(sessions, "pi-b1") == 1


def test_rollback_report_wins_over_a_boot_in_the_same_batch(sessions, world) -> None:
    """The Boot of the run that rolled back names the trial slot's version; when it and
    the ``rolled_back`` report land in one ingest batch, the registry ends on the old
    version."""
    _register(sessions, "pi-batch")
    _set_version(sessions, "pi-batch", "1.0.0")
    with sessions() as s:
        bundle, _ = publish_bundle(
            s, world.repo(), world.bundles["good-1.1.0"].path, channel=None, actor=SYSTEM, now=T0
        )
        dev = s.execute(select(Device).where(Device.device_id == "pi-batch")).scalar_one()
        ex_id = deployments.create_execution(s, dev, bundle, actor=SYSTEM, now=T0).id
        s.commit()
    head = {"device_id": "pi-batch", "boot_id": "boot-3", "ts": T0}
    msgs: list[Any] = [
        p.Boot(**head, seq=1, reason=0, agent_version="0.1.0", software_version="1.1.0", slot="b"),
        p.UpdateStateChanged(
            **head,
            seq=2,
            execution_id=ex_id,
            version="1.1.0",
            state=p.UpdateState.ROLLED_BACK,
            failure_class=p.FailureClass.BOOT,
            reason="crashed in trial",
        ),
    ]
    writer = BatchWriter(sessions)
    writer.write([Inbound(p.topic("pi-batch", p.Kind.EVENT), p.encode(m), T0) for m in msgs])
    with sessions() as s:
        version = s.execute(
            select(Device.software_version).where(Device.device_id == "pi-batch")
        ).scalar_one()
        assert version == "1.0.0"
        assert s.get(Execution, ex_id).status == "failed"


@pytest.mark.mosquitto
def test_fleetctl_publishes_updates_and_follows_executions(
    mosquitto, sessions, db_url, world
) -> None:
    publisher = PahoPublisher(mosquitto.host, mosquitto.port)
    assert publisher.wait_connected(10)
    app = create_app(world.settings(db_url), sessions=sessions, publisher=publisher)
    tokens = make_tokens(sessions)
    _register(sessions, "pi-ctl")
    live = serve(app)
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(FLEET_URL=live.url, FLEET_TOKEN=tokens["operator"], HOME=str(world.tmp))

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(bin_dir / "fleetctl"), *args], env=env, capture_output=True, text=True, timeout=60
        )

    try:
        bundle = world.bundles["good-1.1.0"]
        published = ctl("bundle", "publish", str(bundle.path), "--channel", "beta", "--json")
        assert published.returncode == 0, published.stderr
        name = json.loads(published.stdout)["name"]
        listed = json.loads(ctl("bundle", "list", "--json").stdout)["items"]
        assert [(b["name"], b["channel"]) for b in listed] == [(name, "beta")]
        assert name in ctl("bundle", "show", name).stdout
        tampered = world.tmp / "tampered.tar.gz"
        tampered.write_bytes(_tampered(world.bundles["good-1.2.0"]))
        refused = ctl("bundle", "publish", str(tampered))
        assert refused.returncode == EXIT_INVALID
        assert "invalid_bundle" in refused.stderr
        assert "Traceback" not in refused.stderr
        bad_timeout = ctl("device", "update", "pi-ctl", "--bundle", name, "--timeout", "soon")
        assert bad_timeout.returncode == 1
        assert "PHASE=SECONDS" in bad_timeout.stderr
        started = ctl(
            "device", "update", "pi-ctl", "--bundle", name, "--timeout", "download_s=60", "--json"
        )
        assert started.returncode == 0, started.stderr
        ex = json.loads(started.stdout)
        assert (ex["status"], ex["timeouts"]["download_s"]) == ("sent", 60)
        rows = json.loads(ctl("executions", "list", "--device", "pi-ctl", "--json").stdout)["items"]
        assert [r["id"] for r in rows] == [ex["id"]]
        shown = ctl("executions", "show", ex["id"])
        assert shown.returncode == 0
        assert "history" in shown.stdout
        assert (
            json.loads(ctl("executions", "cancel", ex["id"], "--json").stdout)["status"]
            == "cancelled"
        )
        viewer = ctl("--token", tokens["viewer"], "device", "update", "pi-ctl", "--bundle", name)
        assert viewer.returncode == EXIT_FORBIDDEN
        assert "forbidden" in viewer.stderr
    finally:
        live.stop()
        publisher.close()


def test_scheduler_keeps_the_served_repository_signed(world: UpdateWorld) -> None:
    """The scheduler's tuf-resign job re-signs the timestamp before it expires (the
    repository's default: 1 day, re-signed within 8 hours of expiry)."""
    from datetime import UTC, datetime

    settings = world.settings("sqlite://")
    job = next(j for j in Scheduler(None, settings).jobs if j.name == "tuf-resign")  # type: ignore[arg-type]
    now = datetime.now(UTC).timestamp()
    before = json.loads((world.repo_dir / "metadata" / "timestamp.json").read_text())
    # Nothing is due yet.
    assert job.fn(None, settings, now) is None  # type: ignore[arg-type]
    result = job.fn(None, settings, now + 20 * 3600)  # type: ignore[arg-type]
    assert result is not None
    assert "timestamp" in result.resigned
    after = json.loads((world.repo_dir / "metadata" / "timestamp.json").read_text())
    assert after["signed"]["version"] == before["signed"]["version"] + 1
    # Without a repository the job only logs (the server runs without updates).
    missing = world.settings("sqlite://").model_copy(
        update={"updates": settings.updates.model_copy(update={"repo_dir": world.tmp / "none"})}
    )
    fresh = next(j for j in Scheduler(None, missing).jobs if j.name == "tuf-resign")  # type: ignore[arg-type]
    assert fresh.fn(None, missing, now) is None  # type: ignore[arg-type]


def test_the_database_holds_one_open_execution_per_device(sessions, world) -> None:
    """Even a writer that skips the service's check cannot open a second execution for a
    device (partial unique index); finished ones do not count."""
    from sqlalchemy.exc import IntegrityError

    _register(sessions, "pi-race")
    with sessions() as s:
        bundle, _ = publish_bundle(
            s, world.repo(), world.bundles["good-1.1.0"].path, channel=None, actor=SYSTEM, now=T0
        )
        dev = s.execute(select(Device).where(Device.device_id == "pi-race")).scalar_one()
        first = deployments.create_execution(s, dev, bundle, actor=SYSTEM, now=T0)
        s.commit()
        twin = Execution(
            id="ex-twin",
            device_key=dev.id,
            bundle_id=bundle.id,
            status="sent",
            phase="sent",
            phase_at=T0,
            reason="",
            timeouts={},
            created_at=T0,
            created_by="x",
        )
        s.add(twin)
        with pytest.raises(IntegrityError):
            s.flush()
        s.rollback()
        deployments.cancel(s, s.get(Execution, first.id), actor=SYSTEM, now=T0, reason="")
        s.commit()
        again = deployments.create_execution(s, dev, bundle, actor=SYSTEM, now=T0 + 1)
        s.commit()
        assert again.status == "pending"
