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
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("POST", f"{API}/diagnostics/upload/{{token}}"): PUBLIC,
    ("GET", f"{API}/whoami"): Role.VIEWER,
    ("GET", f"{API}/devices"): Role.VIEWER,
    ("POST", f"{API}/devices"): Role.OPERATOR,
    ("POST", f"{API}/devices/import"): Role.OPERATOR,
    ("GET", f"{API}/devices/{{device_id}}"): Role.VIEWER,
    ("PATCH", f"{API}/devices/{{device_id}}"): Role.OPERATOR,
    ("POST", f"{API}/devices/{{device_id}}/decommission"): Role.OPERATOR,
    ("POST", f"{API}/devices/{{device_id}}/unquarantine"): Role.OPERATOR,
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
    # OTA: bundle catalogue, deployments, and the TUF repository devices read (signed
    # metadata and targets, so no token: TUF verifies what it downloads).
    ("GET", f"{API}/bundles"): Role.VIEWER,
    ("POST", f"{API}/bundles"): Role.OPERATOR,
    ("GET", f"{API}/bundles/{{name}}"): Role.VIEWER,
    # software composition, licences and vulnerability exposure
    ("GET", f"{API}/bundles/{{name}}/components"): Role.VIEWER,
    ("GET", f"{API}/bundles/{{name}}/licence-review"): Role.VIEWER,
    ("POST", f"{API}/bundles/{{name}}/licence-review"): Role.ADMIN,
    ("POST", f"{API}/bundles/{{name}}/vex"): Role.OPERATOR,
    ("GET", f"{API}/releases/{{version}}/notices"): Role.VIEWER,
    ("GET", f"{API}/licence-policies/{{model}}"): Role.VIEWER,
    ("PUT", f"{API}/licence-policies/{{model}}"): Role.ADMIN,
    ("POST", f"{API}/licence-policies/{{model}}/waivers"): Role.ADMIN,
    ("GET", f"{API}/inventory"): Role.VIEWER,
    ("GET", f"{API}/devices/{{device_id}}/components"): Role.VIEWER,
    ("POST", f"{API}/advisories/import"): Role.OPERATOR,
    ("GET", f"{API}/advisories"): Role.VIEWER,
    ("GET", f"{API}/advisories/events"): Role.VIEWER,
    ("GET", f"{API}/advisories/{{advisory_id}}"): Role.VIEWER,
    ("GET", f"{API}/advisories/{{advisory_id}}/devices"): Role.VIEWER,
    ("POST", f"{API}/advisories/{{advisory_id}}/remedy"): Role.OPERATOR,
    ("POST", f"{API}/devices/{{device_id}}/update"): Role.OPERATOR,
    ("GET", f"{API}/executions"): Role.VIEWER,
    ("GET", f"{API}/executions/{{execution_id}}"): Role.VIEWER,
    ("POST", f"{API}/executions/{{execution_id}}/cancel"): Role.OPERATOR,
    # staged rollouts (forcing a production start is further limited to admins)
    ("POST", f"{API}/rollouts/dry-run"): Role.VIEWER,
    ("GET", f"{API}/rollouts/explain/{{device_id}}"): Role.VIEWER,
    ("POST", f"{API}/rollouts"): Role.OPERATOR,
    ("GET", f"{API}/rollouts"): Role.VIEWER,
    ("GET", f"{API}/rollouts/{{rollout_id}}"): Role.VIEWER,
    ("GET", f"{API}/rollouts/{{rollout_id}}/events"): Role.VIEWER,
    ("POST", f"{API}/rollouts/{{rollout_id}}/start"): Role.OPERATOR,
    ("POST", f"{API}/rollouts/{{rollout_id}}/pause"): Role.OPERATOR,
    ("POST", f"{API}/rollouts/{{rollout_id}}/resume"): Role.OPERATOR,
    ("POST", f"{API}/rollouts/{{rollout_id}}/cancel"): Role.OPERATOR,
    ("POST", f"{API}/rollouts/{{rollout_id}}/rollback"): Role.OPERATOR,
    ("GET", "/tuf/metadata/{name}"): PUBLIC,
    ("HEAD", "/tuf/metadata/{name}"): PUBLIC,
    ("GET", "/tuf/targets/{path}"): PUBLIC,
    ("HEAD", "/tuf/targets/{path}"): PUBLIC,
    # recalls, warranty, RMA and parts
    ("GET", f"{API}/recalls"): Role.VIEWER,
    ("POST", f"{API}/recalls"): Role.OPERATOR,
    ("GET", f"{API}/recalls/blocked-versions"): Role.VIEWER,
    ("GET", f"{API}/recalls/{{campaign_id}}"): Role.VIEWER,
    ("GET", f"{API}/recalls/{{campaign_id}}/preview"): Role.VIEWER,
    ("POST", f"{API}/recalls/{{campaign_id}}/open"): Role.OPERATOR,
    ("POST", f"{API}/recalls/{{campaign_id}}/close"): Role.OPERATOR,
    ("GET", f"{API}/recalls/{{campaign_id}}/devices"): Role.VIEWER,
    ("POST", f"{API}/recalls/{{campaign_id}}/devices"): Role.OPERATOR,
    ("GET", f"{API}/recalls/{{campaign_id}}/devices/{{device_id}}"): Role.VIEWER,
    ("POST", f"{API}/recalls/{{campaign_id}}/devices/{{device_id}}/state"): Role.OPERATOR,
    ("POST", f"{API}/recalls/{{campaign_id}}/outcomes"): Role.OPERATOR,
    ("PUT", f"{API}/recalls/{{campaign_id}}/remedy-rollout"): Role.OPERATOR,
    ("POST", f"{API}/recalls/{{campaign_id}}/safe-mode"): Role.ADMIN,
    ("GET", f"{API}/recalls/{{campaign_id}}/remedy-targets"): Role.VIEWER,
    ("GET", f"{API}/recalls/{{campaign_id}}/progress"): Role.VIEWER,
    ("GET", f"{API}/recalls/{{campaign_id}}/export/affected.csv"): Role.VIEWER,
    ("GET", f"{API}/recalls/{{campaign_id}}/export/progress.csv"): Role.VIEWER,
    ("GET", f"{API}/warranty/rules"): Role.VIEWER,
    ("PUT", f"{API}/warranty/rules"): Role.OPERATOR,
    ("GET", f"{API}/claims"): Role.VIEWER,
    ("POST", f"{API}/claims"): Role.OPERATOR,
    ("GET", f"{API}/claims/{{claim_id}}"): Role.VIEWER,
    ("POST", f"{API}/claims/{{claim_id}}/decision"): Role.OPERATOR,
    ("POST", f"{API}/claims/{{claim_id}}/recheck"): Role.OPERATOR,
    ("GET", f"{API}/rmas"): Role.VIEWER,
    ("POST", f"{API}/rmas"): Role.OPERATOR,
    ("GET", f"{API}/rmas/{{rma_id}}"): Role.VIEWER,
    ("POST", f"{API}/rmas/{{rma_id}}/transition"): Role.OPERATOR,
    ("GET", f"{API}/parts"): Role.VIEWER,
    ("POST", f"{API}/parts"): Role.OPERATOR,
    ("GET", f"{API}/parts/{{serial}}"): Role.VIEWER,
    ("POST", f"{API}/parts/{{serial}}/install"): Role.OPERATOR,
    ("GET", f"{API}/analytics/parts-reliability"): Role.VIEWER,
    ("GET", f"{API}/analytics/weibull"): Role.VIEWER,
    ("GET", f"{API}/analytics/claims"): Role.VIEWER,
    ("GET", f"{API}/analytics/rates"): Role.VIEWER,
    ("GET", f"{API}/analytics/growth"): Role.VIEWER,
    # Device credentials: operators provision and certify; revoking outside a
    # decommission is an admin's call.
    ("POST", f"{API}/devices/{{device_id}}/provision"): Role.OPERATOR,
    ("POST", f"{API}/devices/{{device_id}}/certificate"): Role.OPERATOR,
    ("POST", f"{API}/devices/{{device_id}}/revoke"): Role.ADMIN,
    # Webhooks: URLs may embed a receiver's credentials, so operators read them; creating
    # or removing an outgoing integration (and its signing secret) is an admin's call.
    ("GET", f"{API}/webhooks"): Role.OPERATOR,
    ("POST", f"{API}/webhooks"): Role.ADMIN,
    ("GET", f"{API}/webhooks/{{webhook_id}}"): Role.OPERATOR,
    ("PATCH", f"{API}/webhooks/{{webhook_id}}"): Role.ADMIN,
    ("DELETE", f"{API}/webhooks/{{webhook_id}}"): Role.ADMIN,
    ("GET", f"{API}/webhooks/{{webhook_id}}/deliveries"): Role.OPERATOR,
    ("POST", f"{API}/webhooks/{{webhook_id}}/test"): Role.OPERATOR,
    # Saved device groups and bulk actions (each bulk action is further limited by
    # BULK_ROLES: technicians may only collect diagnostics).
    ("GET", f"{API}/groups"): Role.VIEWER,
    ("POST", f"{API}/groups"): Role.OPERATOR,
    ("GET", f"{API}/groups/{{group_name}}"): Role.VIEWER,
    ("PATCH", f"{API}/groups/{{group_name}}"): Role.OPERATOR,
    ("DELETE", f"{API}/groups/{{group_name}}"): Role.OPERATOR,
    ("GET", f"{API}/groups/{{group_name}}/devices"): Role.VIEWER,
    ("POST", f"{API}/bulk"): Role.TECHNICIAN,
    # Support: anyone reads tickets (viewers without internal comments); technicians work
    # them; importing a helpdesk's history is an operator's call.
    ("GET", f"{API}/tickets"): Role.VIEWER,
    ("POST", f"{API}/tickets"): Role.TECHNICIAN,
    ("GET", f"{API}/tickets/breaching"): Role.VIEWER,
    ("POST", f"{API}/tickets/import"): Role.OPERATOR,
    ("GET", f"{API}/tickets/{{number}}"): Role.VIEWER,
    ("PATCH", f"{API}/tickets/{{number}}"): Role.TECHNICIAN,
    ("POST", f"{API}/tickets/{{number}}/transition"): Role.TECHNICIAN,
    ("POST", f"{API}/tickets/{{number}}/comments"): Role.TECHNICIAN,
    ("POST", f"{API}/tickets/{{number}}/links"): Role.TECHNICIAN,
    ("DELETE", f"{API}/tickets/{{number}}/links/{{kind}}/{{ref}}"): Role.TECHNICIAN,
    ("GET", f"{API}/tickets/{{number}}/sla"): Role.VIEWER,
    ("GET", f"{API}/tickets/{{number}}/timeline"): Role.VIEWER,
    ("GET", f"{API}/devices/{{device_id}}/tickets"): Role.VIEWER,
    ("GET", f"{API}/support/vendors"): Role.VIEWER,
    ("GET", f"{API}/support/analytics"): Role.VIEWER,
    ("GET", f"{API}/status"): Role.VIEWER,
    # What the console draws, for scripts too
    ("GET", f"{API}/fleet/overview"): Role.VIEWER,
    ("GET", f"{API}/devices/{{device_id}}/series"): Role.VIEWER,
    # Console users (people; tokens stay for scripts and devices)
    ("GET", f"{API}/users"): Role.ADMIN,
    ("POST", f"{API}/users"): Role.ADMIN,
    ("PATCH", f"{API}/users/{{username}}"): Role.ADMIN,
    ("POST", f"{API}/users/{{username}}/logout"): Role.ADMIN,
}

COMMAND_ROLES: dict[str, Role] = {
    "collect_diagnostics": Role.TECHNICIAN,
    "reboot": Role.OPERATOR,
    "check_update": Role.OPERATOR,
}
"""Lowest role allowed to send each command kind through the commands endpoint."""

BULK_ROLES: dict[str, Role] = {
    "tag": Role.OPERATOR,
    "untag": Role.OPERATOR,
    "set_fields": Role.OPERATOR,
    **COMMAND_ROLES,
}
"""Lowest role allowed to run each bulk action (commands as for one device)."""


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
