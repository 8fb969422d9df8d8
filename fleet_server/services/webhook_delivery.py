"""The webhook delivery job: send what is due from the outbox, sign it, log each attempt,
retry with backoff, and disable a subscription that keeps failing.

:func:`deliver_due` is the whole job (tests call it with the time they choose); the
scheduler runs it through :class:`WebhookDeliveryJob`. No transaction is held while a
request is in flight: due deliveries are read, each is sent, and its outcome is written
and committed on its own, so a crash mid-batch leaves the rest pending (sent later, at
least once: receivers dedupe on ``X-Edgefleet-Delivery``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.config import Settings, WebhookSettings
from fleet_server.db.webhook_models import WebhookAttempt, WebhookDelivery, WebhookSubscription
from fleet_server.domain import webhooks as rules
from fleet_server.domain.webhooks import DELIVERY, DeliveryEvent, EventType, RetryPolicy
from fleet_server.services import audit
from fleet_server.services.audit import SYSTEM, Actor
from fleet_server.services.locks import advisory_lock
from fleet_server.services.webhooks import delivery_view, enqueue, get_subscription

log = logging.getLogger(__name__)

ADVISORY_LOCK_KEY = 0x45_44_47_57_48_4B  # "EDGWHK"
"""PostgreSQL advisory lock held by the server instance that delivers."""
USER_AGENT = "edgefleet-webhooks/1"


@dataclass(frozen=True)
class _Outgoing:
    delivery_id: int
    subscription_id: int
    url: str
    secret: str
    body: str
    event_type: str
    event_id: str


@dataclass
class DeliveryReport:
    """What one run did: deliveries sent, failed attempts, subscriptions disabled."""

    delivered: int = 0
    failed_attempts: int = 0
    gave_up: int = 0
    disabled: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.delivered or self.failed_attempts or self.disabled)


def policy_of(settings: WebhookSettings) -> RetryPolicy:
    """The retry policy the settings describe."""
    return RetryPolicy(
        base_delay_s=settings.base_delay_s,
        max_delay_s=settings.max_delay_s,
        max_attempts=settings.max_attempts,
        disable_after=settings.disable_after,
    )


def _send(client: httpx.Client, out: _Outgoing, now: float) -> tuple[int | None, str | None, float]:
    """POST the signed body; (status code, error, milliseconds). Never raises."""
    body = out.body.encode()
    timestamp = int(now)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        rules.TIMESTAMP_HEADER: str(timestamp),
        rules.SIGNATURE_HEADER: rules.sign(out.secret, timestamp, body),
        rules.EVENT_HEADER: out.event_type,
        rules.DELIVERY_HEADER: out.event_id,
    }
    started = time.monotonic()
    try:
        response = client.post(out.url, content=body, headers=headers)
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500], (time.monotonic() - started) * 1000
    elapsed = (time.monotonic() - started) * 1000
    error = None if rules.succeeded(response.status_code) else response.text[:200]
    return response.status_code, error, elapsed


def _record(
    session: Session,
    out: _Outgoing,
    result: tuple[int | None, str | None, float],
    *,
    now: float,
    policy: RetryPolicy,
) -> str:
    """Write one attempt's outcome (caller commits); returns ``delivered``, ``retry``,
    ``failed`` or ``disabled`` (the attempt failed and the subscription was disabled)."""
    status_code, error, elapsed = result
    delivery = session.get(WebhookDelivery, out.delivery_id)
    sub = session.get(WebhookSubscription, out.subscription_id)
    if delivery is None or sub is None:  # deleted meanwhile
        return "failed"
    delivery.attempts += 1
    delivery.last_status_code = status_code
    delivery.last_error = error
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id,
            at=now,
            status_code=status_code,
            error=error,
            duration_ms=round(elapsed, 1),
        )
    )
    if rules.succeeded(status_code):
        delivery.status = DELIVERY.apply(delivery.status, DeliveryEvent.ANSWERED_2XX).value
        delivery.delivered_at = now
        sub.consecutive_failures = 0
        return "delivered"
    sub.consecutive_failures += 1
    retry = out.event_type != EventType.TEST and delivery.attempts < policy.max_attempts
    event = DeliveryEvent.RETRY if retry else DeliveryEvent.GIVE_UP
    delivery.status = DELIVERY.apply(delivery.status, event).value
    if retry:
        delivery.next_attempt_at = now + policy.delay(delivery.attempts)
    if sub.enabled and sub.consecutive_failures >= policy.disable_after:
        _disable(session, sub, now=now)
        return "disabled"
    return "retry" if retry else "failed"


def _disable(session: Session, sub: WebhookSubscription, *, now: float) -> None:
    before = {"enabled": True, "consecutive_failures": sub.consecutive_failures - 1}
    sub.enabled = False
    sub.disabled_at = now
    sub.disabled_reason = f"{sub.consecutive_failures} consecutive failed deliveries"
    audit.record(
        session,
        SYSTEM,
        "webhook.auto_disable",
        "webhook",
        str(sub.id),
        now=now,
        before=before,
        after={
            "enabled": False,
            "consecutive_failures": sub.consecutive_failures,
            "reason": sub.disabled_reason,
            "url": sub.url,
        },
    )
    log.error(
        "webhook %s (%s) disabled after %d consecutive failed deliveries; "
        "re-enable it with fleetctl webhooks enable %s",
        sub.id,
        sub.name,
        sub.consecutive_failures,
        sub.id,
    )


def _due(session: Session, now: float, limit: int) -> list[_Outgoing]:
    rows = session.execute(
        select(WebhookDelivery, WebhookSubscription)
        .join(WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id)
        .where(
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= now,
            WebhookSubscription.enabled.is_(True),
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    ).all()
    return [
        _Outgoing(d.id, s.id, s.url, s.secret, d.body, d.event_type, d.event_id) for d, s in rows
    ]


def deliver_due(
    sessions: sessionmaker[Session],
    now: float,
    *,
    settings: WebhookSettings | None = None,
    client: httpx.Client | None = None,
) -> DeliveryReport:
    """Send every delivery due at ``now`` (oldest first, up to ``batch_size``), each
    attempt logged and committed on its own; returns what happened."""
    settings = settings or WebhookSettings()
    policy = policy_of(settings)
    with sessions() as session:
        batch = _due(session, now, settings.batch_size)
    report = DeliveryReport()
    if not batch:
        return report
    own = client is None
    http = client or httpx.Client(timeout=settings.timeout_s, follow_redirects=False)
    try:
        for out in batch:
            if out.subscription_id in report.disabled:
                continue
            result = _send(http, out, now)
            with sessions() as session, session.begin():
                outcome = _record(session, out, result, now=now, policy=policy)
            if outcome == "delivered":
                report.delivered += 1
                continue
            report.failed_attempts += 1
            if outcome == "disabled":
                report.disabled.append(out.subscription_id)
            elif outcome == "failed":
                report.gave_up += 1
    finally:
        if own:
            http.close()
    return report


def send_test(
    session: Session,
    webhook_id: int,
    *,
    settings: WebhookSettings,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Queue a signed ``webhook.test`` event for the subscription and send it now (once,
    not retried); returns the delivery with its attempt. Audited."""
    sub = get_subscription(session, webhook_id)
    payload = {"message": "test delivery from Edgefleet", "webhook": sub.name, "by": actor.label}
    delivery = enqueue(session, sub, EventType.TEST, payload, now=now)
    session.flush()
    audit.record(
        session,
        actor,
        "webhook.test",
        "webhook",
        str(sub.id),
        now=now,
        after={"delivery_id": delivery.id, "event_id": delivery.event_id},
        request_id=request_id,
    )
    session.commit()
    out = _Outgoing(
        delivery.id, sub.id, sub.url, sub.secret, delivery.body, EventType.TEST, delivery.event_id
    )
    with httpx.Client(timeout=settings.timeout_s, follow_redirects=False) as http:
        result = _send(http, out, now)
    _record(session, out, result, now=now, policy=policy_of(settings))
    session.commit()
    attempts = list(
        session.execute(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery.id)
        ).scalars()
    )
    return delivery_view(delivery, attempts)


class WebhookDeliveryJob:
    """The scheduler job (``fn(sessions, settings, now)``) that runs :func:`deliver_due`.

    On PostgreSQL it runs only while this process holds an advisory lock, so of several
    server instances one delivers at a time (no double sends from two instances)."""

    def __call__(
        self, sessions: sessionmaker[Session], settings: Settings, now: float
    ) -> DeliveryReport | None:
        """One delivery run under the lock; returns its report (logged when not empty)."""
        with sessions() as session:
            engine = session.get_bind()
        with advisory_lock(engine, ADVISORY_LOCK_KEY) as held:
            if not held:
                return None
            return deliver_due(sessions, now, settings=settings.webhooks)
