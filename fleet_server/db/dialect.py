"""Dialect-specific statements shared by services (both back-ends support them)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import msgspec
import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Float,
    Integer,
    String,
    Table,
    any_,
    bindparam,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session


@contextmanager
def _driver_errors(sql: str) -> Iterator[None]:
    """Raise a driver error of a statement sent past SQLAlchemy as SQLAlchemy's own
    (``IntegrityError``, ``DataError``, ``OperationalError``...), as if SQLAlchemy had
    sent it: callers handle one error family whichever way a statement went."""
    try:
        yield
    except psycopg.Error as exc:
        raise DBAPIError.instance(sql, None, exc, psycopg.Error) from exc
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc


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


def select_in(
    session: Session, columns: Sequence[Column[Any]], key: Column[Any], values: Sequence[Any]
) -> list[Any]:
    """``SELECT columns WHERE key IN values``: rows whose fields are named after the
    columns. On PostgreSQL straight through the driver (``= ANY(%s)``, one parameter: an
    array literal, see :func:`_array_literal`), skipping the ORM's and the driver's
    per-value work on the ingest's per-batch device lookup."""
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        return list(session.execute(select(*columns).where(key.in_(list(values)))).all())
    table = key.table.name
    names = ", ".join(f'"{c.name}"' for c in columns)
    kind = key.type.compile(dialect=conn.dialect)
    sql = f'SELECT {names} FROM "{table}" WHERE "{key.name}" = ANY(%s::{kind}[])'
    driver = conn.connection.driver_connection
    with driver.cursor(row_factory=namedtuple_row) as cur, _driver_errors(sql):
        cur.execute(sql, (_array_literal(list(values), _literal_kind(key.type)),))
        return cur.fetchall()


def lock_in_order(session: Session, key: Column[Any], values: Sequence[Any]) -> None:
    """On PostgreSQL lock the rows whose ``key`` is in ``values`` for update, in ``key``
    order (``SELECT ... ORDER BY key FOR NO KEY UPDATE``, the lock an ``UPDATE`` takes):
    transactions that lock the rows they are about to update this way first cannot
    deadlock on them, whatever order their updates' plans visit the rows in. SQLite
    writes one transaction at a time: nothing to do."""
    conn = session.connection()
    if conn.dialect.name != "postgresql" or not values:
        return
    kind = key.type.compile(dialect=conn.dialect)
    sql = (
        f'SELECT 1 FROM "{key.table.name}" WHERE "{key.name}" = ANY(%s::{kind}[]) '
        f'ORDER BY "{key.name}" FOR NO KEY UPDATE'
    )
    with conn.connection.driver_connection.cursor() as cur, _driver_errors(sql):
        cur.execute(sql, (_array_literal(sorted(values), "plain"),))


def insert_new_rows(session: Session, table: Table, columns: dict[str, list[Any]]) -> set[int]:
    """Insert the rows given column by column (``columns[name][i]`` is row ``i``'s
    value), skipping those whose primary key is already stored; return the indexes of
    the rows skipped (usually none). The rows' primary keys must differ from each other.

    PostgreSQL: one ``WITH u AS (SELECT FROM unnest(<one array per column>)) INSERT
    ... ON CONFLICT DO NOTHING`` whose answer is only the skipped rows' indexes: every
    row in one statement and one round trip. Each array is sent as one text literal
    built with ``str.join`` (the driver's per-element array adaptation was most of the
    ingest's CPU per message). SQLite: multi-row ``INSERT OR IGNORE ... RETURNING``.
    """
    if not columns:
        return set()
    conn = session.connection()
    raw = conn.connection.driver_connection
    if conn.dialect.name != "postgresql":
        return _sqlite_insert_new(raw, table, columns)
    names = list(columns)
    sql, kinds = _insert_new_sql(table, tuple(names), conn.dialect)
    params = [_array_literal(columns[c], kind) for c, kind in zip(names, kinds, strict=True)]
    with raw.cursor() as cur, _driver_errors(sql):
        cur.execute(sql, params)
        return {int(r[0]) - 1 for r in cur.fetchall()}


_SQL_CACHE: dict[tuple[str, tuple[str, ...]], tuple[str, list[str]]] = {}


def _insert_new_sql(table: Table, names: tuple[str, ...], dialect: Any) -> tuple[str, list[str]]:
    """The statement of :func:`insert_new_rows` and each column's literal kind
    (``number``, ``text``, ``json`` or ``plain``), built once per table and column
    list."""
    cached = _SQL_CACHE.get((table.name, names))
    if cached is not None:
        return cached
    kinds: list[str] = []
    arrays: list[str] = []
    for c in names:
        kind = table.c[c].type
        arrays.append(f"%s::{kind.compile(dialect=dialect)}[]")
        kinds.append(_literal_kind(kind))
    cols = ", ".join(f'"{c}"' for c in names)
    keys = [c.name for c in table.primary_key.columns]
    returning = ", ".join(f'"{k}"' for k in keys)
    join = " AND ".join(f'u."{k}" = i."{k}"' for k in keys)
    sql = (
        f"WITH u AS (SELECT * FROM unnest({', '.join(arrays)}) WITH ORDINALITY "
        f'AS u({cols}, "_n")), i AS (INSERT INTO "{table.name}" ({cols}) SELECT {cols} '
        f"FROM u ON CONFLICT DO NOTHING RETURNING {returning}) "
        f'SELECT u."_n" FROM u LEFT JOIN i ON {join} WHERE i."{keys[0]}" IS NULL'
    )
    if len(_SQL_CACHE) >= 1024:  # one entry per table and set of columns sent
        _SQL_CACHE.clear()
    _SQL_CACHE[(table.name, names)] = (sql, kinds)
    return sql, kinds


