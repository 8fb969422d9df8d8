"""One page of a query in SQL (``LIMIT``/``OFFSET`` plus a count), not in Python."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from fleet_server.api.deps import PageParams


def fetch_page(session: Session, query: Select[Any], params: PageParams) -> tuple[list[Any], int]:
    """The rows of ``query`` in the requested window, and the total row count."""
    total = session.execute(
        select(func.count()).select_from(query.order_by(None).subquery())
    ).scalar_one()
    rows = list(session.execute(query.limit(params.limit).offset(params.offset)).all())
    return rows, int(total)
