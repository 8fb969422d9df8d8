"""Webhook subscriptions and the outbox: who wants which events, and :func:`notify`.

Event sources call ``notify(session, event_type, payload, now=...)`` inside the
transaction that causes the event; it writes one pending delivery per matching enabled
subscription into the same transaction (the outbox), so an event is never sent without
having happened and never lost when the process dies before sending. The delivery job
(:mod:`fleet_server.services.webhook_delivery`) sends what is due.

Refusals: ``not_found`` (404), ``invalid_webhook`` (422), ``conflict`` (409).
"""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fleet_server.db.models import Device
from fleet_server.db.webhook_models import WebhookAttempt, WebhookDelivery, WebhookSubscription
from fleet_server.domain.alarms import severity_rank
from fleet_server.domain.webhooks import SUBSCRIBABLE, EventType
from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.paging import Page, PageParams, fetch_page

DEFAULT_OFFLINE_AFTER_S = 300.0
"""``device.offline`` fires after this long offline unless the subscription says."""
OFFLINE_LOOKBACK_S = 86400.0
"""Offline spells that crossed their threshold longer ago than this are not reported
(a server down for longer does not flood receivers with stale news)."""


def iso(ts: float | None) -> str | None:
    """ISO 8601 UTC for epoch seconds (the one timestamp format of the payloads)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def subscription_view(sub: WebhookSubscription) -> dict[str, Any]:
    """A subscription as the API shows it (never its secret)."""
    return {
        "id": sub.id,
        "name": sub.name,
        "url": sub.url,
        "events": list(sub.events),
        "min_severity": sub.min_severity,
        "offline_after_s": sub.offline_after_s,
        "enabled": sub.enabled,
        "consecutive_failures": sub.consecutive_failures,
        "disabled_at": sub.disabled_at,
        "disabled_reason": sub.disabled_reason,
        "created_at": sub.created_at,
        "created_by": sub.created_by,
    }


def delivery_view(
    d: WebhookDelivery, attempts: list[WebhookAttempt] | None = None
) -> dict[str, Any]:
    """A delivery (and, when given, its attempts) as the API shows it."""
    out: dict[str, Any] = {
        "id": d.id,
        "subscription_id": d.subscription_id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at if d.status == "pending" else None,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "created_at": d.created_at,
        "delivered_at": d.delivered_at,
        "payload": json.loads(d.body),
    }
    if attempts is not None:
        out["attempt_log"] = [
            {
                "at": a.at,
                "status_code": a.status_code,
                "error": a.error,
                "duration_ms": a.duration_ms,
            }
            for a in attempts
        ]
    return out


def _validate(
    url: str, events: list[str], min_severity: str | None, offline_after_s: float | None
) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        host = None
    if not host or parts.scheme not in ("http", "https") or any(c.isspace() for c in url):
        raise InvalidInputError("invalid_webhook", "url: an http:// or https:// URL with a host")
    unknown = sorted(set(events) - set(SUBSCRIBABLE))
    if not events or unknown:
        raise InvalidInputError(
            "invalid_webhook",
            f"events: choose one or more of {', '.join(SUBSCRIBABLE)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
        )
    if min_severity is not None and severity_rank(min_severity) < 0:
        raise InvalidInputError(
            "invalid_webhook", "min_severity: info, warning, minor, major or critical"
        )
    if offline_after_s is not None and not 0 < offline_after_s <= 30 * 86400:
        raise InvalidInputError("invalid_webhook", "offline_after_s: between 0 and 30 days")


def get_subscription(session: Session, webhook_id: int) -> WebhookSubscription:
    """The subscription, or ``not_found``."""
    sub = session.get(WebhookSubscription, webhook_id)
    if sub is None:
        raise NotFoundError("not_found", f"webhook {webhook_id} does not exist")
    return sub


def create_subscription(
    session: Session,
    *,
    name: str,
    url: str,
    events: list[str],
    min_severity: str | None,
    offline_after_s: float | None,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Create, audit and commit a subscription; the answer carries its signing ``secret``,
    the only time it is shown."""
    _validate(url, events, min_severity, offline_after_s)
    name = name.strip()
    if not name:
        raise InvalidInputError("invalid_webhook", "name: required")
    if session.execute(
        select(WebhookSubscription.id).where(WebhookSubscription.name == name)
    ).first():
        raise ConflictError("conflict", f"a webhook named {name!r} already exists")
    sub = WebhookSubscription(
        name=name,
        url=url,
        secret="whsec_" + secrets.token_urlsafe(32),
        events=sorted(set(events)),
        min_severity=min_severity,
        offline_after_s=offline_after_s,
        enabled=True,
        consecutive_failures=0,
        created_at=now,
        created_by=actor.label,
    )
    session.add(sub)
    session.flush()
    view = subscription_view(sub)
    audit.record(
        session,
        actor,
        "webhook.create",
        "webhook",
        str(sub.id),
        now=now,
        after=view,
        request_id=request_id,
    )
    session.commit()
    return {**view, "secret": sub.secret}


