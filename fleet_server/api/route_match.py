"""Which route template a raw ASGI request is for, before any byte of its body is read.

The ASGI middlewares (body limits, security headers, trailing slashes) run outside
FastAPI's routing, so they resolve the route themselves with Starlette's public
``Route.matches``; the result is the key of :data:`fleet_server.domain.roles.PERMISSIONS`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match

_CONVERTER = re.compile(r"\{(\w+):\w+\}")


def template(path: str) -> str:
    """A route path as OpenAPI and the permission table name it
    (``/tuf/targets/{path:path}`` -> ``/tuf/targets/{path}``)."""
    return _CONVERTER.sub(r"{\1}", path)


def route_template(routes: Sequence[BaseRoute], scope: dict[str, Any]) -> str | None:
    """The template of the route that fully matches ``scope`` (path and method), or None."""
    for route in routes:
        match, _child = route.matches(scope)
        if match == Match.FULL:
            path = getattr(route, "path", None)
            return template(path) if isinstance(path, str) else None
    return None


def path_matches(routes: Sequence[BaseRoute], scope: dict[str, Any], path: str) -> bool:
    """True when some route serves ``path`` for this request's method."""
    probe = {**scope, "path": path, "raw_path": path.encode()}
    return route_template(routes, probe) is not None
