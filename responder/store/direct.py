"""The audit row of the pipe hook's header phase, written through ``sqlite3`` alone.

The pipe hook decides most messages on their headers; loading SQLAlchemy just to insert one row would
cost more than everything else it does. ``record_direct`` writes that one row into the same
``decisions`` table; like the engine's writer, its caller logs a failure and carries on: an audit row is
never a reason to defer mail. PostgreSQL and MySQL URLs take the full path, whose store bounds every
lock wait and every answer (responder.store.database.make_engine); writing to them here as well would
need all of that a second time.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

COLUMNS = ("at", "queue_id", "message_id", "sender", "recipient", "action", "reason", "detail")


def _sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///PATH`` URL; None for anything else, which the full path opens."""
    scheme, separator, rest = url.partition(":///")
    if not separator or scheme not in ("sqlite", "sqlite+pysqlite"):
        return None
    # In-memory databases and URI filenames or query options are the full path's business.
    if not rest or rest == ":memory:" or "?" in rest:
        return None
    return rest


def direct_supported(url: str) -> bool:
    """Whether ``record_direct`` can write to this database URL (SQLite files only)."""
    return _sqlite_path(url) is not None


def _sqlite_uri(path: str) -> str:
    # mode=rw: a missing file must stay missing (the full path reports it), not become an empty one.
    quoted = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file:{quoted}?mode=rw"


def _insert() -> str:
    return f"INSERT INTO decisions ({', '.join(COLUMNS)}) VALUES ({', '.join(['?'] * len(COLUMNS))})"


def _values(row: Mapping[str, Any]) -> tuple[Any, ...]:
    # Naive UTC, as the store's UtcDateTime keeps it, in SQLAlchemy's SQLite format: ISO with a space.
    at = row["at"].astimezone(dt.UTC).replace(tzinfo=None)
    return (at.isoformat(sep=" ", timespec="microseconds"), *(row[column] for column in COLUMNS[1:]))


def _write(path: str, busy_timeout: float, row: Mapping[str, Any]) -> None:
    import sqlite3

    # The busy timeout bounds the only wait there is: for another writer's lock on the file.
    connection = sqlite3.connect(_sqlite_uri(path), uri=True, timeout=busy_timeout, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute(_insert(), _values(row))
    finally:
        connection.close()


def record_direct(url: str, busy_timeout: float, row: Mapping[str, Any]) -> str | None:
    """Insert one audit row through ``sqlite3``; what went wrong (for a warning), or None."""
    path = _sqlite_path(url)
    if path is None:
        return "audit not written: database.url is not one the hook writes directly"
    try:
        _write(path, busy_timeout, row)
    except Exception as exc:  # sqlite3.Error, OSError, a bad value: none may defer the mail
        return f"audit not written: database unavailable while writing the audit: {exc}"
    return None
