"""All SQL of the engine and the admin commands; database faults become StoreUnavailable."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    Table,
    and_,
    create_engine,
    delete,
    event,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, RowMapping, make_url

from responder.decide.records import Retirement
from responder.errors import SchemaMismatch, StoreUnavailable
from responder.paths import resource_dir
from responder.store.schema import (
    SCHEMA_REVISION,
    bounce_claims,
    decisions,
    rate_counters,
    reply_claims,
    retired_addresses,
    vacation_aliases,
    vacations,
)

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
_ATTEMPTS = 5
_T = TypeVar("_T")


class _Conflict(StoreUnavailable):
    """The server aborted our transaction in favour of another; the statement may be run again."""


def _is_conflict(exc: sa_exc.DBAPIError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _CONFLICT_SQLSTATES:
        return True
    args: tuple[object, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in _CONFLICT_MYSQL_CODES


@dataclass(frozen=True)
class Vacation:
    id: int
    address: str
    enabled: bool
    message: str
    subject: str | None
    from_header: str | None
    template: str | None
    starts_at: dt.datetime | None
    ends_at: dt.datetime | None
    timezone: str
    interval_seconds: int | None
    aliases: tuple[str, ...]
    created_at: dt.datetime
    updated_at: dt.datetime

    def state(self, now: dt.datetime) -> str:
        """``off``, ``scheduled`` before the start, ``ended`` from the end on, ``active`` in between."""
        if not self.enabled:
            return "off"
        if self.starts_at is not None and now < self.starts_at:
            return "scheduled"
        if self.ends_at is not None and now >= self.ends_at:
            return "ended"
        return "active"

    def own_addresses(self) -> frozenset[str]:
        return frozenset((self.address, *self.aliases))


@dataclass(frozen=True)
class DecisionRecord:
    at: dt.datetime
    queue_id: str
    message_id: str
    sender: str
    recipient: str
    action: str
    reason: str | None
    detail: str


@dataclass(frozen=True)
class CounterWindow:
    """One rate counter: a (scope, key) in the fixed window [start, end)."""

    scope: str
    key: str
    start: dt.datetime
    end: dt.datetime


@dataclass(frozen=True)
class RateCounter:
    scope: str
    counter_key: str
    window_start: dt.datetime
    window_end: dt.datetime
    count: int
    tripped: bool


@dataclass(frozen=True)
class PurgeResult:
    claims: int
    counters: int
    audit: int


# What a claim attempt found: the claim is ours, the last response holds it (suppress), or another
# delivery's claim is still pending, neither confirmed nor released (wait for it, or defer).
WON, TAKEN, PENDING = "won", "taken", "pending"


@dataclass(frozen=True)
class LastClaim:
    """The last response to a sender under one vacation or retired address."""

    replied_at: dt.datetime
    message_key: str
    state: str

    def verdict(self, message_key: str, now: dt.datetime, interval: dt.timedelta, stale: dt.timedelta) -> str:
        """What a claim for ``message_key`` would find now: the SQL of ``Store.claim`` in Python."""
        if self.state == "pending":
            return WON if self.replied_at <= now - stale else PENDING
        if self.message_key != message_key and (not interval or self.replied_at <= now - interval):
            return WON
        return TAKEN


@dataclass(frozen=True)
class ClaimKind:
    """A claims table: one row per (owner, sender) holding the last response's time and message."""

    table: Table
    owner: str  # the column naming the vacation or the retired address
    what: str  # for messages: "reply", "bounce"
    done: str  # "answered", "bounced"


REPLIES = ClaimKind(reply_claims, "vacation_id", "reply", "answered")
BOUNCES = ClaimKind(bounce_claims, "retired_id", "bounce", "bounced")


def _sqlite_pragmas(busy_timeout: float) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    return on_connect


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


def alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resource_dir("migrations")))
    config.attributes["connection"] = connection
    return config


def _sqlite_file(url: str) -> tuple[str, str] | None:
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


