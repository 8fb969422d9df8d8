"""Commands to devices (reboot, collect diagnostics, check update) and diagnostics uploads."""

from __future__ import annotations

import hashlib
import itertools
import secrets
import time
import uuid
from typing import Any, Protocol

import msgspec
from sqlalchemy import select, update
from sqlalchemy.orm import Session

import protocol as p
from fleet_server.db.models import CommandRecord, Device, DiagnosticBundle
from fleet_server.errors import (
    ConflictError,
    GoneError,
    InvalidInputError,
    NotFoundError,
    TooLargeError,
    TransientError,
)
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.registry import get_device
from fleet_server.services.tokens import hash_secret

OPEN_STATUSES = ("pending", "sent", "accepted")


class Publisher(Protocol):
    """Sends bytes to the broker with QoS 1; raises ``OSError`` when it cannot."""

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish and return once the broker acknowledged it."""
        ...


class _Sender:
    """The server's own envelope identity for commands: a boot id per process and a
    seq that only grows (time-based start, so it grows across restarts too)."""

    def __init__(self) -> None:
        self.boot_id = "srv-" + uuid.uuid4().hex[:16]
        self._seq = itertools.count(time.time_ns() // 1000)

    def next_seq(self) -> int:
        return next(self._seq)


SENDER = _Sender()


def command_view(c: CommandRecord, device_id: str) -> dict[str, Any]:
    """A command as the API shows it."""
    return {
        "id": c.id,
        "device_id": device_id,
        "kind": c.kind,
        "status": c.status,
        "created_at": c.created_at,
        "expires_at": c.expires_at,
        "created_by": c.created_by,
        "updated_at": c.updated_at,
        "reason": c.reason,
        "detail": c.detail,
        "result": c.result,
    }


def build_command(
    kind: str,
    device_id: str,
    command_id: str,
    now: float,
    expires_at: float,
    *,
    clock_offset_s: float | None = None,
    **extra: Any,
) -> p.Command:
    """The protocol message for ``kind``. It carries ``ttl_s`` (the agent counts it on
    its monotonic clock from receipt) and, for agents that only know ``expires_at``, the
    deadline shifted into the device's clock by its measured offset."""
    common = {
        "device_id": device_id,
        "boot_id": SENDER.boot_id,
        "seq": SENDER.next_seq(),
        "ts": now,
        "id": command_id,
        "expires_at": expires_at + (clock_offset_s or 0.0),
        "ttl_s": max(0.0, expires_at - now),
    }
    if kind == "reboot":
        return p.Reboot(**common, reason=extra.get("reason", ""))
    if kind == "check_update":
        return p.CheckUpdate(**common)
    if kind == "collect_diagnostics":
        return p.CollectDiagnostics(**common, upload_url=extra["upload_url"])
    if kind == "install":
        return p.Install(
            **common,
            target=extra["target"],
            version=extra["version"],
            execution_id=extra["execution_id"],
        )
    raise InvalidInputError("invalid_command", f"unknown command kind {kind!r}")


def send_command(
    session: Session,
    publisher: Publisher,
    device: Device,
    kind: str,
    *,
    actor: Actor,
    now: float,
    ttl_s: float,
    base_url: str,
    diag_ttl_s: float = 3600,
    reason: str = "",
    request_id: str | None = None,
    install: dict[str, str] | None = None,
) -> CommandRecord:
    """Record, publish (QoS 1) and audit a command; the device's ``CommandAck`` events
    update the row later. A publish failure marks it ``failed`` and raises TransientError
    ``broker_unavailable`` (the row and audit entry stay, so the attempt is visible).
    ``install`` carries ``target``, ``version`` and ``execution_id`` for an ``install``."""
    if device.status == "decommissioned":
        raise ConflictError("conflict", f"device {device.device_id!r} is decommissioned")
    command_id = "cmd-" + uuid.uuid4().hex[:20]
    expires_at = now + ttl_s
    extra: dict[str, Any] = {"reason": reason, **(install or {})}
    if kind == "collect_diagnostics":
        secret = secrets.token_urlsafe(32)
        session.add(
            DiagnosticBundle(
                device_key=device.id,
                command_id=command_id,
                token_hash=hash_secret(secret),
                created_at=now,
                expires_at=now + max(diag_ttl_s, ttl_s),
            )
        )
        extra["upload_url"] = f"{base_url}/api/v1/diagnostics/upload/{secret}"
    message = build_command(
        kind,
        device.device_id,
        command_id,
        now,
        expires_at,
        clock_offset_s=device.clock_offset_s,
        **extra,
    )
    payload = msgspec.to_builtins(message)
    if "upload_url" in payload:
        payload["upload_url"] = payload["upload_url"].rsplit("/", 1)[0] + "/<one-time token>"
    record = CommandRecord(
        id=command_id,
        device_key=device.id,
        kind=kind,
        payload=payload,
        status="pending",
        created_at=now,
        expires_at=expires_at,
        created_by=actor.label,
        updated_at=now,
        detail="",
    )
    session.add(record)
    audit.record(
        session,
        actor,
        f"command.{kind}",
        "device",
        device.device_id,
        now=now,
        after={"command_id": command_id, "kind": kind, "expires_at": expires_at},
        request_id=request_id,
    )
    session.commit()
    try:
        publisher.publish(p.topic(device.device_id, p.Kind.COMMAND), p.encode(message), 1)
    except InvalidInputError as exc:
        # The broker cannot carry it to this device at all (NATS: a '.' in its id).
        record.status = "failed"
        record.detail = exc.message
        session.commit()
        raise
    except (OSError, TimeoutError) as exc:
        record.status = "failed"
        record.detail = f"could not publish: {exc}"
        session.commit()
        raise TransientError(
            "broker_unavailable", f"the command was recorded but not sent: {exc}"
        ) from None
    session.execute(
        update(CommandRecord)
        .where(CommandRecord.id == command_id, CommandRecord.status == "pending")
        .values(status="sent", updated_at=now)
    )
    session.commit()
    session.refresh(record)
    return record


