"""Signed safe-mode commands for safety-critical recalls.

The server holds a dedicated Ed25519 key (``[recalls] safety_key``, a PEM file created
with ``fleet-server safety-key create``); devices are provisioned with its public half
(agent ``[safety] public_key``). Each command is signed over
:func:`protocol.safe_mode_signed_bytes`, which covers the device id, command id, expiry,
campaign and remedy version, so a signature cannot be replayed on another device or
stretched in time.
"""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from sqlalchemy import update
from sqlalchemy.orm import Session

import protocol as p
from fleet_server.db.models import CommandRecord, RecallCampaign
from fleet_server.domain.lifecycles import CampaignState, MemberState
from fleet_server.errors import ConflictError, TransientError
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.commands import SENDER, Publisher
from fleet_server.services.recall_population import population
from fleet_server.services.recalls import get_campaign

PRIVATE_NAME = "safety-key.pem"
PUBLIC_NAME = "safety-key.pub.pem"


def create_safety_key(directory: Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair (private file mode 0600); refuses to overwrite."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    private, public = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    if private.exists():
        raise FileExistsError(f"{private} already exists; move it away to make a new key")
    key = Ed25519PrivateKey.generate()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public.write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def load_safety_key(path: str | Path | None) -> Ed25519PrivateKey:
    """The signing key, or a clear error saying what to configure."""
    if not path:
        raise ConflictError(
            "conflict",
            "no safety key configured: create one with `fleet-server safety-key create` and "
            "set [recalls] safety_key",
        )
    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConflictError("conflict", f"safety key {path} is unusable: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConflictError("conflict", f"safety key {path} is not an Ed25519 key")
    return key


def signed_command(
    key: Ed25519PrivateKey,
    campaign: RecallCampaign,
    device_id: str,
    command_id: str,
    *,
    now: float,
    ttl_s: float,
    reason: str,
) -> p.SafeMode:
    """A safe-mode command for one device, signed."""
    unsigned = p.SafeMode(
        device_id=device_id,
        boot_id=SENDER.boot_id,
        seq=SENDER.next_seq(),
        ts=now,
        id=command_id,
        expires_at=now + ttl_s,
        campaign_id=campaign.id,
        reason=reason,
        issued_at=now,
        remedy_version=campaign.remedy_version or "",
    )
    sig = base64.b64encode(key.sign(p.safe_mode_signed_bytes(unsigned))).decode()
    return msgspec.structs.replace(unsigned, signature=sig)


def send_safe_mode(
    session: Session,
    publisher: Publisher,
    key: Ed25519PrivateKey,
    campaign: RecallCampaign,
    actor: Actor,
    *,
    reason: str,
    now: float,
    ttl_s: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Send the signed command to every member still ``notified`` (not remedied, not
    needed, not unreachable) of an open safety-critical campaign. Devices' acks update
    the command rows (``completed`` = in safe mode; ``rejected`` + ``not_permitted`` =
    signature refused)."""
    if not campaign.safety_critical:
        raise ConflictError("conflict", f"recall {campaign.id} is not safety-critical")
    if campaign.state != CampaignState.OPEN:
        raise ConflictError("conflict", f"recall {campaign.id} is {campaign.state}, not open")
    sent: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []
    messages = []
    for rd, d in population(session, campaign.id, MemberState.NOTIFIED):
        if d.status == "decommissioned":
            skipped.append({"device_id": d.device_id, "why": "decommissioned"})
            continue
        command_id = "cmd-" + uuid.uuid4().hex[:20]
        msg = signed_command(
            key, campaign, d.device_id, command_id, now=now, ttl_s=ttl_s, reason=reason
        )
        payload = msgspec.to_builtins(msg)
        session.add(
            CommandRecord(
                id=command_id,
                device_key=d.id,
                kind="safe_mode",
                payload=payload,
                status="pending",
                created_at=now,
                expires_at=msg.expires_at,
                created_by=actor.label,
                updated_at=now,
                detail="",
            )
        )
        rd.safe_mode_command_id = command_id
        messages.append((command_id, d.device_id, msg))
        sent.append({"device_id": d.device_id, "command_id": command_id})
    audit.record(
        session,
        actor,
        "recall.safe_mode",
        "recall",
        campaign.id,
        now=now,
        after={"reason": reason, "sent": sent, "skipped": skipped},
        request_id=request_id,
    )
    session.commit()
    failed = []
    for command_id, device_id, msg in messages:
        try:
            publisher.publish(p.topic(device_id, p.Kind.COMMAND), p.encode(msg), 1)
        except (OSError, TimeoutError) as exc:
            failed.append(device_id)
            session.execute(
                update(CommandRecord)
                .where(CommandRecord.id == command_id)
                .values(status="failed", detail=f"could not publish: {exc}")
            )
            continue
        session.execute(
            update(CommandRecord)
            .where(CommandRecord.id == command_id, CommandRecord.status == "pending")
            .values(status="sent", updated_at=now)
        )
    session.commit()
    return {"campaign_id": campaign.id, "sent": sent, "skipped": skipped, "publish_failed": failed}


def send_for_recall(
    session: Session,
    publisher: Publisher | None,
    key_path: str | Path | None,
    campaign_id: str,
    actor: Actor,
    *,
    reason: str,
    now: float,
    ttl_s: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The API's entry: :func:`send_safe_mode` for ``campaign_id`` signed with the key at
    ``key_path``; 503 ``broker_unavailable`` without a publisher."""
    campaign = get_campaign(session, campaign_id)
    if publisher is None:
        raise TransientError("broker_unavailable", "no MQTT publisher: cannot reach devices")
    return send_safe_mode(
        session,
        publisher,
        load_safety_key(key_path),
        campaign,
        actor,
        reason=reason,
        now=now,
        ttl_s=ttl_s,
        request_id=request_id,
    )
