"""Webhook rules, pure: which events exist, how a delivery is signed and verified, when a
failed delivery is retried, and when a subscription gives up.

Signature scheme (what a receiver checks)::

    X-Edgefleet-Timestamp: 1790000000
    X-Edgefleet-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>

The receiver recomputes the HMAC over the timestamp header, a dot and the raw body bytes,
compares it in constant time, and refuses a timestamp further than its replay window from
its own clock (:data:`REPLAY_WINDOW_S` by default). :func:`verify` is that check.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import dataclass
from enum import StrEnum

from fleet_server.domain.lifecycles import StateMachine


class EventType(StrEnum):
    """The events a subscription can ask for."""

    ROLLOUT_HALTED = "rollout.halted"
    ROLLOUT_COMPLETED = "rollout.completed"
    ROLLOUT_ROLLED_BACK = "rollout.rolled_back"
    ALARM_RAISED = "alarm.raised"
    DEVICE_OFFLINE = "device.offline"
    RECALL_STATE_CHANGED = "recall.state_changed"
    CLAIM_FILED = "claim.filed"
    ADVISORY_EXPOSURE = "advisory.exposure"
    TICKET_CREATED = "ticket.created"
    TICKET_SLA_WARNING = "ticket.sla_warning"
    """A ticket's SLA target passed 50 % or 75 % of its time."""
    TICKET_SLA_BREACHED = "ticket.sla_breached"
    SLO_ALERT = "slo.alert"
    """A service SLO's burn-rate alert fired (page or ticket)."""
    TEST = "webhook.test"
    """Sent by ``POST /webhooks/{id}/test`` only; nobody subscribes to it."""


SUBSCRIBABLE = tuple(e.value for e in EventType if e is not EventType.TEST)
"""Event names a subscription may list."""

ROLLOUT_EVENTS = {
    "halted": EventType.ROLLOUT_HALTED,
    "completed": EventType.ROLLOUT_COMPLETED,
    "rolled_back": EventType.ROLLOUT_ROLLED_BACK,
}
"""Rollout states whose arrival is an event."""

TIMESTAMP_HEADER = "X-Edgefleet-Timestamp"
SIGNATURE_HEADER = "X-Edgefleet-Signature"
EVENT_HEADER = "X-Edgefleet-Event"
DELIVERY_HEADER = "X-Edgefleet-Delivery"
REPLAY_WINDOW_S = 300
"""How far a receiver should accept the timestamp from its own clock (both ways)."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Edgefleet-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str,
    timestamp: str,
    signature: str,
    body: bytes,
    *,
    now: float,
    window_s: float = REPLAY_WINDOW_S,
) -> bool:
    """True when ``signature`` is ours for ``body`` and ``timestamp`` is within
    ``window_s`` of ``now`` (what a receiver runs on every request)."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > window_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, a cap, and when to give up.

    Attempt ``n`` (1-based) failed: wait a random time in ``[base/2, base] * 2**(n-1)``
    seconds (capped at ``max_delay_s``) before the next; after ``max_attempts`` the delivery
    is ``failed``. ``disable_after`` consecutive failed attempts of one subscription,
    whatever the delivery, disable the subscription.
    """

    base_delay_s: float = 10.0
    max_delay_s: float = 3600.0
    max_attempts: int = 8
    disable_after: int = 20

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** max(0, attempts - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)


class DeliveryState(StrEnum):
    """Where one delivery stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class DeliveryEvent(StrEnum):
    """What an attempt ends in."""

    ANSWERED_2XX = "answered_2xx"
    RETRY = "retry"
    GIVE_UP = "give_up"


DELIVERY: StateMachine[DeliveryState, DeliveryEvent] = StateMachine(
    "webhook delivery",
    DeliveryState,
    DeliveryEvent,
    DeliveryState.PENDING,
    {
        (DeliveryState.PENDING, DeliveryEvent.ANSWERED_2XX): DeliveryState.DELIVERED,
        (DeliveryState.PENDING, DeliveryEvent.RETRY): DeliveryState.PENDING,
        (DeliveryState.PENDING, DeliveryEvent.GIVE_UP): DeliveryState.FAILED,
    },
)
"""A delivery's lifecycle: pending until a 2xx (delivered) or the last attempt (failed)."""


def succeeded(status_code: int | None) -> bool:
    """A 2xx answer is a delivery; anything else (or no answer) is a failed attempt."""
    return status_code is not None and 200 <= status_code < 300
