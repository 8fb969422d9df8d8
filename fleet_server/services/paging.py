"""One page of a query, cut in SQL (``LIMIT``/``OFFSET`` plus one count), never in Python.

Every list the API or the console shows goes through :func:`fetch_page`; routes turn the
:class:`Page` into the response body (``items``, ``total``, ``next_cursor``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class PageParams:
    """Which window of a list is asked for: at most ``limit`` rows from ``offset``."""

    limit: int
    offset: int


@dataclass(frozen=True)
class Page(Generic[T]):
    """The rows of one window, the total count of the whole list, and where it started."""

    items: list[T]
    total: int
    offset: int

    @property
    def next_offset(self) -> int | None:
        """Where the next page starts, or None when this one is the last."""
        end = self.offset + len(self.items)
        return end if end < self.total else None

    def map(self, fn: Callable[[T], U]) -> Page[U]:
        """The same page with every item passed through ``fn`` (shaping for the caller)."""
        return Page([fn(item) for item in self.items], self.total, self.offset)


def fetch_page(
    session: Session, query: Select[Any], params: PageParams, *, scalars: bool = False
) -> Page[Any]:
    """The rows of ``query`` (ordered by the caller) in the requested window and the total.

    With ``scalars`` each item is the row's first column (``select(Model)`` gives models),
    otherwise the whole row (``select(Model, Other.column)`` gives tuples).
    """
    total = session.execute(
        select(func.count()).select_from(query.order_by(None).subquery())
    ).scalar_one()
    window = session.execute(query.limit(params.limit).offset(params.offset))
    items = list(window.scalars()) if scalars else list(window.all())
    return Page(items, int(total), params.offset)
