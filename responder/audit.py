"""One decision's audit row and log line, and a writer for the row that needs only the database driver.

The pipe hook decides most messages on their headers; loading SQLAlchemy just to insert one row would
cost more than everything else it does. ``record_direct`` writes that one row through the driver itself
(``sqlite3``, psycopg or PyMySQL) into the same ``decisions`` table; like the engine's writer, its
caller logs a failure and carries on: an audit row is never a reason to defer mail.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from responder.context import Context
    from responder.message import Inbound

COLUMNS = ("at", "queue_id", "message_id", "sender", "recipient", "action", "reason", "detail")

# sqlalchemy.engine.url's pattern, so that both writers read database.url alike.
_URL = re.compile(
    r"""
    (?P<name>[\w+]+)://
    (?:(?P<username>[^:/]*)(?::(?P<password>[^@]*))?@)?
    (?:(?:\[(?P<ipv6host>[^/?]+)\]|(?P<ipv4host>[^/:?]+))?(?::(?P<port>[^/?]*))?)?
    (?:/(?P<database>[^?]*))?
    (?:\?(?P<query>.*))?
    $""",
    re.VERBOSE,
)
_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql+psycopg": "psycopg",
    "mysql+pymysql": "pymysql",
    "mariadb+pymysql": "pymysql",
}


# Control characters (a CR in MAIL FROM, a LF in Dovecot's SENDER) and the surrogate escapes of
# undecodable bytes: never written raw into a log line or an audit row.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:
        code -= 0xDC00  # surrogateescape: the byte that could not be decoded
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control character and undecodable byte written as ``\\xHH`` (or ``\\uHHHH``)."""
    return _UNPRINTABLE.sub(_escape, text)


def decision_message(inbound: Inbound, action: str, reason: str | None, detail: str) -> str:
    """The text of the one INFO line per message."""
    env = inbound.envelope
    return printable(
        f"queue_id={env.queue_id or '-'} message_id={inbound.message_id or '-'} sender=<{env.sender}> "
        f"recipient=<{env.recipient}> action={action} reason={reason or '-'}"
        + (f' detail="{detail}"' if detail else "")
    )


def decision_row(ctx: Context, action: str, reason: str | None, detail: str) -> dict[str, Any]:
    """The ``decisions`` row for one decision, cut to the column sizes."""
    inbound = ctx.inbound
    env = inbound.envelope
    return {
        "at": ctx.now,
        "queue_id": printable(env.queue_id)[:64],
        "message_id": inbound.message_id and printable(inbound.message_id),
        "sender": printable(inbound.sender_address or env.sender)[:320],
        "recipient": printable(ctx.recipients[0] if ctx.recipients else env.recipient)[:320],
        "action": action,
        "reason": reason,
        "detail": printable(detail),
    }


class _Target:
    def __init__(self, driver: str, params: dict[str, Any]) -> None:
        self.driver = driver
        self.params = params


def _unquote(text: str | None) -> str | None:
    if text is None or "%" not in text:
        return text
    from urllib.parse import unquote

    return unquote(text)


def _target(url: str) -> _Target | None:
    match = _URL.match(url)
    if match is None or match["name"] not in _DRIVERS:
        return None
    driver = _DRIVERS[match["name"]]
    query = match["query"]
    if driver == "sqlite":
        path = match["database"]
        # In-memory databases and URI filenames are the full path's business.
        if query or match["username"] or match["ipv4host"] or not path or path == ":memory:":
            return None
        return _Target(driver, {"path": path})
    params: dict[str, Any] = {
        "host": match["ipv6host"] or match["ipv4host"] or None,
        "user": _unquote(match["username"]),
        "password": _unquote(match["password"]),
    }
    port = match["port"]
    if port:
        if not port.isdigit():
            return None
        params["port"] = int(port)
    if match["database"]:
        params["dbname" if driver == "psycopg" else "database"] = _unquote(match["database"])
    for item in (query or "").split("&"):
        if item:
            key, _, value = item.partition("=")
            if driver == "pymysql" and key != "charset":
                return None  # PyMySQL takes typed keyword arguments; SQLAlchemy knows them
            params[_unquote(key) or key] = _unquote(value)
    return _Target(driver, {k: v for k, v in params.items() if v is not None})


def direct_supported(url: str) -> bool:
    """Whether ``record_direct`` can write to this database URL."""
    return _target(url) is not None


def _sqlite_uri(path: str) -> str:
    # mode=rw: a missing file must stay missing (the full path reports it), not become an empty one.
    quoted = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file:{quoted}?mode=rw"


def _insert(placeholder: str) -> str:
    return f"INSERT INTO decisions ({', '.join(COLUMNS)}) VALUES ({', '.join([placeholder] * len(COLUMNS))})"


def _values(row: Mapping[str, Any], text_time: bool) -> tuple[Any, ...]:
    # Naive UTC, as the store's UtcDateTime keeps it; SQLAlchemy's SQLite format is ISO with a space.
    at = row["at"].astimezone(dt.UTC).replace(tzinfo=None)
    first: Any = at.isoformat(sep=" ", timespec="microseconds") if text_time else at
    return (first, *(row[column] for column in COLUMNS[1:]))


def _write(target: _Target, busy_timeout: float, row: Mapping[str, Any]) -> None:
    if target.driver == "sqlite":
        import sqlite3

        connection = sqlite3.connect(
            _sqlite_uri(target.params["path"]), uri=True, timeout=busy_timeout, isolation_level=None
        )
        try:
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute(_insert("?"), _values(row, text_time=True))
        finally:
            connection.close()
        return
    timeout = max(1, int(busy_timeout))
    if target.driver == "psycopg":
        import psycopg

        with psycopg.connect(connect_timeout=timeout, **target.params) as pg:
            pg.execute(_insert("%s"), _values(row, text_time=False))
        return
    import pymysql

    params = {"charset": "utf8mb4", **target.params}
    my = pymysql.connect(connect_timeout=timeout, autocommit=True, **params)
    try:
        with my.cursor() as cursor:
            cursor.execute(_insert("%s"), _values(row, text_time=False))
    finally:
        my.close()


def record_direct(url: str, busy_timeout: float, row: Mapping[str, Any]) -> str | None:
    """Insert one audit row through the driver; what went wrong (for a warning), or None."""
    target = _target(url)
    if target is None:
        return "audit not written: database.url is not one the hook writes directly"
    try:
        _write(target, busy_timeout, row)
    except Exception as exc:  # every driver has its own error classes; none may defer the mail
        return f"audit not written: database unavailable while writing the audit: {exc}"
    return None
