"""Deprecated home of the paging helper: use :mod:`fleet_server.services.paging`.

Kept as a thin re-export for routers not yet moved to services; it returns the old
``(rows, total)`` pair.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session

from fleet_server.services import paging
from fleet_server.services.paging import PageParams


def fetch_page(session: Session, query: Select[Any], params: PageParams) -> tuple[list[Any], int]:
    """The rows of ``query`` in the requested window, and the total row count."""
    page = paging.fetch_page(session, query, params)
    return page.items, page.total
