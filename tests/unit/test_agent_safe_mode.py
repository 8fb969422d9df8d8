"""Safe mode on the agent: a command signed by the server's safety key is obeyed,
persisted across restarts and confirmed; a bad signature or a missing key is rejected
with ``not_permitted``; in safe mode only the remedy version may be installed."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import protocol as p
from agent.core.commands import accept
from agent.daemon import AgentDaemon
from tests.conftest import free_port, wait_for
from tests.integration.agent_harness import CountingCollector, agent_config

DEVICE = "pi-test-1"


def _key_files(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "safety.pub"
    pub.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return key, pub


def _command(key: Ed25519PrivateKey, cid: str, *, remedy: str = "2.0.1") -> p.SafeMode:
    now = time.time()
    unsigned = p.SafeMode(
        device_id=DEVICE,
        boot_id="srv-1",
        seq=1,
        ts=now,
        id=cid,
        expires_at=now + 600,
        campaign_id="RC-9",
        reason="battery swelling",
        issued_at=now,
        remedy_version=remedy,
    )
    sig = base64.b64encode(key.sign(p.safe_mode_signed_bytes(unsigned))).decode()
    return msgspec.structs.replace(unsigned, signature=sig)


def _deliver(daemon: AgentDaemon, cmd: p.Command) -> None:
    daemon._on_message(p.topic(DEVICE, p.Kind.COMMAND), p.encode(cmd))


def _daemon(tmp_path: Path, pub: Path | None) -> AgentDaemon:
    extra = {"safety": {"public_key": str(pub)}} if pub else {}
    config = agent_config(
        f"mqtt://127.0.0.1:{free_port()}", tmp_path / "state", publish_interval_s=60, **extra
    )
    return AgentDaemon(config, collector=CountingCollector())


def test_signed_safe_mode_is_obeyed_persisted_and_confirmed(tmp_path: Path) -> None:
    key, pub = _key_files(tmp_path)
    daemon = _daemon(tmp_path, pub)
    _deliver(daemon, _command(key, "cmd-safe-1"))

    def completed() -> bool:
        daemon.step()
        ack = _acks_live(daemon).get("cmd-safe-1")
        return ack is not None and ack.status is p.AckStatus.COMPLETED

    wait_for(completed, timeout=10)
    ack = _acks_live(daemon)["cmd-safe-1"]
    assert ack.result["campaign_id"] == "RC-9"
    assert daemon.status()["safe_mode"]["active"] is True
    # Installs other than the remedy are refused while in safe mode.
    now = time.time()
    install = p.Install(
        device_id=DEVICE,
        boot_id="srv-1",
        seq=2,
        ts=now,
        id="cmd-inst-1",
        expires_at=now + 60,
        target="bundle-2.1.0.tar",
        version="2.1.0",
        execution_id="ex-1",
    )
    # An updater registering its Install handler after start is still guarded.
    daemon.core.intake.register(p.Install, lambda cmd: accept("install", version=cmd.version))
    _deliver(daemon, install)
    refused = _acks_live(daemon)["cmd-inst-1"]
    assert refused.status is p.AckStatus.REJECTED
    assert refused.reason is p.RejectReason.NOT_PERMITTED
    assert "only the remedy version 2.0.1" in refused.detail
    remedy = msgspec.structs.replace(install, id="cmd-inst-2", version="2.0.1", seq=3)
    _deliver(daemon, remedy)
    assert _acks_live(daemon)["cmd-inst-2"].status is p.AckStatus.ACCEPTED
    daemon.shutdown()
    # The flag survives a restart.
    again = _daemon(tmp_path, pub)
    assert again.safe_mode.active
    assert again.status()["safe_mode"]["campaign_id"] == "RC-9"
    again.shutdown()


def _acks_live(daemon: AgentDaemon) -> dict[str, p.CommandAck]:
    out: dict[str, p.CommandAck] = {}
    for q in daemon.outbox.after(-1, 1000):
        e = p.decode(q.topic, q.payload)
        if isinstance(e, p.CommandAck):
            out[e.command_id] = e
    return out


def test_bad_signature_and_missing_key_are_not_permitted(tmp_path: Path) -> None:
    key, pub = _key_files(tmp_path)
    other = Ed25519PrivateKey.generate()
    daemon = _daemon(tmp_path, pub)
    _deliver(daemon, _command(other, "cmd-forged"))
    tampered = msgspec.structs.replace(_command(key, "cmd-tampered"), remedy_version="6.6.6")
    _deliver(daemon, tampered)
    acks = _acks_live(daemon)
    for cid in ("cmd-forged", "cmd-tampered"):
        assert acks[cid].status is p.AckStatus.REJECTED
        assert acks[cid].reason is p.RejectReason.NOT_PERMITTED
        assert acks[cid].detail == "bad safe-mode signature"
    assert daemon.safe_mode.active is False
    assert daemon.status()["safe_mode"]["rejected_total"] == 2
    daemon.shutdown()

    unkeyed = _daemon(tmp_path / "b", None)
    _deliver(unkeyed, _command(key, "cmd-nokey"))
    ack = _acks_live(unkeyed)["cmd-nokey"]
    assert ack.reason is p.RejectReason.NOT_PERMITTED
    assert "no safety public key" in ack.detail
    unkeyed.shutdown()
