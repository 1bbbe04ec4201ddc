"""Vacations, reply claims and the decision audit in SQL; database faults become StoreUnavailable."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Engine,
    and_,
    create_engine,
    delete,
    event,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.pool import NullPool

from responder.errors import StoreUnavailable
from responder.paths import resource_dir
from responder.schema import SCHEMA_REVISION, decisions, reply_claims, vacation_aliases, vacations

# Faults of the database server or file, not of our statements: the MTA should retry.
_TRANSIENT = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, sa_exc.InternalError)


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

    def active(self, now: dt.datetime) -> bool:
        """Enabled, started, and not yet ended (the end instant itself is outside)."""
        if not self.enabled:
            return False
        if self.starts_at is not None and now < self.starts_at:
            return False
        return self.ends_at is None or now < self.ends_at

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
class LastReply:
    replied_at: dt.datetime
    message_key: str
    state: str


def _sqlite_pragmas(busy_timeout: float) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    return on_connect


def make_engine(url: str, busy_timeout: float = 10.0, pooled: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets a busy timeout and foreign keys, others a short connect timeout."""
    kwargs: dict[str, Any] = {} if pooled else {"poolclass": NullPool}
    connect_args: dict[str, Any] = {}
    if url.startswith("sqlite"):
        connect_args["timeout"] = busy_timeout
    elif url.startswith("postgresql") or url.startswith(("mysql", "mariadb")):
        connect_args["connect_timeout"] = max(1, int(busy_timeout))
    try:
        engine = create_engine(url, connect_args=connect_args, **kwargs)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
        raise StoreUnavailable(f"database.url cannot be used: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout))
    return engine


def alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resource_dir("migrations")))
    config.attributes["connection"] = connection
    return config


class Store:
    """All database access of the engine and the admin commands."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, busy_timeout: float = 10.0, pooled: bool = False) -> Store:
        return cls(make_engine(url, busy_timeout, pooled))

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except _TRANSIENT as exc:
            raise StoreUnavailable(
                f"database unavailable while {what}: {getattr(exc, 'orig', None) or exc}"
            ) from None

    @contextmanager
    def _begin(self, what: str) -> Iterator[Connection]:
        with self._guard(what), self.engine.begin() as conn:
            yield conn

    # -- schema -------------------------------------------------------------------------------------

    def current_revision(self) -> str | None:
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
            raise StoreUnavailable(
                f"database schema is {found}, this responder needs {SCHEMA_REVISION}: "
                "run `responder db upgrade`"
            )

    def upgrade(self, revision: str = "head") -> None:
        from alembic import command

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

    def claim_reply(
        self,
        vacation_id: int,
        sender_key: str,
        message_key: str,
        now: dt.datetime,
        interval: dt.timedelta,
        stale_after: dt.timedelta,
    ) -> str | None:
        """Atomically take the right to reply to this sender now; a token on success, None when taken.

        The claim is free when the last reply is at least ``interval`` old and was for another message,
        or when an attempt for this very message died (pending for longer than ``stale_after``, which is
        the hook's deadline). A retry of a message that was answered never wins.
        """
        token = secrets.token_hex(16)
        values = {"replied_at": now, "message_key": message_key, "state": "pending", "token": token}
        c = reply_claims.c
        for _attempt in range(2):
            try:
                with self._begin("claiming the reply interval") as conn:
                    conn.execute(
                        insert(reply_claims).values(vacation_id=vacation_id, sender_key=sender_key, **values)
                    )
                return token
            except sa_exc.IntegrityError:
                pass
            with self._begin("claiming the reply interval") as conn:
                result = conn.execute(
                    update(reply_claims)
                    .where(c.vacation_id == vacation_id, c.sender_key == sender_key)
                    .where(
                        or_(
                            and_(c.replied_at <= now - interval, c.message_key != message_key),
                            and_(
                                c.state == "pending",
                                c.replied_at <= now - stale_after,
                                c.message_key == message_key,
                            ),
                        )
                    )
                    .values(**values)
                )
                if result.rowcount == 1:
                    return token
                still_there = conn.execute(
                    select(c.id).where(c.vacation_id == vacation_id, c.sender_key == sender_key)
                ).first()
            if still_there is not None:
                return None
            # The row was released between our insert and update: try the insert once more.
        return None

    def confirm_reply(self, vacation_id: int, sender_key: str, token: str) -> None:
        c = reply_claims.c
        with self._begin("confirming the reply") as conn:
            conn.execute(
                update(reply_claims)
                .where(c.vacation_id == vacation_id, c.sender_key == sender_key, c.token == token)
                .values(state="sent")
            )

    def release_reply(self, vacation_id: int, sender_key: str, token: str) -> None:
        c = reply_claims.c
        with self._begin("releasing the reply claim") as conn:
            conn.execute(
                delete(reply_claims).where(
                    c.vacation_id == vacation_id, c.sender_key == sender_key, c.token == token
                )
            )

    def last_reply(self, vacation_id: int, sender_key: str) -> LastReply | None:
        c = reply_claims.c
        with self._guard("reading the reply interval"), self.engine.connect() as conn:
            row = conn.execute(
                select(c.replied_at, c.message_key, c.state).where(
                    c.vacation_id == vacation_id, c.sender_key == sender_key
                )
            ).first()
        return None if row is None else LastReply(row.replied_at, row.message_key, row.state)

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


def _is_missing_table(exc: sa_exc.DBAPIError) -> bool:
    message = str(exc.orig).lower()
    return "no such table" in message or "does not exist" in message or "doesn't exist" in message
