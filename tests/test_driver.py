"""Statements run on the driver's cursor: the same values and the same faults as Connection.execute."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, bindparam, select, text
from sqlalchemy import exc as sa_exc

from responder.decide.records import DecisionRecord
from responder.errors import StoreUnavailable
from responder.store.database import Store
from responder.store.driver import Prepared, PreparedInsert
from responder.store.schema import vacations

NOW = dt.datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


@pytest.fixture
def store(backend_url: str) -> Iterator[Store]:
    opened = Store.open(backend_url, busy_timeout=5, pooled=True)
    yield opened
    opened.close()


def _record(number: int) -> DecisionRecord:
    return DecisionRecord(
        at=NOW + dt.timedelta(seconds=number),
        queue_id=f"Q{number}",
        message_id=f"<{number}@example.org>",
        sender="bob@example.org",
        recipient="alice@example.com",
        action="drop",
        reason="no-vacation",
        detail="100% \"quoted\" 'text' %s ? :name",  # paramstyle characters in a value
    )


def test_audit_rows_read_back_as_written(store: Store) -> None:
    written = [_record(n) for n in range(3)]
    store.record_many(written)
    store.record(_record(3))
    assert sorted(store.decisions(limit=10), key=lambda r: r.queue_id) == [*written, _record(3)]


def test_a_select_converts_its_columns_as_sqlalchemy_does(store: Store) -> None:
    other = dt.timezone(dt.timedelta(hours=5))
    store.put_vacation(
        "alice@example.com", NOW.astimezone(other), None, enabled=True, message="Away.", timezone="UTC"
    )
    columns = select(vacations.c.address, vacations.c.created_at, vacations.c.enabled).where(
        vacations.c.address == bindparam("p_address")
    )
    with store.engine.connect() as conn:
        expected = [tuple(row) for row in conn.execute(columns, {"p_address": "alice@example.com"})]
        found = Prepared(columns).rows(conn, {"p_address": "alice@example.com"})
    assert found == expected
    assert found[0][1] == NOW and found[0][1].tzinfo is dt.UTC


def test_a_bad_value_is_refused_before_the_driver_sees_it(store: Store) -> None:
    naive = DecisionRecord(**{**_record(0).__dict__, "at": NOW.replace(tzinfo=None)})
    with pytest.raises(ValueError, match="naive datetime"):
        store.record_many([naive])


def test_a_driver_fault_is_the_error_connection_execute_raises(store: Store) -> None:
    missing = Table("no_such_table", MetaData(), Column("id", Integer))
    statement = Prepared(select(missing.c.id).where(missing.c.id == bindparam("p_id")))
    with store.engine.connect() as conn:
        with pytest.raises(sa_exc.DBAPIError) as expected:
            conn.execute(statement.statement, {"p_id": 1})
        conn.rollback()
        with pytest.raises(sa_exc.DBAPIError) as raised:
            statement.rows(conn, {"p_id": 1})
    assert type(raised.value) is type(expected.value)
    assert "no_such_table" in str(raised.value)
    assert not raised.value.connection_invalidated


def test_the_store_turns_a_driver_fault_into_store_unavailable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bare.sqlite3'}"
    sqlite3.connect(tmp_path / "bare.sqlite3").close()  # a file without the schema
    store = Store.open(url, busy_timeout=1, pooled=True)
    try:
        with pytest.raises(StoreUnavailable, match="writing the audit"):
            store.record_many([_record(0)])
        with pytest.raises(StoreUnavailable, match="looking up the recipient"):
            store.recipient_records(["alice@example.com"])
    finally:
        store.close()


@pytest.mark.backend
def test_a_connection_lost_under_a_statement_is_not_used_again() -> None:
    from tests.backends import server_url

    url = server_url("postgresql")
    store = Store.open(url, busy_timeout=5, pooled=True)
    killer = Store.open(url, busy_timeout=5)
    statement = Prepared(select(text("1")))
    try:
        with store.engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            with killer.engine.connect() as other:
                other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
            with pytest.raises(sa_exc.DBAPIError) as raised:
                statement.rows(conn, {})
            assert raised.value.connection_invalidated
        with store.engine.connect() as conn:
            assert statement.rows(conn, {}) == [(1,)]
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != pid
    finally:
        store.close()
        killer.close()


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "lastrowid"])
def test_an_insert_gives_the_key_of_its_row(store: Store, returning: bool) -> None:
    with store.engine.connect():  # the dialect learns the server's version on the first connect
        dialect = store.engine.dialect
    if not returning and dialect.name == "postgresql":
        pytest.skip("psycopg has no lastrowid; PostgreSQL always has RETURNING")
    if returning and not dialect.insert_returning:
        pytest.skip(f"{dialect.name} {dialect.server_version_info} has no INSERT ... RETURNING")
    table = Table("driver_keys", MetaData(), Column("id", Integer, primary_key=True), Column("n", Integer))
    table.create(store.engine)
    try:
        statement = PreparedInsert(table, ["n"])
        with store.engine.begin() as conn:
            saved, dialect.insert_returning = dialect.insert_returning, returning
            try:
                keys = [statement.key(conn, {"n": n}) for n in (10, 20, 30)]
            finally:
                dialect.insert_returning = saved
            stored = dict(conn.execute(select(table.c.id, table.c.n)).all())
        assert len(set(keys)) == 3
        assert [stored[key] for key in keys] == [10, 20, 30]
    finally:
        table.drop(store.engine)
