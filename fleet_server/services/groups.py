"""Saved device groups: static (a list of devices) or dynamic (a saved registry
selector, matched whenever the group is used).

A group is a name for a target: :func:`group_filter` turns it into the same
:class:`DeviceFilter` a rollout selector or a bulk action uses, and
:func:`resolve_target` lets a rollout selector say ``{"group": "<name>", ...}``.

Refusals: ``not_found`` (404), ``invalid_group`` / ``invalid_selector`` /
``unknown_devices`` (422), ``conflict`` (409).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fleet_server.db.group_models import DeviceGroup, DeviceGroupMember
from fleet_server.db.models import Device
from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.paging import Page, PageParams, fetch_page
from fleet_server.services.registry import DeviceFilter
from fleet_server.services.rollouts_selection import parse_selector, selector_to_dict

KINDS = ("static", "dynamic")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_STATIC_MEMBERS = 100_000


def get_group(session: Session, name: str) -> DeviceGroup:
    """The group called ``name``, or ``not_found``."""
    group = session.execute(
        select(DeviceGroup).where(DeviceGroup.name == name)
    ).scalar_one_or_none()
    if group is None:
        raise NotFoundError("not_found", f"no device group named {name!r}")
    return group


def _member_ids(session: Session, group: DeviceGroup) -> list[str]:
    return list(
        session.execute(
            select(Device.device_id)
            .join(DeviceGroupMember, DeviceGroupMember.device_key == Device.id)
            .where(DeviceGroupMember.group_id == group.id)
            .order_by(Device.device_id)
        ).scalars()
    )


def group_filter(session: Session, group: DeviceGroup) -> DeviceFilter:
    """The registry filter the group stands for: its saved selector, or its members."""
    if group.kind == "dynamic":
        return parse_selector(group.selector)
    return DeviceFilter(device_ids=_member_ids(session, group))


def member_clauses(group: DeviceGroup) -> list[Any]:
    """SQL conditions on ``Device`` for the group's members (active or not): a dynamic
    group's selector, or a static group's member list as a subquery."""
    if group.kind == "dynamic":
        return parse_selector(group.selector).clauses()
    members = select(DeviceGroupMember.device_key).where(DeviceGroupMember.group_id == group.id)
    return [Device.id.in_(members)]


def _count(group: DeviceGroup, session: Session) -> int:
    query = (
        select(func.count())
        .select_from(Device)
        .where(*member_clauses(group), Device.status == "active")
    )
    return int(session.execute(query).scalar_one())


def group_view(session: Session, group: DeviceGroup) -> dict[str, Any]:
    """A group as the API shows it, with its current number of active members."""
    return {
        "id": group.id,
        "name": group.name,
        "kind": group.kind,
        "description": group.description,
        "selector": group.selector,
        "devices": _count(group, session),
        "created_at": group.created_at,
        "created_by": group.created_by,
        "updated_at": group.updated_at,
    }


def _device_keys(session: Session, device_ids: Sequence[str]) -> list[int]:
    """Registry keys of ``device_ids``; ``unknown_devices`` naming any not registered."""
    if len(device_ids) > MAX_STATIC_MEMBERS:
        raise InvalidInputError("invalid_group", f"at most {MAX_STATIC_MEMBERS} devices")
    wanted = sorted(set(device_ids))
    found: dict[str, int] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        rows = session.execute(
            select(Device.device_id, Device.id).where(Device.device_id.in_(chunk))
        )
        found.update((device_id, key) for device_id, key in rows)
    unknown = [d for d in wanted if d not in found]
    if unknown:
        raise InvalidInputError(
            "unknown_devices",
            f"{len(unknown)} device(s) are not registered: {', '.join(unknown[:10])}",
            {"unknown": unknown[:100]},
        )
    return [found[d] for d in wanted]


def create_group(
    session: Session,
    *,
    name: str,
    kind: str,
    description: str = "",
    selector: dict[str, Any] | None = None,
    device_ids: Sequence[str] | None = None,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Save a static group (``device_ids``) or a dynamic one (``selector``), audited and
    committed; its view."""
    if not _NAME.match(name):
        raise InvalidInputError(
            "invalid_group", "name: 1-128 letters, digits, '.', '_' or '-', starting alphanumeric"
        )
    if kind not in KINDS:
        raise InvalidInputError("invalid_group", "kind: static or dynamic")
    if kind == "dynamic" and (device_ids or selector is None):
        raise InvalidInputError("invalid_group", "a dynamic group has a selector, no device_ids")
    if kind == "static" and selector:
        raise InvalidInputError("invalid_group", "a static group has device_ids, no selector")
    if session.execute(select(DeviceGroup.id).where(DeviceGroup.name == name)).first():
        raise ConflictError("conflict", f"a device group named {name!r} already exists")
    saved = selector_to_dict(parse_selector(selector)) if kind == "dynamic" else None
    keys = _device_keys(session, device_ids or []) if kind == "static" else []
    group = DeviceGroup(
        name=name,
        kind=kind,
        description=description,
        selector=saved,
        created_at=now,
        created_by=actor.label,
        updated_at=now,
    )
    session.add(group)
    session.flush()
    session.add_all(DeviceGroupMember(group_id=group.id, device_key=k) for k in keys)
    session.flush()
    view = group_view(session, group)
    after = {**view, "device_ids": list(device_ids or [])[:1000]} if kind == "static" else view
    audit.record(
        session, actor, "group.create", "group", name, now=now, after=after, request_id=request_id
    )
    session.commit()
    return view


