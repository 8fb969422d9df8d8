"""Rendering for the console: the Jinja2 environment, links that keep a list's filters,
and the security headers of console pages.

Templates autoescape every value (device names, notes and fault messages included), and
chart data goes into ``<script type="application/json">`` blocks through ``tojson``,
which escapes ``<``, ``>``, ``&`` and quotes: nothing a device or a user wrote can become
markup or script. The CSP allows scripts and styles from the console's own static files
only, so an injected inline script would not run even if escaping failed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from fleet_server.domain.roles import Role
from fleet_server.services.paging import Page, PageParams

HERE = Path(__file__).parent
PREFIX = "/console"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def when(value: float | None) -> str:
    """Epoch seconds as ``YYYY-MM-DD HH:MM:SSZ`` (``-`` for None)."""
    if value is None:
        return "-"
    return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def number(value: Any, digits: int = 1) -> str:
    """A number for a table cell (``-`` for None)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _json_attr(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


ENV = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters["when"] = when
ENV.filters["num"] = number
ENV.filters["json_attr"] = _json_attr


def link(request: Request, path: str | None = None, **changes: Any) -> str:
    """The current list's URL (or ``path``) with its query changed by ``changes``
    (None removes a parameter): filters survive sorting and paging."""
    params = dict(request.query_params)
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = str(value)
    target = path or request.url.path
    return f"{target}?{urlencode(params)}" if params else target


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render ``template`` with the signed-in user, their role checks and helpers."""
    who = getattr(request.state, "signed_in", None)
    role = Role(who.user.role) if who is not None else None

    def can(needed: str) -> bool:
        return role is not None and role.allows(Role(needed))

    html = ENV.get_template(template).render(
        request=request,
        who=who,
        can=can,
        csrf=who.csrf_token if who is not None else context.pop("login_csrf", ""),
        link=lambda path=None, **kw: link(request, path, **kw),
        prefix=PREFIX,
        **context,
    )
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)


PAGE_SIZE = 50


def page_params(request: Request, size: int = PAGE_SIZE) -> PageParams:
    """The window of a list from ``?page=N`` (1-based; junk reads as 1)."""
    raw = request.query_params.get("page", "1")
    number_ = int(raw) if raw.isdigit() and 0 < int(raw) < 1_000_000 else 1
    return PageParams(size, (number_ - 1) * size)


def pager(page: Page[Any], size: int = PAGE_SIZE) -> dict[str, int]:
    """Where a page sits in its list, for the pager links."""
    current = page.offset // size + 1
    last = max(1, (page.total + size - 1) // size)
    return {"current": current, "last": last, "total": page.total}


def query_value(request: Request, name: str) -> str | None:
    """A non-empty query parameter, stripped, or None."""
    value = request.query_params.get(name, "").strip()
    return value or None
