"""The OpenAPI document as a client generator reads it: stable component names, a
``servers`` entry, a stated time format, and typed rollout bodies (selector and policy).

Responses are checked against these schemas by the schemathesis run
(tests/security/test_api_schemathesis.py, ``response_schema_conformance``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleet_server.api import create_app
from tests.server_fixtures import settings_for


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp: Path = tmp_path_factory.mktemp("openapi")
    settings = settings_for(
        f"sqlite:///{tmp}/fleet.db",
        updates={"repo_dir": str(tmp / "tuf"), "keys_dir": str(tmp / "tuf-keys")},
    )
    return create_app(settings).openapi()


def test_component_names_do_not_leak_module_paths(doc: dict[str, Any]) -> None:
    names = list(doc["components"]["schemas"])
    assert [n for n in names if "__" in n or "fleet_server" in n] == []


def test_servers_and_time_format_are_declared(doc: dict[str, Any]) -> None:
    assert doc["servers"][0]["url"] == "/"
    assert "every answer gives ISO 8601 UTC" in doc["info"]["description"]
    assert doc["components"]["schemas"]["DeviceOut"]["properties"]["created_at"]["format"] == (
        "date-time"
    )


def _json_schema(op: dict[str, Any], code: str) -> dict[str, Any]:
    return op["responses"][code]["content"]["application/json"]["schema"]


def test_rollout_bodies_are_typed(doc: dict[str, Any]) -> None:
    paths = doc["paths"]
    body = paths["/api/v1/rollouts"]["post"]["requestBody"]["content"]["application/json"]
    rollout_in = doc["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[1]]
    assert rollout_in["properties"]["policy"]["$ref"] == "#/components/schemas/Policy"
    assert rollout_in["properties"]["selector"]["$ref"] == "#/components/schemas/Selector"
    policy = doc["components"]["schemas"]["Policy"]
    assert {"waves", "failure_criteria", "on_halt", "timeouts"} <= set(policy["properties"])
    typed = {
        ("/api/v1/rollouts", "get"): "RolloutPage",
        ("/api/v1/rollouts/{rollout_id}", "get"): "RolloutOut",
        ("/api/v1/rollouts/{rollout_id}/start", "post"): "RolloutOut",
        ("/api/v1/rollouts/{rollout_id}/pause", "post"): "RolloutOut",
    }
    for (path, method), name in typed.items():
        assert _json_schema(paths[path][method], "200")["$ref"].endswith(f"/{name}")


def test_recall_warranty_rma_parts_and_analytics_answers_are_typed(doc: dict[str, Any]) -> None:
    """Every JSON answer of these areas names a component schema, and their times are
    ``date-time`` like the registry's (one time format)."""
    paths = doc["paths"]
    prefixes = (
        "/api/v1/recalls",
        "/api/v1/warranty",
        "/api/v1/claims",
        "/api/v1/rmas",
        "/api/v1/parts",
        "/api/v1/analytics",
        "/api/v1/rollouts",
    )
    untyped = []
    for path, item in paths.items():
        if not path.startswith(prefixes):
            continue
        for method, op in item.items():
            ok = [c for c in op["responses"] if c.startswith("2")]
            content = op["responses"][ok[0]].get("content", {})
            if "application/json" in content and "$ref" not in _json_schema(op, ok[0]):
                untyped.append(f"{method.upper()} {path}")
    assert untyped == []
    schemas = doc["components"]["schemas"]
    for name, field in [
        ("RecallOut", "created_at"),
        ("RecallSnapshot", "at"),
        ("ClaimOut", "created_at"),
        ("RmaOut", "updated_at"),
        ("HistoryEntry", "at"),
        ("PartInstallation", "installed_at"),
        ("RolloutOut", "started_at"),
        ("RolloutEventOut", "at"),
    ]:
        prop = schemas[name]["properties"][field]
        formats = [prop.get("format")] + [s.get("format") for s in prop.get("anyOf", [])]
        assert "date-time" in formats, (name, field, prop)