def update_group(
    session: Session,
    name: str,
    *,
    description: str | None = None,
    selector: dict[str, Any] | None = None,
    add_devices: Sequence[str] = (),
    remove_devices: Sequence[str] = (),
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Change a group: its description, a dynamic group's selector, a static group's
    members (added / removed); audited and committed."""
    group = get_group(session, name)
    before = group_view(session, group)
    if group.kind == "dynamic" and (add_devices or remove_devices):
        raise InvalidInputError("invalid_group", "a dynamic group's members follow its selector")
    if group.kind == "static" and selector is not None:
        raise InvalidInputError("invalid_group", "a static group has no selector")
    if description is not None:
        group.description = description
    if selector is not None:
        group.selector = selector_to_dict(parse_selector(selector))
    current = set(
        session.execute(
            select(DeviceGroupMember.device_key).where(DeviceGroupMember.group_id == group.id)
        ).scalars()
    )
    for key in set(_device_keys(session, add_devices)) - current:
        session.add(DeviceGroupMember(group_id=group.id, device_key=key))
    for key in set(_device_keys(session, remove_devices)) & current:
        member = session.get(DeviceGroupMember, (group.id, key))
        if member is not None:
            session.delete(member)
    group.updated_at = now
    session.flush()
    after = group_view(session, group)
    changes = {"added": sorted(set(add_devices)), "removed": sorted(set(remove_devices))}
    audit.record(
        session,
        actor,
        "group.update",
        "group",
        name,
        now=now,
        before=before,
        after={**after, **changes},
        request_id=request_id,
    )
    session.commit()
    return after


def delete_group(
    session: Session, name: str, *, actor: Actor, now: float, request_id: str | None = None
) -> dict[str, Any]:
    """Delete a group (its devices are untouched), audited and committed."""
    group = get_group(session, name)
    view = group_view(session, group)
    session.execute(delete(DeviceGroupMember).where(DeviceGroupMember.group_id == group.id))
    session.delete(group)
    audit.record(
        session, actor, "group.delete", "group", name, now=now, before=view, request_id=request_id
    )
    session.commit()
    return view


def list_groups(session: Session, params: PageParams) -> Page[dict[str, Any]]:
    """One page of groups by name, each with its current member count."""
    query = select(DeviceGroup).order_by(DeviceGroup.name)
    return fetch_page(session, query, params, scalars=True).map(lambda g: group_view(session, g))


def show_group(session: Session, name: str) -> dict[str, Any]:
    """A group's view."""
    return group_view(session, get_group(session, name))


def narrow_to_group(session: Session, statement: Any, name: str) -> Any:
    """``statement`` (a device query) narrowed to the members of the group ``name``: a
    saved group is a saved view of the registry (``not_found`` for an unknown group)."""
    return statement.where(*member_clauses(get_group(session, name)))


def group_devices(session: Session, name: str, params: PageParams) -> Page[Device]:
    """One page of the group's active members as of now, by device id."""
    group = get_group(session, name)
    query = (
        select(Device)
        .where(*member_clauses(group), Device.status == "active")
        .order_by(Device.device_id)
    )
    return fetch_page(session, query, params, scalars=True)


def resolve_target(session: Session, data: dict[str, Any] | None) -> DeviceFilter:
    """A rollout or bulk selector that may name ``group``: the group's filter combined with
    the other keys (a key given both ways with different values is ``invalid_selector``)."""
    data = dict(data or {})
    name = data.pop("group", None)
    if name is None:
        return parse_selector(data)
    if not isinstance(name, str):
        raise InvalidInputError("invalid_selector", "selector.group: a group name")
    group = get_group(session, name)
    base = selector_to_dict(group_filter(session, group))
    clash = sorted(k for k in set(base) & set(data) if base[k] != data[k])
    if clash:
        raise InvalidInputError(
            "invalid_selector",
            f"selector: {', '.join(clash)} differ(s) from group {name!r}'s own selector",
        )
    return parse_selector({**base, **data})
