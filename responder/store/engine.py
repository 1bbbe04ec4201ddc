"""Engines per backend, the hook's statement limits, and database faults translated to StoreUnavailable."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url

from responder.errors import StoreUnavailable
from responder.observe import events
from responder.store.driver import run_sql
from responder.store.writer_lock import LOCK_SUFFIX, WriterTurn

# Faults of the database server or file, not of our statements: the MTA should retry.
# ProgrammingError is here for "permission denied" on PostgreSQL and MySQL: an admin's fix away, so
# the MTA should keep the message meanwhile (our own statements are tested on every backend).
_TRANSIENT = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sa_exc.InternalError,
    sa_exc.ProgrammingError,
)
# A transaction the server chose to abort so that another could go on: deadlock or serialization
# failure (PostgreSQL SQLSTATE 40P01 / 40001, MySQL/MariaDB 1213 / 1020). Trying again is correct.
_CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})
_CONFLICT_MYSQL_CODES = frozenset({1213, 1020})
ATTEMPTS = 5
_T = TypeVar("_T")


class Conflict(StoreUnavailable):
    """The server aborted our transaction in favour of another; the statement may be run again."""


def _is_conflict(exc: sa_exc.DBAPIError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _CONFLICT_SQLSTATES:
        return True
    args: tuple[object, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in _CONFLICT_MYSQL_CODES


def _sqlite_pragmas(busy_timeout: float) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    return on_connect


@contextmanager
def _synchronous_full(conn: Connection) -> Iterator[None]:
    """SQLite's commits on ``conn`` write the log through to the disk, until the block ends.

    Every connection runs synchronous=NORMAL: in WAL mode a commit then survives the process, not
    a power loss, and costs no fsync. A commit that a promise rests on is made FULL: one fsync.
    """
    # On the driver's cursor: a PRAGMA through SQLAlchemy would begin its transaction. Before the
    # first statement, so outside SQLite's transaction, where the setting can change.
    run_sql(conn, "PRAGMA synchronous = FULL")
    try:
        yield
    finally:
        with suppress(sa_exc.DBAPIError):  # a broken connection: the pool discards it
            run_sql(conn, "PRAGMA synchronous = NORMAL")


def make_engine(url: str, busy_timeout: float = 10.0, pooled: bool = False) -> Engine:
    """An engine for ``url``: SQLite (busy timeout, foreign keys), PostgreSQL or MySQL/MariaDB.

    A hook process lives for one delivery: it keeps one connection for all its statements (a TCP
    connect and login to PostgreSQL or MariaDB costs more than the statements) and needs no pre-ping;
    long-running callers ask for ``pooled`` and get connections checked before use. ``busy_timeout``
    bounds every wait for a lock: the SQLite file, PostgreSQL's lock_timeout, InnoDB's lock wait.
    MySQL connections speak utf8mb4 (4-byte UTF-8 survives) and run READ COMMITTED like PostgreSQL,
    so that a purge's range DELETE takes no gap locks that would hold up the hook's INSERTs.
    """
    connect_args: dict[str, Any] = {}
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise StoreUnavailable(f"database.url cannot be used: {exc}") from None
    backend, query = parsed.get_backend_name(), parsed.query
    kwargs: dict[str, Any] = {"pool_pre_ping": True} if pooled else {"pool_size": 1, "max_overflow": 2}
    if pooled and backend == "sqlite":
        kwargs = {}  # a file has no server to drop a pooled connection: no ping before each use
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        kwargs = {}  # one in-memory database per connection: SQLAlchemy's own pool keeps it
    if backend == "sqlite":
        connect_args["timeout"] = busy_timeout
    elif backend == "postgresql":
        connect_args["connect_timeout"] = max(1, int(busy_timeout))
        connect_args["application_name"] = "responder"
        # A row or table lock held past busy_timeout is a fault (exit 75), as a locked SQLite file is.
        if "options" not in query:
            connect_args["options"] = f"-c lock_timeout={max(1, int(busy_timeout * 1000))}"
    elif backend in ("mysql", "mariadb"):
        connect_args["connect_timeout"] = max(1, int(busy_timeout))
        if "charset" not in query:
            connect_args["charset"] = "utf8mb4"
        wait = max(1, round(busy_timeout))
        connect_args["init_command"] = (
            f"SET SESSION innodb_lock_wait_timeout = {wait}, SESSION lock_wait_timeout = {wait}"
        )
        kwargs["isolation_level"] = "READ COMMITTED"
    try:
        engine = create_engine(url, connect_args=connect_args, **kwargs)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
        raise StoreUnavailable(f"database.url cannot be used: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout))
    return engine


# A statement of the hook may wait busy_timeout for a lock and then needs time to run.
STATEMENT_SLACK = 2.0


def limit_statements(engine: Engine, busy_timeout: float) -> None:
    """Bound each statement on ``engine`` by busy_timeout + STATEMENT_SLACK: for the hook, not for admin work.

    On MySQL the wait for every answer: PyMySQL's read and write timeouts, without which a server
    that accepted the connection and went silent holds the caller forever, its greeting included. On
    PostgreSQL the server's statement_timeout, and TCP keepalives and tcp_user_timeout for a server
    host that vanished; libpq has no read timeout, so a peer that keeps the connection up and never
    answers is left to the hook's deadline. Migrations and purges may rightly run longer.
    """
    seconds = busy_timeout + STATEMENT_SLACK
    milliseconds = max(1, int(seconds * 1000))
    backend = engine.dialect.name

    def bound(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
        if backend == "postgresql":
            options = params.get("options", "")
            if "statement_timeout" not in options:
                params["options"] = f"{options} -c statement_timeout={milliseconds}".strip()
            for key, value in (
                ("keepalives", 1),
                ("keepalives_idle", max(1, int(seconds))),
                ("keepalives_interval", 1),
                ("keepalives_count", 3),
                ("tcp_user_timeout", milliseconds),
            ):
                params.setdefault(key, value)
        elif backend in ("mysql", "mariadb"):
            params.setdefault("read_timeout", seconds)
            params.setdefault("write_timeout", seconds)

    event.listen(engine, "do_connect", bound)


def sqlite_file(url: str) -> tuple[str, str] | None:
    """(path, URL that opens the file only if it exists) for a SQLite file URL; None for anything else."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        return None  # make_engine reports it
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or path in (None, "", ":memory:") or "uri" in parsed.query:
        return None  # in-memory databases and URI filenames are opened as written
    assert path is not None
    quoted = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    existing = parsed.set(database=f"file:{quoted}").update_query_dict({"mode": "rw", "uri": "true"})
    return path, existing.render_as_string(hide_password=False)