def send_to_device(
    session: Session,
    publisher: Publisher | None,
    device_id: str,
    kind: str,
    *,
    actor: Actor,
    now: float,
    ttl_s: float,
    base_url: str,
    diag_ttl_s: float,
    reason: str = "",
    request_id: str | None = None,
) -> dict[str, Any]:
    """Send ``kind`` to registered device ``device_id`` (see :func:`send_command`) and
    return the command's view; 503 ``broker_unavailable`` when this process has no
    publisher, 404 when the device is unknown."""
    if publisher is None:
        raise TransientError("broker_unavailable", "this server process has no MQTT publisher")
    device = get_device(session, device_id)
    record = send_command(
        session,
        publisher,
        device,
        kind,
        actor=actor,
        now=now,
        ttl_s=ttl_s,
        base_url=base_url,
        diag_ttl_s=diag_ttl_s,
        reason=reason,
        request_id=request_id,
    )
    return command_view(record, device.device_id)


def expire_commands(session: Session, *, now: float) -> int:
    """Mark commands that passed their expiry without a final answer as ``expired``."""
    result = session.execute(
        update(CommandRecord)
        .where(CommandRecord.status.in_(OPEN_STATUSES), CommandRecord.expires_at <= now)
        .values(status="expired", updated_at=now)
    )
    return int(result.rowcount or 0)


def check_upload_token(session: Session, secret: str, now: float) -> DiagnosticBundle:
    """The pending diagnostics bundle of the one-time upload token ``secret``; the route
    calls it before reading the body, so a bad token costs no memory.

    Raises NotFoundError ``not_found`` (unknown token) or GoneError ``already_used`` /
    ``expired``."""
    bundle = session.execute(
        select(DiagnosticBundle).where(DiagnosticBundle.token_hash == hash_secret(secret))
    ).scalar_one_or_none()
    if bundle is None:
        raise NotFoundError("not_found", "unknown upload token")
    if bundle.uploaded_at is not None:
        raise GoneError("already_used", "this upload token was already used")
    if bundle.expires_at <= now:
        raise GoneError("expired", "this upload token has expired")
    return bundle


def store_upload(
    session: Session,
    secret: str,
    body: bytes,
    *,
    content_type: str | None,
    now: float,
    max_bytes: int,
    request_id: str | None = None,
) -> DiagnosticBundle:
    """Store a diagnostics bundle against its one-time token (single use, expiring),
    audit and commit.

    Raises TooLargeError ``too_large``, NotFoundError ``not_found`` (unknown token) or
    GoneError ``already_used`` / ``expired``."""
    if len(body) > max_bytes:
        raise TooLargeError("too_large", f"bundle is {len(body)} bytes; the limit is {max_bytes}")
    bundle = check_upload_token(session, secret, now)
    bundle.uploaded_at = now
    bundle.size = len(body)
    bundle.sha256 = hashlib.sha256(body).hexdigest()
    bundle.content_type = (content_type or "application/octet-stream")[:128]
    bundle.content = body
    device_id = session.execute(
        select(Device.device_id).where(Device.id == bundle.device_key)
    ).scalar_one()
    audit.record(
        session,
        Actor(f"device:{device_id}", "device"),
        "diagnostics.upload",
        "device",
        device_id,
        now=now,
        after={"bundle_id": bundle.id, "size": bundle.size, "sha256": bundle.sha256},
        request_id=request_id,
    )
    session.commit()
    return bundle


def uploaded_bundle(session: Session, bundle_id: int) -> DiagnosticBundle:
    """Diagnostics bundle ``bundle_id`` with its bytes; 404 until the device uploaded it."""
    bundle = session.get(DiagnosticBundle, bundle_id)
    if bundle is None or bundle.content is None:
        raise NotFoundError("not_found", f"diagnostics bundle {bundle_id} has no upload")
    return bundle


def bundle_view(b: DiagnosticBundle) -> dict[str, Any]:
    """Diagnostics bundle metadata (not the bytes)."""
    return {
        "id": b.id,
        "command_id": b.command_id,
        "created_at": b.created_at,
        "expires_at": b.expires_at,
        "uploaded_at": b.uploaded_at,
        "size": b.size,
        "sha256": b.sha256,
        "content_type": b.content_type,
    }