def set_enabled(
    session: Session,
    webhook_id: int,
    enabled: bool,
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Enable (resetting the failure count; pending deliveries resume) or disable a
    subscription, audited and committed."""
    sub = get_subscription(session, webhook_id)
    before = subscription_view(sub)
    sub.enabled = enabled
    if enabled:
        sub.consecutive_failures = 0
        sub.disabled_at = sub.disabled_reason = None
    else:
        sub.disabled_at, sub.disabled_reason = now, f"disabled by {actor.label}"
    after = subscription_view(sub)
    action = "webhook.enable" if enabled else "webhook.disable"
    audit.record(
        session,
        actor,
        action,
        "webhook",
        str(sub.id),
        now=now,
        before=before,
        after=after,
        request_id=request_id,
    )
    session.commit()
    return after


def delete_subscription(
    session: Session, webhook_id: int, *, actor: Actor, now: float, request_id: str | None = None
) -> dict[str, Any]:
    """Delete a subscription with its deliveries, audited and committed."""
    sub = get_subscription(session, webhook_id)
    view = subscription_view(sub)
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.subscription_id == sub.id)
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.subscription_id == sub.id))
    session.delete(sub)
    audit.record(
        session,
        actor,
        "webhook.delete",
        "webhook",
        str(webhook_id),
        now=now,
        before=view,
        request_id=request_id,
    )
    session.commit()
    return view


def list_subscriptions(session: Session, params: PageParams) -> Page[dict[str, Any]]:
    """One page of subscriptions, oldest first."""
    query = select(WebhookSubscription).order_by(WebhookSubscription.id)
    return fetch_page(session, query, params, scalars=True).map(subscription_view)


def show_subscription(session: Session, webhook_id: int) -> dict[str, Any]:
    """A subscription with its delivery counts per status."""
    sub = get_subscription(session, webhook_id)
    counts = dict(
        session.execute(
            select(WebhookDelivery.status, func.count())
            .where(WebhookDelivery.subscription_id == sub.id)
            .group_by(WebhookDelivery.status)
        ).all()
    )
    return {**subscription_view(sub), "deliveries": {k: int(v) for k, v in counts.items()}}


def list_deliveries(
    session: Session, webhook_id: int, status: str | None, params: PageParams
) -> Page[dict[str, Any]]:
    """One page of a subscription's deliveries, newest first, each with its attempts."""
    get_subscription(session, webhook_id)
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.subscription_id == webhook_id)
        .order_by(WebhookDelivery.id.desc())
    )
    if status:
        query = query.where(WebhookDelivery.status == status)
    page = fetch_page(session, query, params, scalars=True)
    ids = [d.id for d in page.items]
    log: dict[int, list[WebhookAttempt]] = {i: [] for i in ids}
    if ids:
        for attempt in session.execute(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(ids))
            .order_by(WebhookAttempt.id)
        ).scalars():
            log[attempt.delivery_id].append(attempt)
    return page.map(lambda d: delivery_view(d, log[d.id]))


# --- the outbox ------------------------------------------------------------------------