class Database:
    """An engine with fault translation: the base every repository of the store builds on."""

    def __init__(
        self,
        engine: Engine,
        sqlite_path: str | None = None,
        busy_timeout: float = 10.0,
        shared_turn: bool = False,
    ) -> None:
        """``shared_turn``: the processes of a service take SQLite write turns on a lock file."""
        self.engine = engine
        self.sqlite_path = sqlite_path
        self.busy_timeout = busy_timeout
        # SQLite has one writer at a time: writers wait in line here instead of in its busy handler.
        self._writer: WriterTurn | None = None
        if engine.dialect.name == "sqlite":
            lock = sqlite_path + LOCK_SUFFIX if shared_turn and sqlite_path else None
            self._writer = WriterTurn(lock)

    def exists(self) -> bool:
        """False for a SQLite file that is not there (yet: ``upgrade`` creates it)."""
        return self.sqlite_path is None or os.path.exists(self.sqlite_path)

    def close(self) -> None:
        self.engine.dispose()
        if self._writer is not None:
            self._writer.close()

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except _TRANSIENT as exc:
            conflict = isinstance(exc, sa_exc.DBAPIError) and _is_conflict(exc)
            fault = Conflict if conflict else StoreUnavailable
            events.observer.database_fault("conflict" if conflict else "unavailable")
            if not conflict:
                events.observer.dependency_failed(events.DATABASE)
            raise fault(f"database unavailable while {what}: {getattr(exc, 'orig', None) or exc}") from None
        events.observer.dependency_ok(events.DATABASE)

    @contextmanager
    def _one_writer(self, what: str) -> Iterator[None]:
        """Hold this process's SQLite write turn (nothing for a database server)."""
        if self._writer is None:
            yield
            return
        if not self._writer.acquire(timeout=self.busy_timeout):
            events.observer.database_fault("unavailable")
            events.observer.dependency_failed(events.DATABASE)
            raise StoreUnavailable(f"database unavailable while {what}: the other writers took too long")
        try:
            yield
        finally:
            self._writer.release()

    @contextmanager
    def _begin(self, what: str, durable: bool = False) -> Iterator[Connection]:
        """A write transaction. ``durable``: its commit survives a power loss or a system crash
        as well as a crash of the process, for a commit that the MTA is told of (250)."""
        # The write turn covers the transaction alone: the pool's check-out and return happen
        # outside it, so that the other writers wait for statements, not for the pool's bookkeeping.
        with self._guard(what), self.engine.connect() as conn:
            full = _synchronous_full(conn) if durable and self._writer is not None else nullcontext()
            with full, self._one_writer(what), conn.begin():
                yield conn

    @contextmanager
    def _connect(self, what: str) -> Iterator[Connection]:
        with self._guard(what), self.engine.connect() as conn:
            yield conn

    def _retrying(self, attempt: Callable[[], _T]) -> _T:
        """Run ``attempt`` again when the server aborted it to resolve a deadlock."""
        for remaining in range(ATTEMPTS - 1, -1, -1):
            try:
                return attempt()
            except Conflict:
                if not remaining:
                    raise
        raise AssertionError("unreachable")


def domain_pattern(domain: str) -> str:
    """A LIKE pattern (escape character "/") for the addresses of ``domain``; "/" escapes on every backend."""
    escaped = domain.replace("/", "//").replace("%", "/%").replace("_", "/_")
    return f"%@{escaped}"
