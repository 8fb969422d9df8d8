"""OpenAPI schemas of staged rollouts: the selector, the policy, and the rollout views.

The policy is validated by :func:`fleet_server.rollouts.policy.parse_policy` (msgspec, with
error code ``invalid_policy`` naming the field) and the selector by
:func:`fleet_server.services.rollouts_selection.parse_selector` (``invalid_selector``).
Those stay the one place that validates; the models here document the same formats in
OpenAPI (``Policy`` and its parts are generated from the msgspec structs and ``Selector``
from the registry's ``DeviceFilter``, so they cannot
drift). Rollout times are ISO 8601 UTC strings, as every answer of this API.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, WithJsonSchema

from fleet_server.api.schema_times import OpenModel, Timestamp
from fleet_server.rollouts.policy import Policy
from fleet_server.services.registry import DeviceFilter

COMPONENTS = "#/components/schemas/{name}"


# Pydantic resolves every "$ref" it is given against its own models, so the fields carry a
# marker that add_rollout_components turns into the reference once the document is built.
_MARK = "x-edgefleet-component"
SelectorJson = Annotated[dict[str, Any], WithJsonSchema({_MARK: "Selector"})]
"""A selector field: a plain dict for the service's own validation, ``Selector`` in OpenAPI."""
PolicyJson = Annotated[dict[str, Any], WithJsonSchema({_MARK: "Policy"})]
"""A policy field: a plain dict for ``parse_policy``, ``Policy`` in OpenAPI."""


def rollout_components() -> dict[str, dict[str, Any]]:
    """The OpenAPI components ``Selector``, ``Policy`` and the policy's parts."""
    _, components = msgspec.json.schema_components([Policy], ref_template=COMPONENTS)
    return {"Selector": selector_schema(), **components}


def selector_schema() -> dict[str, Any]:
    """JSON schema of a selector: the registry's :class:`DeviceFilter` fields (generated,
    so it follows the filter) plus ``group``, a saved device group's name. Unknown fields
    are refused (``invalid_selector``)."""
    schema = TypeAdapter(DeviceFilter).json_schema(ref_template="#/components/schemas/{model}")
    schema["title"] = "Selector"
    schema["description"] = (
        "Which devices: a filter over the registry; unset fields do not filter. Times "
        "(seen_after, seen_before) are epoch seconds, dates are YYYY-MM-DD."
    )
    schema["properties"]["group"] = {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "default": None,
        "description": "a saved device group's name (combined with any further fields)",
    }
    schema["additionalProperties"] = False
    return schema


def add_rollout_components(doc: dict[str, Any]) -> dict[str, Any]:
    """Add :func:`rollout_components` to a generated OpenAPI document and point the
    selector and policy fields at them."""
    doc.setdefault("components", {}).setdefault("schemas", {}).update(rollout_components())
    _resolve_marks(doc)
    return doc


def _resolve_marks(node: Any) -> None:
    """Replace every ``{_MARK: name, ...}`` schema by a reference to component ``name``
    (keeping its description and default)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict) and _MARK in value:
                keep = {k: v for k, v in value.items() if k in ("description", "default")}
                node[key] = {"$ref": COMPONENTS.format(name=value[_MARK]), **keep}
            else:
                _resolve_marks(value)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, dict) and _MARK in value:
                node[index] = {"$ref": COMPONENTS.format(name=value[_MARK])}
            else:
                _resolve_marks(value)


class RolloutIn(BaseModel):
    """A rollout: which bundle, to which devices (a registry filter), under which policy."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=128)
    bundle: str = Field(min_length=1, max_length=512, description="bundle (TUF target) name")
    selector: SelectorJson = Field(
        default_factory=dict,
        description="registry filter: model, hw_revision, batch, region, channel, tags, "
        "software_version, presence, has_open_faults, device_ids, ... (unset fields do not "
        "filter); `group: <name>` targets a saved device group (with any further filters)",
    )
    policy: PolicyJson = Field(
        default_factory=dict, description="rollout policy; omitted fields take safe defaults"
    )


class RolloutOut(BaseModel):
    """A rollout and its progress (status answers add per-wave and per-stratum counts:
    ``waves``, ``strata``, ``failures_by_class``, ``excluded_by_reason``, ``rollback``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    bundle: str | None
    version: str | None
    state: str
    channel: str
    selector: SelectorJson
    policy: PolicyJson
    waves_total: int
    current_wave: int
    halt_reason: str | None
    halt_stratum: str | None
    halt_class: str | None = None
    forced: bool = False
    force_reason: str | None = None
    created_by: str | None = None
    created_at: Timestamp | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    wave_started_at: Timestamp | None = None
    bake_started_at: Timestamp | None = None


class RolloutPage(BaseModel):
    """A page of rollouts, newest first."""

    items: list[RolloutOut]
    next_cursor: str | None
    total: int


class RolloutEventOut(BaseModel):
    """One entry of a rollout's history: a state change or an engine decision."""

    at: Timestamp
    kind: str
    from_state: str | None
    to_state: str | None
    wave: int | None
    message: str
    actor: str


class RolloutEventList(BaseModel):
    """A rollout's history, oldest first (all of it: ``next_cursor`` is null)."""

    items: list[RolloutEventOut]
    next_cursor: str | None
    total: int


class DryRunWave(BaseModel):
    """Who one wave would take, with the hardware revisions among them."""

    wave: int
    size: int
    devices: list[str]
    hardware_revisions: dict[str, int]


class DryRunExclusion(BaseModel):
    """A device the selector matches that the rollout would leave out, and why."""

    device_id: str
    reason: str
    detail: str


class DryRunOut(BaseModel):
    """The waves and exclusions starting this rollout now would produce (nothing is
    stored)."""

    bundle: str
    version: str
    waves: list[DryRunWave]
    targeted: int
    excluded: list[DryRunExclusion]
    excluded_by_reason: dict[str, int]


class ExplainRollout(OpenModel):
    """One rollout's verdict on the device, with the facts behind it (``excluded``,
    ``wave``, ``wave_started``, ``execution``, ``rollback`` where they apply)."""

    rollout_id: str
    name: str
    state: str
    version: str
    matches_selector: bool
    verdict: str
    maintenance_window_open: bool | None = None
    wave: int | None = None
    wave_started: bool | None = None
    excluded: dict[str, str | None] | None = None
    execution: dict[str, Any] | None = None
    rollback: dict[str, Any] | None = None


class ExplainOut(BaseModel):
    """Why a device is (not) updating, per relevant rollout."""

    device_id: str
    presence: str
    software_version: str | None
    status: str
    rollouts: list[ExplainRollout]
    verdict: str | None = Field(default=None, description="set when no rollout is active")
