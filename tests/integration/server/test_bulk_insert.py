"""``insert_new_rows``: the ingest's one-statement insert on both back-ends, with the
values that need care in a PostgreSQL array literal (quotes, backslashes, braces, the
word NULL, JSON, booleans, exact floats) and the indexes of the rows it skipped; and
``lock_in_order``, which keeps two ingest workers sharing devices from deadlocking."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    MetaData,
    String,
    Table,
    exc,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from fleet_server.db import create_db_engine
from fleet_server.db.dialect import bulk_update, insert_new_rows, lock_in_order, select_in
from tests.conftest import wait_for

META = MetaData()
ROWS = Table(
    "bulk_insert_probe",
    META,
    Column("k", BigInteger, primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("x", Float),
    Column("flag", Boolean),
    Column("doc", JSON),
)

UPDATED = Table(
    "bulk_update_probe",
    META,
    Column("id", BigInteger, primary_key=True),
    Column("x", Float),
    Column("doc", JSON),
)

AWKWARD = ['a"b', "back\\slash", "{brace}", "NULL", "comma, space", "", "ünï"]


def _columns(keys: list[int], names: list[str]) -> dict[str, list[Any]]:
    n = len(keys)
    return {
        "k": keys,
        "name": names,
        "x": [0.1 + i / 3 if i % 3 else None for i in range(n)],
        "flag": [bool(i % 2) if i % 4 else None for i in range(n)],
        "doc": [{"q": 'say "hi" \\ {x}', "n": [i, None]} if i % 2 else None for i in range(n)],
    }


def test_rows_land_exactly_and_only_the_stored_keys_are_skipped(engine: Engine) -> None:
    META.create_all(engine)
    keys = list(range(len(AWKWARD)))
    first = _columns(keys, AWKWARD)
    with Session(engine) as session, session.begin():
        assert insert_new_rows(session, ROWS, first) == set()
    # Again with two stored keys among three new ones: the stored ones are skipped.
    again = _columns([100, 1, 101, 4, 102], ["n1", AWKWARD[1], "n2", AWKWARD[4], "n3"])
    with Session(engine) as session, session.begin():
        assert insert_new_rows(session, ROWS, again) == {1, 3}
    with Session(engine) as session:
        stored = {(r.k, r.name): r for r in session.execute(select(ROWS))}
        found = select_in(session, [ROWS.c.k, ROWS.c.name], ROWS.c.name, ["NULL", "n2"])
    assert len(stored) == len(AWKWARD) + 3
    for i, name in enumerate(AWKWARD):
        row = stored[(i, name)]
        assert (row.x, row.flag, row.doc) == (first["x"][i], first["flag"][i], first["doc"][i])
    assert sorted((r.k, r.name) for r in found) == [(3, "NULL"), (101, "n2")]


@pytest.mark.postgres
def test_lock_in_order_takes_the_rows_in_key_order(postgres_url: str) -> None:
    """A worker locking rows {2, 1} while another holds 1 waits for 1 before taking 2, so
    two workers locking overlapping rows this way queue instead of deadlocking."""
    engine = create_db_engine(postgres_url)
    META.create_all(engine)
    with Session(engine) as session, session.begin():
        insert_new_rows(session, ROWS, _columns([2, 1], ["a", "a"]))  # stored 2 first
    first, second, third = Session(engine), Session(engine), Session(engine)
    try:
        first.begin()
        lock_in_order(first, ROWS.c.k, [1])
        pid = second.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        waiter = threading.Thread(target=lambda: lock_in_order(second, ROWS.c.k, [2, 1]))
        waiter.start()
        # The second one is waiting for a row lock (the one on k = 1) ...
        wait_for(
            lambda: (
                third.execute(
                    text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
                ).scalar()
                == "Lock"
            )
        )
        third.rollback()
        # ... and has not taken k = 2 meanwhile: a third one gets it at once.
        third.begin()
        third.execute(
            select(ROWS.c.k).where(ROWS.c.k == 2).with_for_update(nowait=True, key_share=False)
        ).all()
        third.rollback()
        first.commit()
        waiter.join(timeout=30)
        assert not waiter.is_alive()
    finally:
        for s in (first, second, third):
            s.close()
        engine.dispose()


def test_bulk_update_sets_numbers_json_nulls_and_nan(engine: Engine) -> None:
    """``bulk_update`` sets each row's values on its key: numbers and JSON documents,
    a None (NULL), and a NaN, which JSON cannot carry."""
    META.create_all(engine)
    with Session(engine) as session, session.begin():
        session.execute(UPDATED.insert(), [{"id": 1}, {"id": 2}, {"id": 3}])
    doc = {"cpu_pct": 12.5, "ts": 1796281207.1987965, "n": [1, "ü"]}
    with Session(engine) as session, session.begin():
        bulk_update(
            session, UPDATED, "id", [{"k": 1, "x": 0.1, "doc": doc}, {"k": 2, "x": 2.5, "doc": {}}]
        )
        bulk_update(session, UPDATED, "id", [{"k": 2, "x": None}, {"k": 3, "x": float("nan")}])
    with Session(engine) as session:
        got = {r.id: (r.x, r.doc) for r in session.execute(select(UPDATED))}
    assert got[1] == (0.1, doc)
    assert got[2] == (None, {})
    if engine.dialect.name == "postgresql":
        assert got[3][0] != got[3][0]  # NaN
    else:
        assert got[3][0] is None  # SQLite stores a NaN as NULL
    assert got[3][1] is None


def test_a_value_that_is_not_text_in_a_text_column_is_stored_as_its_text(engine: Engine) -> None:
    META.create_all(engine)
    with Session(engine) as session, session.begin():
        insert_new_rows(session, ROWS, {"k": [7, 8], "name": ["plain", 42]})  # type: ignore[list-item]
    with Session(engine) as session:
        names = sorted(r.name for r in session.execute(select(ROWS.c.name)))
    assert names == ["42", "plain"]


@pytest.mark.postgres
def test_numbers_land_exactly_including_nan_infinities_and_nulls(postgres_url: str) -> None:
    """PostgreSQL keeps every integer and float as sent in the array literals: the
    shortest and the longest float forms, -0.0, NaN and both infinities (``null`` in
    JSON, so not sent as JSON), integers past 32 bits, and NULL among numbers."""
    engine = create_db_engine(postgres_url)
    META.create_all(engine)
    xs = [1796281207.1987965, 0.1, -0.0, 1e-7, 1e20, 5.0, float("nan"), float("inf")]
    xs += [float("-inf"), None, 2.5]
    keys = [2**40 + i for i in range(len(xs))]
    sent = {"k": keys, "name": ["n"] * len(xs), "x": xs}
    # Only numbers (no NULL, no NaN) in one statement too.
    plain = {"k": [7, 2**62], "name": ["p", "p"], "x": [3.25, 1796281207.1987965]}
    try:
        with Session(engine) as session, session.begin():
            assert insert_new_rows(session, ROWS, sent) == set()
            assert insert_new_rows(session, ROWS, plain) == set()
        with Session(engine) as session:
            got = {r.k: r.x for r in session.execute(select(ROWS.c.k, ROWS.c.x))}
    finally:
        engine.dispose()
    assert len(got) == len(xs) + 2
    for k, x in [*zip(keys, xs, strict=True), *zip(plain["k"], plain["x"], strict=True)]:
        if x is None:
            assert got[k] is None, k
        elif x != x:
            assert got[k] != got[k], (k, got[k])  # NaN
        else:
            assert str(got[k]) == str(x), (k, got[k], x)  # -0.0 keeps its sign


@pytest.mark.postgres
def test_errors_of_statements_sent_past_sqlalchemy_are_sqlalchemys(postgres_url: str) -> None:
    """The ingest tells a bad message (``DataError``/``IntegrityError``: isolate it) from
    a database outage (retry) by SQLAlchemy's error types, whichever way a statement
    went: a row PostgreSQL refuses surfaces as ``sqlalchemy.exc.DataError``."""
    engine = create_db_engine(postgres_url)
    META.create_all(engine)
    try:
        with Session(engine) as session, session.begin():
            with pytest.raises(exc.DataError) as refused:
                insert_new_rows(
                    session, ROWS, {"k": [1], "name": ["a"], "doc": [{"x": float("nan")}]}
                )
            assert isinstance(refused.value.orig, psycopg.errors.DataError)
        with Session(engine) as session, session.begin():
            with pytest.raises(exc.DBAPIError) as wrong:
                select_in(session, [ROWS.c.k], ROWS.c.k, ["not a number"])
            assert isinstance(wrong.value.orig, psycopg.Error)
        with Session(engine) as session:
            assert session.execute(select(ROWS)).all() == [], "nothing half-written"
    finally:
        engine.dispose()
