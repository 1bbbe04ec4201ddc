"""One decision's audit row and log line, and a writer for the row that needs only ``sqlite3``.

The pipe hook decides most messages on their headers; loading SQLAlchemy just to insert one row would
cost more than everything else it does. ``record_direct`` writes that one row through ``sqlite3`` into
the same ``decisions`` table; like the engine's writer, its caller logs a failure and carries on: an
audit row is never a reason to defer mail. PostgreSQL and MySQL URLs take the full path, whose store
bounds every lock wait and every answer (responder.store.database.make_engine); writing to them here as well
would need all of that a second time.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from responder.hook.log import printable

if TYPE_CHECKING:
    from collections.abc import Mapping

    from responder.decide.context import Context
    from responder.mail.message import Inbound

COLUMNS = ("at", "queue_id", "message_id", "sender", "recipient", "action", "reason", "detail")


def decision_message(inbound: Inbound, action: str, reason: str | None, detail: str) -> str:
    """The text of the one INFO line per message."""
    env = inbound.envelope
    return printable(
        f"queue_id={env.queue_id or '-'} message_id={inbound.message_id or '-'} sender=<{env.sender}> "
        f"recipient=<{env.recipient}> action={action} reason={reason or '-'}"
        + (f' detail="{detail}"' if detail else "")
    )


def decision_row(ctx: Context, action: str, reason: str | None, detail: str) -> dict[str, Any]:
    """The ``decisions`` row for one decision, control characters escaped, cut to the column sizes."""
    inbound = ctx.inbound
    env = inbound.envelope
    return {
        "at": ctx.now,
        "queue_id": printable(env.queue_id)[:64],
        "message_id": printable(inbound.message_id),
        "sender": printable(inbound.sender_address or env.sender)[:320],
        "recipient": printable(ctx.recipients[0] if ctx.recipients else env.recipient)[:320],
        "action": action,
        "reason": reason,
        "detail": printable(detail),
    }


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
