"""Dialect-specific statements shared by services (both back-ends support them)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_ignore(session: Session, table: Any) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the session's back-end."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing()


def bulk_insert_ignore(
    session: Session,
    table: Table,
    rows: list[dict[str, Any]],
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """Insert many rows, skipping those that hit a unique key; return ``returning``
    columns of the rows actually inserted.

    SQLite: plain DB-API calls with tuples (``executemany``, or multi-row ``VALUES`` when
    rows must be returned), skipping SQLAlchemy's per-row parameter processing.
    PostgreSQL: ``COPY`` into a session-local staging table, then one
    ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``: several times faster than
    row-by-row inserts, which dominate the ingest path otherwise.
    """
    if not rows:
        return []
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        raw = conn.connection.driver_connection
        return _sqlite_insert_ignore(raw, table, rows, returning)
    columns = list(rows[0])
    names = ", ".join(f'"{c}"' for c in columns)
    stage = f"_stage_{table.name}"
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:
        cur.execute(
            f'CREATE TEMP TABLE IF NOT EXISTS "{stage}" '
            f'(LIKE "{table.name}" INCLUDING DEFAULTS) ON COMMIT DELETE ROWS'
        )
        with cur.copy(f'COPY "{stage}" ({names}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(
                    [
                        json.dumps(v) if isinstance(v, dict | list) else v
                        for v in (row[c] for c in columns)
                    ]
                )
        sql = (
            f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM "{stage}" '
            "ON CONFLICT DO NOTHING"
        )
        if returning:
            sql += " RETURNING " + ", ".join(f'"{c}"' for c in returning)
        cur.execute(sql)
        out = [tuple(r) for r in cur.fetchall()] if returning else []
        cur.execute(f'DELETE FROM "{stage}"')
    return out


_SQLITE_MAX_VARIABLES = 32766


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


def _sqlite_insert_ignore(
    raw: Any, table: Table, rows: list[dict[str, Any]], returning: Sequence[str]
) -> list[tuple[Any, ...]]:
    columns = list(rows[0])
    names = ", ".join(f'"{c}"' for c in columns)
    head = f'INSERT OR IGNORE INTO "{table.name}" ({names}) VALUES '
    one = "(" + ", ".join("?" * len(columns)) + ")"
    tuples = [tuple(_cell(row[c]) for c in columns) for row in rows]
    cur = raw.cursor()
    try:
        if not returning:
            cur.executemany(head + one, tuples)
            return []
        tail = " RETURNING " + ", ".join(f'"{c}"' for c in returning)
        chunk = max(1, _SQLITE_MAX_VARIABLES // len(columns))
        out: list[tuple[Any, ...]] = []
        for start in range(0, len(tuples), chunk):
            part = tuples[start : start + chunk]
            sql = head + ", ".join([one] * len(part)) + tail
            cur.execute(sql, [v for t in part for v in t])
            out += [tuple(r) for r in cur.fetchall()]
        return out
    finally:
        cur.close()
