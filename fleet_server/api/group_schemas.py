"""Request and response models of ``/api/v1/groups`` and ``/api/v1/bulk``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class GroupIn(BaseModel):
    """A saved group: static (``device_ids``) or dynamic (``selector``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: Literal["static", "dynamic"]
    description: str = Field(default="", max_length=2000)
    selector: dict[str, Any] | None = Field(
        default=None, description="dynamic: a registry selector, as a rollout's"
    )
    device_ids: list[str] | None = Field(default=None, description="static: the members")


class GroupPatch(BaseModel):
    """Changes to a group; omitted fields stay."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = Field(default=None, max_length=2000)
    selector: dict[str, Any] | None = Field(default=None, description="dynamic groups only")
    add_devices: list[str] = Field(default_factory=list, description="static groups only")
    remove_devices: list[str] = Field(default_factory=list, description="static groups only")


class GroupOut(BaseModel):
    """A group and its current number of active members."""

    id: int
    name: str
    kind: Literal["static", "dynamic"]
    description: str
    selector: dict[str, Any] | None
    devices: int = Field(description="active members right now")
    created_at: datetime
    created_by: str
    updated_at: datetime


class BulkIn(BaseModel):
    """A bulk action over a group or a selector; ``dry_run`` first, then execute with the
    answer's ``confirmation_token``."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["tag", "untag", "set_fields", "reboot", "check_update", "collect_diagnostics"]
    group: str | None = Field(default=None, max_length=128)
    selector: dict[str, Any] | None = None
    tags: list[str] = Field(default_factory=list, description="tag / untag")
    fields: dict[str, Any] = Field(
        default_factory=dict, description="set_fields: registry fields and values"
    )
    reason: str = Field(default="", max_length=500, description="commands: why (audited)")
    dry_run: bool = Field(default=False, description="count and get a confirmation token")
    confirmation_token: str | None = Field(default=None, max_length=128)


class BulkFailure(BaseModel):
    """A device the action could not be applied to."""

    device_id: str
    error: str


class BulkOut(BaseModel):
    """A dry run (count, sample, token) or an executed run (with its outcome)."""

    action: str
    target: dict[str, Any]
    params: dict[str, Any]
    count: int
    confirmation_token: str
    executed: bool
    sample: list[str] | None = None
    bulk_id: str | None = None
    succeeded: int | None = None
    failed: list[BulkFailure] | None = None
