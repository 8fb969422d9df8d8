"""Bulk actions over a group or a selector: tag / untag, set registry fields, reboot,
check update, collect diagnostics.

Two steps, so nobody reboots 300 devices by accident: a dry run counts the devices and
answers a confirmation token bound to the action and the exact selection; executing
requires that token and refuses (``confirmation_mismatch``, 409) when the selection or
the action changed since. The token is a fingerprint of what the caller saw, not a
credential (the caller's role is checked on both steps). Every device gets its own audit
row and the run a summary row (``target_type`` ``bulk``).

Refusals: ``invalid_bulk`` / ``confirmation_required`` / ``invalid_selector`` (422),
``forbidden`` (403), ``confirmation_mismatch`` (409), ``broker_unavailable`` (503).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.models import Device
from fleet_server.domain.device_rows import validate_fields
from fleet_server.domain.roles import BULK_ROLES, COMMAND_ROLES, Role
from fleet_server.errors import (
    ConflictError,
    FleetError,
    ForbiddenError,
    InvalidInputError,
    TransientError,
)
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.commands import Publisher, send_command
from fleet_server.services.groups import get_group, member_clauses, resolve_target
from fleet_server.services.registry import EDITABLE, device_view

NOT_IN_BULK = ("serial",)
"""Registry fields that are unique per device, so never set on many at once."""
SAMPLE = 20


@dataclass(frozen=True)
class BulkRequest:
    """What to do (``action`` and its ``tags`` / ``fields`` / ``reason``) to which devices
    (``group`` name, or a registry ``selector``; exactly one)."""

    action: str
    group: str | None = None
    selector: dict[str, Any] | None = None
    tags: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class CommandContext:
    """What sending commands needs from the server process."""

    publisher: Publisher | None
    ttl_s: float
    base_url: str
    diag_ttl_s: float


def _check(req: BulkRequest, actor: Actor) -> dict[str, Any]:
    """Validate the request and the caller's role; the action's normalised parameters."""
    if req.action not in BULK_ROLES:
        raise InvalidInputError("invalid_bulk", f"action: one of {', '.join(BULK_ROLES)}")
    needed = BULK_ROLES[req.action]
    if not Role(actor.role).allows(needed):
        raise ForbiddenError(
            "forbidden", f"role {actor.role} may not run bulk {req.action}; needs {needed.value}"
        )
    if (req.group is None) == (req.selector is None):
        raise InvalidInputError("invalid_bulk", "name exactly one of group or selector")
    if req.action in ("tag", "untag"):
        tags = sorted({t.strip() for t in req.tags if t.strip()})
        if not tags:
            raise InvalidInputError("invalid_bulk", f"{req.action}: give one or more tags")
        return {"tags": tags}
    if req.action == "set_fields":
        refused = [k for k in req.fields if k not in EDITABLE or k in NOT_IN_BULK]
        if not req.fields or refused:
            allowed = [k for k in EDITABLE if k not in NOT_IN_BULK]
            raise InvalidInputError(
                "invalid_bulk", f"set_fields: fields among {', '.join(allowed)}", refused
            )
        values, errors = validate_fields(req.fields, partial=True)
        if errors:
            raise InvalidInputError(
                "invalid_bulk",
                "set_fields: invalid values",
                [{"field": c, "message": m} for c, m in errors],
            )
        return {
            "fields": {
                k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in values.items()
            }
        }
    return {"reason": req.reason}


def _devices(session: Session, req: BulkRequest) -> list[Device]:
    if req.group is not None:
        clauses = member_clauses(get_group(session, req.group))
    else:
        clauses = resolve_target(session, req.selector).clauses()
    query = select(Device).where(*clauses, Device.status == "active").order_by(Device.device_id)
    return list(session.execute(query).scalars())


def _token(req: BulkRequest, params: dict[str, Any], devices: list[Device]) -> str:
    seen = {
        "action": req.action,
        "params": params,
        "devices": [d.device_id for d in devices],
    }
    digest = hashlib.sha256(json.dumps(seen, sort_keys=True, default=str).encode()).hexdigest()
    return f"{len(devices)}-{digest[:32]}"


def _target(req: BulkRequest) -> dict[str, Any]:
    return {"group": req.group} if req.group is not None else {"selector": req.selector}


def dry_run(session: Session, req: BulkRequest, *, actor: Actor) -> dict[str, Any]:
    """How many (and a sample of which) devices the action would touch, and the token
    that confirms exactly this selection. Changes nothing."""
    params = _check(req, actor)
    devices = _devices(session, req)
    return {
        "action": req.action,
        "target": _target(req),
        "params": params,
        "count": len(devices),
        "sample": [d.device_id for d in devices[:SAMPLE]],
        "confirmation_token": _token(req, params, devices),
        "executed": False,
    }


def _edit(device: Device, action: str, params: dict[str, Any]) -> None:
    if action == "tag":
        device.tags = sorted(set(device.tags or []) | set(params["tags"]))
    elif action == "untag":
        device.tags = sorted(set(device.tags or []) - set(params["tags"]))
    else:
        for key, value in validate_fields(params["fields"], partial=True)[0].items():
            if key == "channel" and value is None:
                continue  # the channel cannot be blanked
            setattr(device, key, value if key != "tags" else sorted(value or []))


def execute(
    session: Session,
    req: BulkRequest,
    confirmation: str | None,
    *,
    actor: Actor,
    now: float,
    commands: CommandContext,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Run the action on every device of the confirmed selection: one audit row per
    device and a summary row. Registry edits commit together; commands are sent (and
    committed) one by one, a device that cannot take one is listed in ``failed``."""
    params = _check(req, actor)
    if not confirmation:
        raise InvalidInputError(
            "confirmation_required",
            "run with dry_run=true first and pass its confirmation_token",
        )
    devices = _devices(session, req)
    token = _token(req, params, devices)
    if confirmation != token:
        raise ConflictError(
            "confirmation_mismatch",
            f"the selection or action changed since the dry run (now {len(devices)} devices); "
            "run the dry run again",
            {"count": len(devices)},
        )
    bulk_id = "bulk-" + uuid.uuid4().hex[:16]
    failed: list[dict[str, str]] = []
    if req.action in COMMAND_ROLES:
        if commands.publisher is None:
            raise TransientError("broker_unavailable", "this server process has no MQTT publisher")
        for index, device in enumerate(devices):
            try:
                send_command(
                    session,
                    commands.publisher,
                    device,
                    req.action,
                    actor=actor,
                    now=now,
                    ttl_s=commands.ttl_s,
                    base_url=commands.base_url,
                    diag_ttl_s=commands.diag_ttl_s,
                    reason=req.reason or f"bulk {bulk_id}",
                    request_id=request_id,
                )
            except FleetError as exc:
                session.rollback()
                failed.append({"device_id": device.device_id, "error": exc.message})
                if isinstance(exc, TransientError):  # the broker is down: stop trying
                    failed += [
                        {"device_id": d.device_id, "error": f"not sent: {exc.message}"}
                        for d in devices[index + 1 :]
                    ]
                    break
    else:
        for device in devices:
            before = device_view(device)
            _edit(device, req.action, params)
            session.flush()
            audit.record(
                session,
                actor,
                f"bulk.{req.action}",
                "device",
                device.device_id,
                now=now,
                before=before,
                after={**device_view(device), "bulk_id": bulk_id},
                request_id=request_id,
            )
    summary = {
        "bulk_id": bulk_id,
        "action": req.action,
        "target": _target(req),
        "params": params,
        "count": len(devices),
        "succeeded": len(devices) - len(failed),
        "failed": failed,
        "confirmation_token": token,
        "executed": True,
    }
    audit.record(
        session,
        actor,
        f"bulk.{req.action}",
        "bulk",
        bulk_id,
        now=now,
        after={**summary, "device_ids": [d.device_id for d in devices][:1000]},
        request_id=request_id,
    )
    session.commit()
    return summary


def run(
    session: Session,
    req: BulkRequest,
    *,
    preview: bool,
    confirmation: str | None,
    actor: Actor,
    now: float,
    commands: CommandContext,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The API's one entrance: :func:`dry_run` with ``preview``, else :func:`execute`."""
    if preview:
        return dry_run(session, req, actor=actor)
    return execute(
        session,
        req,
        confirmation,
        actor=actor,
        now=now,
        commands=commands,
        request_id=request_id,
    )