_JSON = msgspec.json.Encoder()


def _literal_kind(kind: Any) -> str:
    """How :func:`_array_literal` writes the values of a column of type ``kind``."""
    if isinstance(kind, Integer | Float):
        return "number"
    if isinstance(kind, JSON):
        return "json"
    if isinstance(kind, String):
        return "text"
    return "plain"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _array_literal(values: list[Any], kind: str) -> str:
    """A PostgreSQL array literal of ``values`` (``None`` is ``NULL``): numbers as JSON
    gives them in one call (shortest exact form; ``null`` is ``NULL`` in an array
    literal), or, with a NaN or an infinity among them (also ``null`` in JSON), as
    ``str`` gives them; other plain values as ``str`` gives them (accepted by the
    server's input functions), text and JSON quoted and escaped."""
    if kind == "number":
        try:
            text: bytes | None = _JSON.encode(values)
        except (TypeError, OverflowError):  # not plain numbers: formatted one by one
            text = None
        if text is not None and text.count(b"null") == values.count(None):
            return "{" + text[1:-1].decode() + "}"
        cells = ["NULL" if v is None else str(v) for v in values]
    elif kind == "plain":
        if None not in values:
            return "{" + ",".join(map(str, values)) + "}"
        cells = ["NULL" if v is None else str(v) for v in values]
    elif kind == "text":
        if None not in values:
            try:
                joined = '","'.join(values)
            except TypeError:  # a value that is not a str: quoted one by one below
                joined = '"'
            if "\\" not in joined and joined.count('"') == 2 * (len(values) - 1):
                return '{"' + joined + '"}'  # no value holds a quote or a backslash
        cells = ["NULL" if v is None else _quoted(str(v)) for v in values]
    else:
        cells = ["NULL" if v is None else _quoted(json.dumps(v)) for v in values]
    return "{" + ",".join(cells) + "}"


_SQLITE_MAX_VARIABLES = 32766


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


def _sqlite_insert_new(raw: Any, table: Table, columns: dict[str, list[Any]]) -> set[int]:
    names = list(columns)
    keys = [c.name for c in table.primary_key.columns]
    cols = ", ".join(f'"{c}"' for c in names)
    head = f'INSERT OR IGNORE INTO "{table.name}" ({cols}) VALUES '
    tail = " RETURNING " + ", ".join(f'"{k}"' for k in keys)
    one = "(" + ", ".join("?" * len(names)) + ")"
    tuples = list(zip(*columns.values(), strict=True))
    if any(isinstance(v, dict | list) for t in tuples for v in t):
        tuples = [tuple(_cell(v) for v in t) for t in tuples]
    chunk = max(1, _SQLITE_MAX_VARIABLES // len(names))
    stored: set[tuple[Any, ...]] = set()
    cur = raw.cursor()
    try:
        for start in range(0, len(tuples), chunk):
            part = tuples[start : start + chunk]
            sql = head + ", ".join([one] * len(part)) + tail
            with _driver_errors(sql):
                cur.execute(sql, [v for t in part for v in t])
                stored.update(tuple(r) for r in cur.fetchall())
    finally:
        cur.close()
    at = [names.index(k) for k in keys]
    return {i for i, t in enumerate(tuples) if tuple(t[j] for j in at) not in stored}


def bulk_update(session: Session, table: Table, key: str, rows: list[dict[str, Any]]) -> None:
    """``UPDATE table SET <the rows' other columns> WHERE key = row["k"]`` for every row
    (every row has the same keys, one of them ``"k"``).

    PostgreSQL: one statement for all the rows, joined to the rows sent as one JSON
    parameter (``jsonb_to_recordset``; encoded by msgspec, or by ``json`` when a value is
    ``null`` there, to tell a None from a NaN), instead of one UPDATE per row: the
    ingest updates every device of a batch once per batch. Elsewhere (or when a value
    cannot be sent as JSON, a NaN) ``executemany``.
    """
    if not rows:
        return
    conn = session.connection()
    columns = [c for c in rows[0] if c != "k"]
    if conn.dialect.name == "postgresql":
        doc = _JSON.encode(rows).decode()
        if "null" in doc:
            # A None, or a NaN or an infinity (which JSON cannot carry: executemany).
            try:
                doc = json.dumps(rows, allow_nan=False)
            except ValueError:
                doc = None
        if doc is not None:
            kinds = [f'"{c}" {table.c[c].type.compile(dialect=conn.dialect)}' for c in columns]
            kinds.append(f'"k" {table.c[key].type.compile(dialect=conn.dialect)}')
            sets = ", ".join(f'"{c}" = v."{c}"' for c in columns)
            sql = (
                f'UPDATE "{table.name}" AS t SET {sets} FROM '
                f"jsonb_to_recordset(%s::jsonb) AS v({', '.join(kinds)}) "
                f'WHERE t."{key}" = v."k"'
            )
            with conn.connection.driver_connection.cursor() as cur, _driver_errors(sql):
                cur.execute(sql, (doc,))
            return
    conn.execute(
        table.update()
        .where(table.c[key] == bindparam("k"))
        .values(**{c: bindparam(c) for c in columns}),
        rows,
    )
