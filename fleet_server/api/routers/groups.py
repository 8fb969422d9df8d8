"""``/api/v1/groups`` (saved device groups) and ``/api/v1/bulk`` (bulk actions)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

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
from fleet_server.api.group_schemas import BulkIn, BulkOut, GroupIn, GroupOut, GroupPatch
from fleet_server.api.schemas import DeviceOut, Page
from fleet_server.services import bulk, groups
from fleet_server.services.registry import device_view

router = APIRouter(prefix="/api/v1", tags=["groups"], responses=ERROR_RESPONSES)


@router.get("/groups", response_model=Page[GroupOut], summary="List device groups")
def list_groups(*, params: Annotated[PageParams, Depends(page_params)], session: Db) -> Any:
    """Groups by name, each with its current number of active members."""
    return page_body(groups.list_groups(session, params))


@router.post("/groups", response_model=GroupOut, status_code=201, summary="Save a group")
def create_group(*, body: GroupIn, request: Request, session: Db, actor: Who) -> Any:
    """Save a static group (``device_ids``) or a dynamic one (``selector``)."""
    return groups.create_group(
        session,
        name=body.name,
        kind=body.kind,
        description=body.description,
        selector=body.selector,
        device_ids=body.device_ids,
        actor=actor,
        **stamp(request),
    )


@router.get("/groups/{group_name}", response_model=GroupOut, summary="One group")
def show_group(*, group_name: str, session: Db) -> Any:
    """A group and its current member count."""
    return groups.show_group(session, group_name)


@router.patch("/groups/{group_name}", response_model=GroupOut, summary="Change a group")
def patch_group(
    *, group_name: str, body: GroupPatch, request: Request, session: Db, actor: Who
) -> Any:
    """Change the description, a dynamic group's selector or a static group's members."""
    return groups.update_group(
        session,
        group_name,
        description=body.description,
        selector=body.selector,
        add_devices=body.add_devices,
        remove_devices=body.remove_devices,
        actor=actor,
        **stamp(request),
    )


@router.delete("/groups/{group_name}", response_model=GroupOut, summary="Delete a group")
def delete_group(*, group_name: str, request: Request, session: Db, actor: Who) -> Any:
    """Delete the group (its devices stay as they are)."""
    return groups.delete_group(
        session,
        group_name,
        actor=actor,
        **stamp(request),
    )


@router.get("/groups/{group_name}/devices", response_model=Page[DeviceOut], summary="Group members")
def group_devices(
    *, group_name: str, params: Annotated[PageParams, Depends(page_params)], session: Db
) -> Any:
    """The group's active members as of now (a dynamic group's selector is matched now)."""
    return page_body(groups.group_devices(session, group_name, params).map(device_view))


@router.post("/bulk", response_model=BulkOut, summary="Bulk action over a group or selector")
def run_bulk(*, body: BulkIn, request: Request, session: Db, actor: Who) -> Any:
    """With ``dry_run`` count the devices and get a confirmation token; then execute with
    that token (refused with 409 if the selection changed). Tag / untag / set fields need
    an operator, commands the role they need for one device."""
    ctx = context(request)
    req = bulk.BulkRequest(
        action=body.action,
        group=body.group,
        selector=body.selector,
        tags=body.tags,
        fields=body.fields,
        reason=body.reason,
    )
    return bulk.run(
        session,
        req,
        preview=body.dry_run,
        confirmation=body.confirmation_token,
        actor=actor,
        commands=bulk.CommandContext(
            ctx.publisher,
            ctx.settings.commands.default_ttl_s,
            ctx.settings.public_base_url,
            ctx.settings.diagnostics.token_ttl_s,
        ),
        **stamp(request),
    )
