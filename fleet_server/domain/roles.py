"""Roles and the permission table: which role may call which endpoint.

Roles are ordered ``viewer < technician < operator < admin``; a route declares the
lowest role allowed. Viewers read, technicians read everything and run diagnostics,
operators change the fleet, admins also manage tokens. The table is data so a test can
check that every route of the app has an entry (a new endpoint without a declared
permission fails that test instead of being silently open or closed).
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """API token roles, least privileged first."""

    VIEWER = "viewer"
    TECHNICIAN = "technician"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """Position in the privilege order (viewer = 0)."""
        return _ORDER.index(self)

    def allows(self, required: Role) -> bool:
        """True when this role is at least ``required``."""
        return self.rank >= required.rank


_ORDER = [Role.VIEWER, Role.TECHNICIAN, Role.OPERATOR, Role.ADMIN]

PUBLIC = None
"""Marker for routes that need no token (they expose no device data or carry their own
one-time credential)."""

API = "/api/v1"

PERMISSIONS: dict[tuple[str, str], Role | None] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("POST", f"{API}/diagnostics/upload/{{token}}"): PUBLIC,
    ("GET", f"{API}/whoami"): Role.VIEWER,
    ("GET", f"{API}/devices"): Role.VIEWER,
    ("POST", f"{API}/devices"): Role.OPERATOR,
    ("POST", f"{API}/devices/import"): Role.OPERATOR,
    ("GET", f"{API}/devices/{{device_id}}"): Role.VIEWER,
    ("PATCH", f"{API}/devices/{{device_id}}"): Role.OPERATOR,
    ("POST", f"{API}/devices/{{device_id}}/decommission"): Role.OPERATOR,
    ("GET", f"{API}/devices/{{device_id}}/telemetry"): Role.VIEWER,
    ("GET", f"{API}/devices/{{device_id}}/events"): Role.VIEWER,
    ("GET", f"{API}/devices/{{device_id}}/alarms"): Role.VIEWER,
    ("GET", f"{API}/devices/{{device_id}}/commands"): Role.VIEWER,
    # The body's command kind is checked against COMMAND_ROLES as well.
    ("POST", f"{API}/devices/{{device_id}}/commands"): Role.TECHNICIAN,
    ("GET", f"{API}/devices/{{device_id}}/diagnostics"): Role.TECHNICIAN,
    ("GET", f"{API}/diagnostics/{{bundle_id}}"): Role.TECHNICIAN,
    ("GET", f"{API}/alarms"): Role.VIEWER,
    ("POST", f"{API}/alarms/{{alarm_id}}/ack"): Role.OPERATOR,
    ("GET", f"{API}/fleet/fault-rates"): Role.VIEWER,
    ("GET", f"{API}/fleet/summary"): Role.VIEWER,
    ("GET", f"{API}/audit"): Role.TECHNICIAN,
    ("GET", f"{API}/tokens"): Role.ADMIN,
    ("POST", f"{API}/tokens"): Role.ADMIN,
    ("DELETE", f"{API}/tokens/{{token_id}}"): Role.ADMIN,
    # Device credentials: operators provision and certify; revoking outside a
    # decommission is an admin's call.
    ("POST", f"{API}/devices/{{device_id}}/provision"): Role.OPERATOR,
    ("POST", f"{API}/devices/{{device_id}}/certificate"): Role.OPERATOR,
    ("POST", f"{API}/devices/{{device_id}}/revoke"): Role.ADMIN,
}

COMMAND_ROLES: dict[str, Role] = {
    "collect_diagnostics": Role.TECHNICIAN,
    "reboot": Role.OPERATOR,
    "check_update": Role.OPERATOR,
}
"""Lowest role allowed to send each command kind through the commands endpoint."""


class UndeclaredRouteError(LookupError):
    """A route has no entry in the permission table."""


def required_role(method: str, path: str) -> Role | None:
    """The lowest role for ``method`` on the route template ``path`` (None = public).

    Raises :class:`UndeclaredRouteError` for a route nobody declared: closed by default.
    """
    try:
        return PERMISSIONS[(method.upper(), path)]
    except KeyError:
        raise UndeclaredRouteError(f"{method} {path} has no declared permission") from None
