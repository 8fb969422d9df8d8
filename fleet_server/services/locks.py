"""Cluster-wide exclusive sections: a PostgreSQL session-level advisory lock.

A job that must run in one server instance at a time (sending webhooks, ticking
rollouts) takes the lock on a connection of its own; SQLite has a single writer and one
process, so there the section is always entered.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text


@contextmanager
def advisory_lock(engine: Any, key: int) -> Iterator[bool]:
    """Yield True when this process holds lock ``key`` (always on SQLite), False when
    another instance does; the lock is released on exit."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    with engine.connect() as conn:
        params = {"key": key}
        if not conn.execute(text("SELECT pg_try_advisory_lock(:key)"), params).scalar():
            yield False
            return
        try:
            yield True
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), params)
            conn.commit()
