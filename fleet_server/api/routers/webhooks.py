"""``/api/v1/webhooks``: subscriptions, their delivery log, and a test delivery."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from fleet_server.api.deps import (
    Db,
    PageParams,
    Who,
    context,
    page_body,
    page_params,
    stamp,
)
from fleet_server.api.errors import ERROR_RESPONSES
from fleet_server.api.schemas import Page
from fleet_server.api.webhook_schemas import (
    DeliveryOut,
    WebhookCreated,
    WebhookIn,
    WebhookOut,
    WebhookPatch,
)
from fleet_server.services import webhook_delivery, webhooks

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"], responses=ERROR_RESPONSES)


@router.get("", response_model=Page[WebhookOut], summary="List webhook subscriptions")
def list_webhooks(*, params: Annotated[PageParams, Depends(page_params)], session: Db) -> Any:
    """Subscriptions, oldest first (never their secrets)."""
    return page_body(webhooks.list_subscriptions(session, params))


@router.post("", response_model=WebhookCreated, status_code=201, summary="Subscribe")
def create_webhook(*, body: WebhookIn, request: Request, session: Db, actor: Who) -> Any:
    """Create a subscription; the answer carries the signing secret, shown only this once."""
    return webhooks.create_subscription(
        session,
        name=body.name,
        url=body.url,
        events=list(body.events),
        min_severity=body.min_severity,
        offline_after_s=body.offline_after_s,
        actor=actor,
        **stamp(request),
    )


@router.get("/{webhook_id}", response_model=WebhookOut, summary="One subscription")
def show_webhook(*, webhook_id: int, session: Db) -> Any:
    """A subscription with its delivery counts per status."""
    return webhooks.show_subscription(session, webhook_id)


@router.patch("/{webhook_id}", response_model=WebhookOut, summary="Enable or disable")
def patch_webhook(
    *, webhook_id: int, body: WebhookPatch, request: Request, session: Db, actor: Who
) -> Any:
    """Enable (pending deliveries resume, failure count reset) or disable a subscription."""
    return webhooks.set_enabled(
        session,
        webhook_id,
        body.enabled,
        actor=actor,
        **stamp(request),
    )


@router.delete("/{webhook_id}", response_model=WebhookOut, summary="Delete a subscription")
def delete_webhook(*, webhook_id: int, request: Request, session: Db, actor: Who) -> Any:
    """Delete the subscription and its delivery log."""
    return webhooks.delete_subscription(
        session,
        webhook_id,
        actor=actor,
        **stamp(request),
    )


@router.get("/{webhook_id}/deliveries", response_model=Page[DeliveryOut], summary="Delivery log")
def list_deliveries(
    *,
    webhook_id: int,
    params: Annotated[PageParams, Depends(page_params)],
    status: Annotated[str | None, Query(pattern="^(pending|delivered|failed)$")] = None,
    session: Db,
) -> Any:
    """Deliveries newest first, each with its attempts (status code or error, duration)."""
    return page_body(webhooks.list_deliveries(session, webhook_id, status, params))


@router.post("/{webhook_id}/test", response_model=DeliveryOut, summary="Send a test event")
def test_webhook(*, webhook_id: int, request: Request, session: Db, actor: Who) -> Any:
    """Send a signed ``webhook.test`` event now (once, not retried) and answer how it went."""
    ctx = context(request)
    return webhook_delivery.send_test(
        session,
        webhook_id,
        settings=ctx.settings.webhooks,
        actor=actor,
        **stamp(request),
    )
