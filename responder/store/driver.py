"""Statements of every message, compiled once per dialect and run on the driver's own cursor.

``Connection.execute`` costs about 100 µs per statement on top of what the driver takes (execution
context, cursor metadata, result objects), several times SQLite's run of a look-up by key. The few
statements that run for every message skip that: their SQL, parameter order and type conversions are
worked out once per dialect from the same SQLAlchemy statement, and a fault of the driver is raised as
the ``sqlalchemy.exc.DBAPIError`` that ``Connection.execute`` would have raised, so that the store's
fault translation, and the pool's handling of a lost connection, are the same as everywhere else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import CompoundSelect, Insert, Select, Update
from sqlalchemy.sql.dml import ReturningInsert

Processor = Callable[[Any], Any]
Statement = Select[Any] | CompoundSelect[Any] | Insert | Update | ReturningInsert[Any]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    # Parameter names in the order of a positional paramstyle; None for a named one.
    order: tuple[str, ...] | None
    binds: dict[str, Processor]
    defaults: dict[str, Any]
    results: tuple[Processor | None, ...]


class Prepared:
    """One statement with its SQL for each dialect it has run on."""

    def __init__(self, statement: Statement, column_keys: Sequence[str] | None = None) -> None:
        """``column_keys``: the columns an INSERT is given, in any order (their names are its parameters)."""
        self.statement = statement
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._by_dialect: dict[str, _Compiled] = {}

    def _compiled(self, dialect: Dialect) -> _Compiled:
        key = f"{dialect.name}+{dialect.driver}"
        found = self._by_dialect.get(key)
        if found is None:
            found = self._by_dialect[key] = self._compile(dialect)
        return found

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled: Any = self.statement.compile(dialect=dialect, column_keys=self.column_keys)
        binds: dict[str, Processor] = {}
        defaults: dict[str, Any] = {}
        for bind, name in compiled.bind_names.items():
            if bind.expanding:
                raise ValueError(f"{name}: an expanding parameter has no fixed SQL")
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                binds[name] = processor
            if not bind.required:  # a value written into the statement, such as state="sent"
                defaults[name] = bind.effective_value
        results: list[Processor | None] = []
        for column in self.statement.exported_columns:  # a SELECT's columns, or what it RETURNS
            results.append(column.type.dialect_impl(dialect).result_processor(dialect, None))
        order = tuple(compiled.positiontup) if compiled.positional else None
        return _Compiled(str(compiled), order, binds, defaults, tuple(results))

    def _arguments(self, compiled: _Compiled, params: Mapping[str, Any]) -> Any:
        values = {**compiled.defaults, **params}
        for name, processor in compiled.binds.items():
            values[name] = processor(values[name])
        if compiled.order is None:
            return values
        return tuple(values[name] for name in compiled.order)

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of a SELECT (or of a RETURNING), their values converted as SQLAlchemy would."""
        compiled = self._compiled(conn.dialect)
        fetched = _run(conn, compiled.sql, self._arguments(compiled, params), many=False, fetch=True)[0]
        if not any(compiled.results):
            return [tuple(row) for row in fetched]
        converters = compiled.results
        return [
            tuple(value if c is None else c(value) for c, value in zip(converters, row, strict=True))
            for row in fetched
        ]

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """An INSERT, UPDATE or DELETE in the caller's transaction: the driver's count of rows."""
        compiled = self._compiled(conn.dialect)
        return _run(conn, compiled.sql, self._arguments(compiled, params), many=False, fetch=False)[1]

    def execute_many(self, conn: Connection, params: Sequence[Mapping[str, Any]]) -> None:
        """An INSERT or UPDATE once per set of parameters, in the caller's transaction."""
        compiled = self._compiled(conn.dialect)
        _run(conn, compiled.sql, [self._arguments(compiled, p) for p in params], many=True, fetch=False)

    def last_row_id(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """An INSERT of one row in the caller's transaction: the driver's id of that row."""
        compiled = self._compiled(conn.dialect)
        return _run(conn, compiled.sql, self._arguments(compiled, params), many=False, fetch=False)[2]


class PreparedInsert:
    """An INSERT of one row into a table with an integer key: the key the database gave it.

    RETURNING where the dialect has it (PostgreSQL, SQLite 3.35, MariaDB 10.5); otherwise the
    driver's ``lastrowid``, which MySQL and SQLite give for the connection's last INSERT.
    """

    def __init__(self, table: Table, column_keys: Sequence[str]) -> None:
        [key] = table.primary_key.columns
        self._returning = Prepared(insert(table).returning(key), column_keys)
        self._plain = Prepared(insert(table), column_keys)

    def key(self, conn: Connection, params: Mapping[str, Any]) -> int:
        if conn.dialect.insert_returning:
            [(key,)] = self._returning.rows(conn, params)
            return int(key)
        return self._plain.last_row_id(conn, params)


def run_sql(conn: Connection, sql: str) -> None:
    """A statement without parameters (a PRAGMA) on the driver's cursor, faults raised as above."""
    _run(conn, sql, (), many=False, fetch=False)


def _run(conn: Connection, sql: str, arguments: Any, many: bool, fetch: bool) -> tuple[list[Any], int, int]:
    dialect = conn.dialect
    raw = conn.connection.dbapi_connection
    assert raw is not None
    error = dialect.loaded_dbapi.Error
    cursor = None
    try:
        cursor = raw.cursor()
        if many:
            cursor.executemany(sql, arguments)
        else:
            cursor.execute(sql, arguments)
        rows = list(cursor.fetchall()) if fetch else []
        # psycopg's cursor has no lastrowid (PostgreSQL gives keys by RETURNING only).
        return rows, int(cursor.rowcount), int(getattr(cursor, "lastrowid", None) or 0)
    except error as exc:
        lost = dialect.is_disconnect(exc, raw, cursor)
        if lost:
            # As Connection.execute does: the pool must not hand this connection out again.
            conn.invalidate(exc)
        raise sa_exc.DBAPIError.instance(
            sql, arguments, exc, error, connection_invalidated=lost, dialect=dialect
        ) from exc
    finally:
        if cursor is not None:
            with contextlib.suppress(error):  # the connection is gone: the fault raised says so
                cursor.close()
