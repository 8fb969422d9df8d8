"""Dialect-specific statements shared by services (both back-ends support them)."""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, ColumnElement, Table, any_, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_ignore(session: Session, table: Any) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the session's back-end."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing()


def in_values(session: Session, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    """``column IN values``; on PostgreSQL ``column = ANY(:array)``, one parameter
    instead of one per value, so the statement text stays the same for any number of
    values (no per-call query parsing by the driver, a plan the server can reuse)."""
    if session.get_bind().dialect.name == "postgresql":
        array = postgresql.ARRAY(column.type)
        return column == any_(bindparam(None, list(values), type_=array))
    return column.in_(list(values))


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
    PostgreSQL: one ``INSERT ... SELECT FROM unnest(<one array per column>) ON CONFLICT
    DO NOTHING RETURNING ...``: every row in one statement and one round trip (a staging
    table filled by ``COPY`` took four), which matters most on a busy database host.
    """
    if not rows:
        return []
    conn = session.connection()
    raw = conn.connection.driver_connection
    if conn.dialect.name != "postgresql":
        return _sqlite_insert_ignore(raw, table, rows, returning)
    columns = list(rows[0])
    names = ", ".join(f'"{c}"' for c in columns)
    arrays: list[str] = []
    picks: list[str] = []
    params: list[list[Any]] = []
    for c in columns:
        kind = table.c[c].type.compile(dialect=conn.dialect)
        values = [row[c] for row in rows]
        if isinstance(table.c[c].type, JSON):
            # Sent as text and cast per row (psycopg has no array-of-json dumper).
            arrays.append("%s::text[]")
            picks.append(f'"{c}"::{kind}')
            params.append([None if v is None else json.dumps(v) for v in values])
        else:
            arrays.append(f"%s::{kind}[]")
            picks.append(f'"{c}"')
            params.append(values)
    sql = (
        f'INSERT INTO "{table.name}" ({names}) SELECT {", ".join(picks)} '
        f"FROM unnest({', '.join(arrays)}) AS u({names}) ON CONFLICT DO NOTHING"
    )
    if returning:
        sql += " RETURNING " + ", ".join(f'"{c}"' for c in returning)
    with raw.cursor() as cur:
        cur.execute(sql, params)
        return [tuple(r) for r in cur.fetchall()] if returning else []


_SQLITE_MAX_VARIABLES = 32766


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


def _tuples(rows: list[dict[str, Any]], columns: list[str]) -> list[tuple[Any, ...]]:
    """The rows as tuples in ``columns`` order, JSON values encoded; the per-cell JSON
    check is skipped when no row has a dict or list (telemetry, dedupe keys: the hot
    path of the ingest)."""
    pick = operator.itemgetter(*columns)
    one = len(columns) == 1
    tuples = [(pick(row),) if one else pick(row) for row in rows]
    if any(isinstance(v, dict | list) for t in tuples for v in t):
        return [tuple(_cell(v) for v in t) for t in tuples]
    return tuples


def _sqlite_insert_ignore(
    raw: Any, table: Table, rows: list[dict[str, Any]], returning: Sequence[str]
) -> list[tuple[Any, ...]]:
    columns = list(rows[0])
    names = ", ".join(f'"{c}"' for c in columns)
    head = f'INSERT OR IGNORE INTO "{table.name}" ({names}) VALUES '
    one = "(" + ", ".join("?" * len(columns)) + ")"
    tuples = _tuples(rows, columns)
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


def bulk_update(session: Session, table: Table, key: str, rows: list[dict[str, Any]]) -> None:
    """``UPDATE table SET <the rows' other columns> WHERE key = row["k"]`` for every row
    (every row has the same keys, one of them ``"k"``).

    PostgreSQL: one statement for all the rows, joined to the rows sent as one JSON
    parameter (``jsonb_to_recordset``), instead of one UPDATE per row: the ingest
    updates every device of a batch once per batch. Elsewhere (or when a value cannot be
    sent as JSON, a NaN) ``executemany``.
    """
    if not rows:
        return
    conn = session.connection()
    columns = [c for c in rows[0] if c != "k"]
    if conn.dialect.name == "postgresql":
        try:
            doc = json.dumps(rows, allow_nan=False)
        except ValueError:
            doc = None
        if doc is not None:
            kinds = [f'"{c}" {table.c[c].type.compile(dialect=conn.dialect)}' for c in columns]
            kinds.append(f'"k" {table.c[key].type.compile(dialect=conn.dialect)}')
            sets = ", ".join(f'"{c}" = v."{c}"' for c in columns)
            raw = conn.connection.driver_connection
            with raw.cursor() as cur:
                cur.execute(
                    f'UPDATE "{table.name}" AS t SET {sets} FROM '
                    f"jsonb_to_recordset(%s::jsonb) AS v({', '.join(kinds)}) "
                    f'WHERE t."{key}" = v."k"',
                    (doc,),
                )
            return
    conn.execute(
        table.update()
        .where(table.c[key] == bindparam("k"))
        .values(**{c: bindparam(c) for c in columns}),
        rows,
    )