class Store:
    """All database access of the engine and the admin commands."""

    def __init__(self, engine: Engine, sqlite_path: str | None = None) -> None:
        self.engine = engine
        self.sqlite_path = sqlite_path

    @classmethod
    def open(cls, url: str, busy_timeout: float = 10.0, pooled: bool = False) -> Store:
        """A store on ``url``. A SQLite file is never created here (a command that only reads, or a
        hook, would leave an empty file with its own owner): only ``upgrade`` creates it."""
        sqlite = _sqlite_file(url)
        if sqlite is None:
            return cls(make_engine(url, busy_timeout, pooled))
        return cls(make_engine(sqlite[1], busy_timeout, pooled), sqlite_path=sqlite[0])

    def exists(self) -> bool:
        """False for a SQLite file that is not there (yet: ``upgrade`` creates it)."""
        return self.sqlite_path is None or os.path.exists(self.sqlite_path)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except _TRANSIENT as exc:
            conflict = isinstance(exc, sa_exc.DBAPIError) and _is_conflict(exc)
            fault = _Conflict if conflict else StoreUnavailable
            raise fault(f"database unavailable while {what}: {getattr(exc, 'orig', None) or exc}") from None

    @contextmanager
    def _begin(self, what: str) -> Iterator[Connection]:
        with self._guard(what), self.engine.begin() as conn:
            yield conn

    # -- schema -------------------------------------------------------------------------------------

    def current_revision(self) -> str | None:
        if not self.exists():
            # As unavailable as an unreachable server (an unmounted volume comes back), not empty.
            missing = f"database file {self.sqlite_path} does not exist"
            raise StoreUnavailable(f"{missing}: run `responder db upgrade`")
        with self._guard("reading the schema version"), self.engine.connect() as conn:
            try:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except (sa_exc.OperationalError, sa_exc.ProgrammingError) as exc:
                if _is_missing_table(exc):
                    return None
                raise

    def check_schema(self) -> None:
        """Refuse to work on a schema other than the one this code was written for."""
        revision = self.current_revision()
        if revision != SCHEMA_REVISION:
            found = revision or "empty"
            raise SchemaMismatch(
                f"database schema is {found}, this responder needs {SCHEMA_REVISION}: "
                "run `responder db upgrade`"
            )

    def upgrade(self, revision: str = "head") -> None:
        from alembic import command

        if not self.exists():
            import sqlite3

            assert self.sqlite_path is not None
            try:
                sqlite3.connect(self.sqlite_path).close()  # the one place that creates the file
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot create the database file {self.sqlite_path}: {exc}") from None
        with self._begin("migrating") as conn:
            if conn.dialect.name == "sqlite":
                # WAL lets the hook read while another process writes; it is a property of the file.
                conn.exec_driver_sql("PRAGMA journal_mode = WAL")
            command.upgrade(alembic_config(conn), revision)

    def downgrade(self, revision: str) -> None:
        from alembic import command

        with self._begin("migrating") as conn:
            command.downgrade(alembic_config(conn), revision)

    # -- vacations ----------------------------------------------------------------------------------

    def _aliases(self, conn: Connection, ids: Sequence[int]) -> dict[int, tuple[str, ...]]:
        found: dict[int, list[str]] = {i: [] for i in ids}
        if ids:
            rows = conn.execute(
                select(vacation_aliases.c.vacation_id, vacation_aliases.c.address)
                .where(vacation_aliases.c.vacation_id.in_(ids))
                .order_by(vacation_aliases.c.id)
            )
            for vacation_id, address in rows:
                found[vacation_id].append(address)
        return {i: tuple(v) for i, v in found.items()}

    @staticmethod
    def _vacation(row: RowMapping, aliases: tuple[str, ...]) -> Vacation:
        return Vacation(aliases=aliases, **{column.name: row[column.name] for column in vacations.c})

    def vacation_for(self, addresses: Sequence[str]) -> Vacation | None:
        """The vacation of the first of ``addresses`` that has one (recipient before original recipient)."""
        wanted = [a for a in addresses if a]
        if not wanted:
            return None
        with self._guard("looking up the vacation"), self.engine.connect() as conn:
            rows = {
                row["address"]: row
                for row in conn.execute(select(vacations).where(vacations.c.address.in_(wanted))).mappings()
            }
            for address in wanted:
                if address in rows:
                    row = rows[address]
                    return self._vacation(row, self._aliases(conn, [row["id"]])[row["id"]])
        return None

    def list_vacations(self) -> list[Vacation]:
        with self._guard("listing vacations"), self.engine.connect() as conn:
            rows = list(conn.execute(select(vacations).order_by(vacations.c.address)).mappings())
            aliases = self._aliases(conn, [row["id"] for row in rows])
            return [self._vacation(row, aliases[row["id"]]) for row in rows]

    def put_vacation(
        self, address: str, now: dt.datetime, aliases: Sequence[str] | None, **fields: Any
    ) -> None:
        """Create or update the vacation of ``address``; ``aliases`` None keeps the current list."""
        with self._begin("saving the vacation") as conn:
            existing = conn.execute(
                select(vacations.c.id).where(vacations.c.address == address)
            ).scalar_one_or_none()
            if existing is None:
                result = conn.execute(
                    insert(vacations).values(address=address, created_at=now, updated_at=now, **fields)
                )
                key = result.inserted_primary_key
                assert key is not None
                vacation_id = int(key[0])
            else:
                vacation_id = existing
                conn.execute(
                    update(vacations).where(vacations.c.id == vacation_id).values(updated_at=now, **fields)
                )
            if aliases is not None:
                conn.execute(delete(vacation_aliases).where(vacation_aliases.c.vacation_id == vacation_id))
                for alias in dict.fromkeys(aliases):
                    conn.execute(insert(vacation_aliases).values(vacation_id=vacation_id, address=alias))

    def set_enabled(self, address: str, enabled: bool, now: dt.datetime) -> bool:
        with self._begin("saving the vacation") as conn:
            result = conn.execute(
                update(vacations)
                .where(vacations.c.address == address)
                .values(enabled=enabled, updated_at=now)
            )
            return result.rowcount > 0

    def delete_vacation(self, address: str) -> bool:
        with self._begin("deleting the vacation") as conn:
            vacation_id = conn.execute(
                select(vacations.c.id).where(vacations.c.address == address)
            ).scalar_one_or_none()
            if vacation_id is None:
                return False
            # Explicit deletes: foreign keys may be off on an old SQLite file opened elsewhere.
            conn.execute(delete(reply_claims).where(reply_claims.c.vacation_id == vacation_id))
            conn.execute(delete(vacation_aliases).where(vacation_aliases.c.vacation_id == vacation_id))
            conn.execute(delete(vacations).where(vacations.c.id == vacation_id))
            return True

    # -- reply claims -------------------------------------------------------------------------------

    def claim(
        self,
        kind: ClaimKind,
        owner_id: int,
        sender_key: str,
        message_key: str,
        now: dt.datetime,
        interval: dt.timedelta,
        stale_after: dt.timedelta,
        token: str,
    ) -> str:
        """Try to take the right to respond to this sender now under ``token``: WON, TAKEN or PENDING.

        The row holds the last response. WON when it is confirmed (``sent``) for another message at
        least ``interval`` ago (any time ago when the interval is zero), or is a pending claim older
        than ``stale_after``, whose delivery has certainly ended without confirming or releasing it.
        TAKEN when it is confirmed within the interval, or for this very message: a retry of a message
        that was answered never wins. PENDING when another delivery's claim is neither confirmed nor
        released yet: the caller waits for it (``last_claim``) and tries again, or defers.
        """
        return self._retrying(
            lambda: self._claim_once(
                kind, owner_id, sender_key, message_key, now, interval, stale_after, token
            )
        )

    def _claim_once(
        self,
        kind: ClaimKind,
        owner_id: int,
        sender_key: str,
        message_key: str,
        now: dt.datetime,
        interval: dt.timedelta,
        stale_after: dt.timedelta,
        token: str,
    ) -> str:
        # Correct on every backend: the INSERT lets exactly one of several racers create the row (unique
        # constraint); the conditional UPDATE re-tests its WHERE on the row it has locked (InnoDB locking
        # read, PostgreSQL's re-check after waiting for a concurrent writer, SQLite's single writer), and
        # every matched row is changed (a new token), so rowcount is 1 exactly for the winner, also under
        # MySQL's CLIENT_FOUND_ROWS, which counts matched rather than changed rows. A loser reads the row
        # in the same transaction (READ COMMITTED everywhere, SQLite's write lock already held) to tell
        # TAKEN from PENDING; a row gone (released) or changed in between means trying again.
        values = {"replied_at": now, "message_key": message_key, "state": "pending", "token": token}
        table, c = kind.table, kind.table.c
        mine = (c[kind.owner] == owner_id, c.sender_key == sender_key)
        answered_before = c.message_key != message_key
        if interval:
            answered_before = and_(answered_before, c.replied_at <= now - interval)
        free = or_(
            and_(c.state == "sent", answered_before),
            and_(c.state == "pending", c.replied_at <= now - stale_after),
        )
        for _attempt in range(3):
            try:
                with self._begin(f"claiming the {kind.what} interval") as conn:
                    conn.execute(
                        insert(table).values({kind.owner: owner_id, "sender_key": sender_key, **values})
                    )
                return WON
            except sa_exc.IntegrityError:
                pass
            with self._begin(f"claiming the {kind.what} interval") as conn:
                result = conn.execute(update(table).where(*mine, free).values(**values))
                if result.rowcount == 1:
                    return WON
                row = conn.execute(select(c.replied_at, c.message_key, c.state).where(*mine)).first()
            if row is not None:
                found = LastClaim(row.replied_at, row.message_key, row.state)
                verdict = found.verdict(message_key, now, interval, stale_after)
                if verdict != WON:
                    return verdict
        # The row kept changing under us: another delivery is deciding right now.
        return PENDING

    def confirm_claim(self, kind: ClaimKind, owner_id: int, sender_key: str, token: str) -> None:
        c = kind.table.c
        with self._begin(f"confirming the {kind.what}") as conn:
            conn.execute(
                update(kind.table)
                .where(c[kind.owner] == owner_id, c.sender_key == sender_key, c.token == token)
                .values(state="sent")
            )

    def release_claim(self, kind: ClaimKind, owner_id: int, sender_key: str, token: str) -> None:
        c = kind.table.c
        with self._begin(f"releasing the {kind.what} claim") as conn:
            conn.execute(
                delete(kind.table).where(
                    c[kind.owner] == owner_id, c.sender_key == sender_key, c.token == token
                )
            )

    def last_claim(self, kind: ClaimKind, owner_id: int, sender_key: str) -> LastClaim | None:
        c = kind.table.c
        with self._guard(f"reading the {kind.what} interval"), self.engine.connect() as conn:
            row = conn.execute(
                select(c.replied_at, c.message_key, c.state).where(
                    c[kind.owner] == owner_id, c.sender_key == sender_key
                )
            ).first()
        return None if row is None else LastClaim(row.replied_at, row.message_key, row.state)

    def _retrying(self, attempt: Callable[[], _T]) -> _T:
        """Run ``attempt`` again when the server aborted it to resolve a deadlock."""
        for remaining in range(_ATTEMPTS - 1, -1, -1):
            try:
                return attempt()
            except _Conflict:
                if not remaining:
                    raise
        raise AssertionError("unreachable")

    # -- retired addresses --------------------------------------------------------------------------

    def retirement_for(self, addresses: Sequence[str]) -> Retirement | None:
        """The retirement of the first of ``addresses`` that has one, active or not."""
        wanted = [a for a in addresses if a]
        if not wanted:
            return None
        with self._guard("looking up the retired address"), self.engine.connect() as conn:
            rows = {
                row["address"]: row
                for row in conn.execute(
                    select(retired_addresses).where(retired_addresses.c.address.in_(wanted))
                ).mappings()
            }
        for address in wanted:
            if address in rows:
                return _retirement(rows[address])
        return None

    def list_retirements(self) -> list[Retirement]:
        with self._guard("listing retired addresses"), self.engine.connect() as conn:
            query = select(retired_addresses).order_by(retired_addresses.c.address)
            return [_retirement(row) for row in conn.execute(query).mappings()]

    def put_retirement(self, address: str, now: dt.datetime, **fields: Any) -> bool:
        """Create or update the retirement of ``address``; False (nothing saved) when it has a vacation."""
        r = retired_addresses.c
        with self._begin("saving the retired address") as conn:
            vacation = conn.execute(select(vacations.c.id).where(vacations.c.address == address)).first()
            if vacation is not None:
                return False
            existing = conn.execute(select(r.id).where(r.address == address)).scalar_one_or_none()
            if existing is None:
                conn.execute(
                    insert(retired_addresses).values(
                        address=address, created_at=now, updated_at=now, **fields
                    )
                )
            else:
                conn.execute(
                    update(retired_addresses).where(r.id == existing).values(updated_at=now, **fields)
                )
            return True

    def delete_retirement(self, address: str) -> bool:
        r = retired_addresses.c
        with self._begin("deleting the retired address") as conn:
            retired_id = conn.execute(select(r.id).where(r.address == address)).scalar_one_or_none()
            if retired_id is None:
                return False
            # Explicit delete: foreign keys may be off on an old SQLite file opened elsewhere.
            conn.execute(delete(bounce_claims).where(bounce_claims.c.retired_id == retired_id))
            conn.execute(delete(retired_addresses).where(r.id == retired_id))
            return True

    # -- audit --------------------------------------------------------------------------------------

    def record(self, record: DecisionRecord) -> None:
        with self._begin("writing the audit") as conn:
            conn.execute(insert(decisions).values(**record.__dict__))

    def decisions(
        self, sender: str | None = None, recipient: str | None = None, limit: int = 50
    ) -> list[DecisionRecord]:
        query = select(decisions).order_by(decisions.c.at.desc(), decisions.c.id.desc()).limit(limit)
        if sender:
            query = query.where(decisions.c.sender == sender)
        if recipient:
            query = query.where(decisions.c.recipient == recipient)
        with self._guard("reading the audit"), self.engine.connect() as conn:
            return [
                DecisionRecord(**{k: row[k] for k in DecisionRecord.__dataclass_fields__})
                for row in conn.execute(query).mappings()
            ]

    # -- rate counters ------------------------------------------------------------------------------

    def take_counts(self, wanted: Sequence[tuple[CounterWindow, int]]) -> int | None:
        """Count one response in every (counter, limit) pair, all or none, in one transaction.

        None when counted; else the index of the first counter found at its limit (nothing counted).
        No upsert rowcounts are trusted. The conditional UPDATE tests ``count < limit`` on the row it
        holds locked (see ``_claim_once``) and always changes the row it matches, so rowcount is 1
        exactly when it counted, on every backend. When nothing matched, the row is read in the same
        transaction: missing, it is created by a plain INSERT whose unique constraint lets one of
        several racers win (a loser starts over); full, the answer is no; otherwise another process
        changed it in between and the transaction starts over. Rows are locked in the order given,
        the same (scope) order in every process, so these transactions do not wait on each other in
        a cycle; a deadlock the server reports all the same (InnoDB's duplicate-key locks) is retried.
        """

        def attempt() -> tuple[bool, int | None]:
            """(finished, index of the counter at its limit); not finished: start over."""
            with (
                self._guard("counting against the rate limits"),
                self.engine.connect() as conn,
                conn.begin() as transaction,
            ):
                for index, (counter, limit) in enumerate(wanted):
                    outcome = _count_one(conn, counter, limit)
                    if outcome != _COUNTED:
                        transaction.rollback()
                        return outcome == _FULL, index if outcome == _FULL else None
            return True, None

        for _round in range(_ATTEMPTS):
            finished, reached = self._retrying(attempt)
            if finished:
                return reached
        raise StoreUnavailable("the rate counters kept changing; try again later")

    def give_back_counts(self, counters: Sequence[CounterWindow]) -> None:
        """Undo a ``take_counts``: the response it was taken for did not go out."""
        c = rate_counters.c

        def attempt() -> None:
            with self._begin("giving back rate counts") as conn:
                for counter in counters:
                    conn.execute(
                        update(rate_counters)
                        .where(
                            c.scope == counter.scope,
                            c.counter_key == counter.key,
                            c.window_start == counter.start,
                            c.count > 0,
                        )
                        .values(count=c.count - 1)
                    )

        self._retrying(attempt)

    def counts(self, counters: Sequence[CounterWindow]) -> list[int]:
        """The current count of each counter; 0 for one without a row yet."""
        if not counters:
            return []
        c = rate_counters.c
        query = select(c.scope, c.counter_key, c.window_start, c.count).where(
            or_(
                *(
                    and_(c.scope == w.scope, c.counter_key == w.key, c.window_start == w.start)
                    for w in counters
                )
            )
        )
        with self._guard("reading the rate counters"), self.engine.connect() as conn:
            found = {(scope, key, start): n for scope, key, start, n in conn.execute(query)}
        return [found.get((w.scope, w.key, w.start), 0) for w in counters]

    def mark_tripped(self, counter: CounterWindow) -> bool:
        """Flag a full counter as tripped; True only for the one caller that set the flag."""
        c = rate_counters.c

        def attempt() -> bool:
            with self._begin("marking a rate limit as reached") as conn:
                result = conn.execute(
                    update(rate_counters)
                    .where(c.scope == counter.scope, c.counter_key == counter.key)
                    .where(c.window_start == counter.start, c.tripped == False)  # noqa: E712 (SQL)
                    .values(tripped=True)
                )
                return result.rowcount == 1

        return self._retrying(attempt)

    def counters(
        self, now: dt.datetime, selectors: Sequence[tuple[str, str | None]] = ()
    ) -> list[RateCounter]:
        """Counters whose window is still open, optionally only those matching (scope, key-or-None)."""
        c = rate_counters.c
        query = (
            select(rate_counters)
            .where(c.window_end > now, _selected(selectors))
            .order_by(c.scope, c.counter_key, c.window_start)
        )
        with self._guard("reading the rate counters"), self.engine.connect() as conn:
            return [
                RateCounter(**{k: row[k] for k in RateCounter.__dataclass_fields__})
                for row in conn.execute(query).mappings()
            ]

    def reset_counters(self, selectors: Sequence[tuple[str, str | None]]) -> int:
        """Delete the counters matching (scope, key-or-None) selectors; their limits start again at 0."""
        with self._begin("resetting rate counters") as conn:
            return int(conn.execute(delete(rate_counters).where(_selected(selectors))).rowcount)

    # -- housekeeping -------------------------------------------------------------------------------

    def purge(self, now: dt.datetime, claims_before: dt.datetime, audit_before: dt.datetime) -> PurgeResult:
        """Delete reply claims older than any interval, closed rate windows and old audit rows."""
        with self._begin("purging") as conn:
            claims = conn.execute(delete(reply_claims).where(reply_claims.c.replied_at < claims_before))
            # Bounce claims live as long as reply claims: bounce.interval is far shorter in practice.
            bounced = conn.execute(delete(bounce_claims).where(bounce_claims.c.replied_at < claims_before))
            counters = conn.execute(delete(rate_counters).where(rate_counters.c.window_end <= now))
            audit = conn.execute(delete(decisions).where(decisions.c.at < audit_before))
            return PurgeResult(
                int(claims.rowcount) + int(bounced.rowcount), int(counters.rowcount), int(audit.rowcount)
            )