def _iso_times(value: Any) -> Any:
    """``value`` with every ``*_at`` epoch-seconds field, at any depth, in ISO 8601 UTC."""
    if isinstance(value, dict):
        return {
            k: iso(v)
            if k.endswith("_at") and isinstance(v, int | float) and not isinstance(v, bool)
            else _iso_times(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_iso_times(v) for v in value]
    return value


def _body(event_id: str, event_type: str, payload: dict[str, Any], now: float) -> str:
    # Times in ISO 8601 UTC, like the API (nested ones too: a claim's evidence).
    data = _iso_times(payload)
    envelope = {"id": event_id, "type": event_type, "occurred_at": iso(now), "data": data}
    return json.dumps(envelope, sort_keys=True, separators=(",", ":"), default=str)


def enqueue(
    session: Session,
    sub: WebhookSubscription,
    event_type: str,
    payload: dict[str, Any],
    *,
    now: float,
    dedupe_key: str | None = None,
) -> WebhookDelivery:
    """Add one pending delivery of the event for ``sub`` to the caller's transaction."""
    event_id = "evt-" + uuid.uuid4().hex[:20]
    delivery = WebhookDelivery(
        subscription_id=sub.id,
        event_id=event_id,
        event_type=event_type,
        body=_body(event_id, event_type, payload, now),
        dedupe_key=dedupe_key,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(delivery)
    return delivery


def _wants(sub: WebhookSubscription, event_type: str, payload: dict[str, Any]) -> bool:
    if event_type not in sub.events:
        return False
    if event_type == EventType.ALARM_RAISED and sub.min_severity:
        return severity_rank(str(payload.get("severity"))) >= severity_rank(sub.min_severity)
    return True


def notify(session: Session, event_type: str, payload: dict[str, Any], *, now: float) -> int:
    """Queue ``event_type`` for every enabled subscription that wants it, in the caller's
    transaction (it commits with the event); returns how many deliveries were queued."""
    subs = session.execute(
        select(WebhookSubscription).where(WebhookSubscription.enabled.is_(True))
    ).scalars()
    queued = 0
    for sub in subs:
        if _wants(sub, event_type, payload):
            enqueue(session, sub, event_type, payload, now=now)
            queued += 1
    return queued


def notify_offline(session: Session, *, now: float) -> int:
    """Queue ``device.offline`` once per offline spell for every subscription whose
    threshold the spell has just passed (run after each presence sweep); returns how
    many deliveries were queued. The spell is identified by when it began, so a device
    that comes back and goes offline again is reported again."""
    subs = [
        s
        for s in session.execute(
            select(WebhookSubscription).where(WebhookSubscription.enabled.is_(True))
        ).scalars()
        if EventType.DEVICE_OFFLINE in s.events
    ]
    queued = 0
    for sub in subs:
        after_s = sub.offline_after_s or DEFAULT_OFFLINE_AFTER_S
        oldest = max(sub.created_at - after_s, now - after_s - OFFLINE_LOOKBACK_S)
        devices = (
            session.execute(
                select(Device).where(
                    Device.status == "active",
                    Device.presence == "offline",
                    Device.presence_changed_at.is_not(None),
                    Device.presence_changed_at <= now - after_s,
                    Device.presence_changed_at >= oldest,
                )
            )
            .scalars()
            .all()
        )
        if not devices:
            continue
        keys = {
            f"device.offline:{d.device_id}:{round(d.presence_changed_at * 1000)}": d
            for d in devices
        }
        seen = set(
            session.execute(
                select(WebhookDelivery.dedupe_key).where(
                    WebhookDelivery.subscription_id == sub.id,
                    WebhookDelivery.dedupe_key.in_(list(keys)),
                )
            ).scalars()
        )
        for key, device in keys.items():
            if key in seen:
                continue
            since = float(device.presence_changed_at or now)
            payload = {
                "device_id": device.device_id,
                "offline_since": iso(since),
                "offline_for_s": round(now - since, 1),
                "threshold_s": after_s,
                "reason": device.presence_reason,
                "last_seen": iso(device.last_seen),
            }
            enqueue(session, sub, EventType.DEVICE_OFFLINE, payload, now=now, dedupe_key=key)
            queued += 1
    return queued
