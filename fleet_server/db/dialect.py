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

    SQLite: one ``executemany`` (fast, in C). PostgreSQL: ``COPY`` into a session-local
    staging table, then one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` — several
    times faster than row-by-row inserts, which dominate the ingest path otherwise.
    """
    if not rows:
        return []
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        stmt = insert_ignore(session, table)
        if returning:
            stmt = stmt.returning(*(table.c[name] for name in returning))
            return [tuple(r) for r in conn.execute(stmt, rows).all()]
        conn.execute(stmt, rows)
        return []
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