_COUNTED, _FULL, _AGAIN = "counted", "full", "again"


def _count_one(conn: Connection, counter: CounterWindow, limit: int) -> str:
    """One step of ``take_counts``: counted, full (at its limit), or again (changed under us)."""
    c = rate_counters.c
    where = (c.scope == counter.scope, c.counter_key == counter.key, c.window_start == counter.start)
    counted = conn.execute(update(rate_counters).where(*where, c.count < limit).values(count=c.count + 1))
    if counted.rowcount == 1:
        return _COUNTED
    current = conn.execute(select(c.count).where(*where)).scalar_one_or_none()
    if current is not None:
        return _FULL if current >= limit else _AGAIN
    try:
        conn.execute(
            insert(rate_counters).values(
                scope=counter.scope,
                counter_key=counter.key,
                window_start=counter.start,
                window_end=counter.end,
                count=1,
                tripped=False,
            )
        )
    except sa_exc.IntegrityError:
        # Another process created the row first (and PostgreSQL has aborted our transaction):
        # start over, and count through the UPDATE.
        return _AGAIN
    return _COUNTED


def _selected(selectors: Sequence[tuple[str, str | None]]) -> Any:
    c = rate_counters.c
    if not selectors:
        return true()
    return or_(*(c.scope == s if k is None else and_(c.scope == s, c.counter_key == k) for s, k in selectors))


def _retirement(row: RowMapping) -> Retirement:
    return Retirement(**{column.name: row[column.name] for column in retired_addresses.c})


def _is_missing_table(exc: sa_exc.DBAPIError) -> bool:
    message = str(exc.orig).lower()
    return "no such table" in message or "does not exist" in message or "doesn't exist" in message
