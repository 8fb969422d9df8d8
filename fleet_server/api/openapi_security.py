"""Declare the API's authentication in its OpenAPI schema, from the permission table.

Every operation whose permission entry names a role gets ``security: [{bearerToken: []}]``
and a sentence saying the lowest role; public operations get none. Clients and tools such
as schemathesis then know which operations must refuse a request without a token.
"""

from __future__ import annotations

from typing import Any

from fleet_server.domain.roles import PERMISSIONS

SCHEME = "bearerToken"


def declare_security(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the bearer scheme and per-operation ``security`` to ``schema`` (in place)."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token `efk_...` (`fleet-server token create`, POST /api/v1/tokens)",
    }
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method == "parameters" or not isinstance(operation, dict):
                continue
            role = PERMISSIONS.get((method.upper(), path))
            if role is None:
                operation["security"] = []
                continue
            operation["security"] = [{SCHEME: []}]
            note = f"Requires the `{role.value}` role or above."
            described = operation.get("description", "")
            if note not in described:
                operation["description"] = f"{described}\n\n{note}".strip()
    return schema
