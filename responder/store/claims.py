"""The two-phase claims on the reply and bounce intervals: claim, then confirm or release.

Reply claims are kept per (vacation, sender, audience message): see ``ClaimKind.by_audience``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property

from sqlalchemy import Insert, Table, and_, bindparam, delete, insert, or_, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from responder.decide.records import INTERNAL
from responder.store.driver import Prepared
from responder.store.engine import Database
from responder.store.schema import bounce_claims, reply_claims

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
    # Reply claims are per audience message: a sender's external reply does not use up the internal one.
    by_audience: bool = False

    def mine(self, owner_id: int, sender_key: str, audience: str) -> list[ColumnElement[bool]]:
        """The WHERE terms selecting one (owner, sender[, audience]) row."""
        c = self.table.c
        terms = [c[self.owner] == owner_id, c.sender_key == sender_key]
        if self.by_audience:
            terms.append(c.audience == audience)
        return terms

    def key(self, owner_id: int, sender_key: str, audience: str) -> dict[str, object]:
        values: dict[str, object] = {self.owner: owner_id, "sender_key": sender_key}
        if self.by_audience:
            values["audience"] = audience
        return values

    # The statements of a claim, built once: building and hashing a statement costs several times
    # what SQLite takes to run it. Their parameters are named ``p_*`` (column names are reserved for
    # the VALUES and SET clauses); ``params`` gives those of one (owner, sender[, audience]) row.

    def params(self, owner_id: int, sender_key: str, audience: str) -> dict[str, object]:
        values: dict[str, object] = {"p_owner": owner_id, "p_sender_key": sender_key}
        if self.by_audience:
            values["p_audience"] = audience
        return values

    def _mine_bound(self) -> list[ColumnElement[bool]]:
        c = self.table.c
        terms = [c[self.owner] == bindparam("p_owner"), c.sender_key == bindparam("p_sender_key")]
        if self.by_audience:
            terms.append(c.audience == bindparam("p_audience"))
        return terms

    @cached_property
    def insert_claim(self) -> Insert:
        return insert(self.table)

    def insert_if_absent(self, dialect: str) -> Prepared | None:
        """INSERT ... ON CONFLICT DO NOTHING where the backend has it, so that a failed INSERT need not
        end the transaction; None for MySQL/MariaDB. It returns the new row's token, or no row when
        the row exists (rowcount cannot tell: with RETURNING, drivers count differently)."""
        if dialect not in self._insert_if_absent:
            built: Insert | None = None
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                built = sqlite_insert(self.table).on_conflict_do_nothing().returning(self.table.c.token)
            elif dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as postgresql_insert

                built = postgresql_insert(self.table).on_conflict_do_nothing().returning(self.table.c.token)
            columns = [self.owner, "sender_key", *(["audience"] if self.by_audience else [])]
            columns += ["replied_at", "message_key", "state", "token"]  # those of Claims._claim_once
            self._insert_if_absent[dialect] = None if built is None else Prepared(built, columns)
        return self._insert_if_absent[dialect]

    @cached_property
    def _insert_if_absent(self) -> dict[str, Prepared | None]:
        return {}

    def take_over(self, with_interval: bool) -> Prepared:
        """The UPDATE that takes a free row (see Claims._claim_once), with or without an interval."""
        return self._take_over[with_interval]

    @cached_property
    def _take_over(self) -> dict[bool, Prepared]:
        c = self.table.c
        built: dict[bool, Prepared] = {}
        for with_interval in (False, True):
            answered_before: ColumnElement[bool] = c.message_key != bindparam("p_message_key")
            if with_interval:
                answered_before = and_(answered_before, c.replied_at <= bindparam("p_answered_by"))
            free = or_(
                and_(c.state == "sent", answered_before),
                and_(c.state == "pending", c.replied_at <= bindparam("p_stale_by")),
            )
            built[with_interval] = Prepared(
                update(self.table)
                .where(*self._mine_bound(), free)
                .values(
                    replied_at=bindparam("p_now"),
                    message_key=bindparam("p_message_key"),
                    state=bindparam("p_state"),
                    token=bindparam("p_token"),
                )
            )
        return built

    @cached_property
    def read_claim(self) -> Prepared:
        """(replied_at, message_key, state) of one (owner, sender[, audience]) row."""
        c = self.table.c
        return Prepared(select(c.replied_at, c.message_key, c.state).where(*self._mine_bound()))

    @cached_property
    def confirm(self) -> Prepared:
        """Mark the claim of token ``p_token`` sent: the token alone tells a delivery's row apart."""
        c = self.table.c
        return Prepared(
            update(self.table)
            .where(
                c[self.owner] == bindparam("p_owner"),
                c.sender_key == bindparam("p_sender_key"),
                c.token == bindparam("p_token"),
            )
            .values(state="sent")
        )


REPLIES = ClaimKind(reply_claims, "vacation_id", "reply", "answered", by_audience=True)
BOUNCES = ClaimKind(bounce_claims, "retired_id", "bounce", "bounced")


@dataclass(frozen=True)
class ClaimRequest:
    """One attempt to take the right to respond to ``sender_key`` about ``message_key`` at ``now``."""

    kind: ClaimKind
    owner_id: int
    sender_key: str
    message_key: str
    now: dt.datetime
    interval: dt.timedelta
    stale_after: dt.timedelta
    token: str
    audience: str = INTERNAL


class Claims(Database):
    """All SQL on the reply_claims and bounce_claims tables."""

    def claim(self, request: ClaimRequest) -> str:
        """Try to take the right to respond to this sender now under its ``token``: WON, TAKEN or PENDING.

        The row holds the last response. WON when it is confirmed (``sent``) for another message at
        least ``interval`` ago (any time ago when the interval is zero), or is a pending claim older
        than ``stale_after``, whose delivery has certainly ended without confirming or releasing it.
        TAKEN when it is confirmed within the interval, or for this very message: a retry of a message
        that was answered never wins. PENDING when another delivery's claim is neither confirmed nor
        released yet: the caller waits for it (``last_claim``) and tries again, or defers.
        """
        return self._retrying(lambda: self._claim_once(request))

    def _claim_once(self, request: ClaimRequest) -> str:
        # Correct on every backend: the conditional UPDATE re-tests its WHERE on the row it has
        # locked (InnoDB locking read, PostgreSQL's re-check after waiting for a concurrent writer,
        # SQLite's single writer), and every matched row is changed (a new token), so rowcount is 1
        # exactly for the winner, also under MySQL's CLIENT_FOUND_ROWS, which counts matched rather
        # than changed rows. A loser reads the row in the same transaction (READ COMMITTED
        # everywhere, SQLite's write lock already held) to tell TAKEN from PENDING. The INSERT of a
        # row not there lets exactly one of several racers create it (unique constraint); a row gone
        # (released), created or changed in between means trying again.
        kind = request.kind
        # The row exists for every sender answered before, so the UPDATE goes first: one statement
        # for a sender seen before; for one never answered, the INSERT in the same transaction
        # where it can do nothing on a conflict, else (MySQL/MariaDB) in one of its own.
        for _attempt in range(3):
            with self._begin(f"claiming the {kind.what} interval") as conn:
                found = _take_or_look(conn, request, "pending")
            if found == _ABSENT:
                try:
                    with self._begin(f"claiming the {kind.what} interval") as conn:
                        conn.execute(kind.insert_claim, _claim_values(request, "pending")[1])
                    return WON
                except sa_exc.IntegrityError:
                    continue  # another delivery created it in between: look again
            if found is not None:
                return found
        # The row kept changing under us: another delivery is deciding right now.
        return PENDING

    def confirm_claim(self, kind: ClaimKind, owner_id: int, sender_key: str, token: str) -> None:
        with self._begin(f"confirming the {kind.what}") as conn:
            kind.confirm.execute(conn, {"p_owner": owner_id, "p_sender_key": sender_key, "p_token": token})

    def release_claim(
        self,
        kind: ClaimKind,
        owner_id: int,
        sender_key: str,
        token: str,
        audience: str = INTERNAL,
        only_pending: bool = False,
    ) -> None:
        """Give the claim back; ``only_pending``: unless it was confirmed (a commit whose answer was
        lost may have confirmed it, and its response is then owed)."""
        c = kind.table.c
        where = [*kind.mine(owner_id, sender_key, audience), c.token == token]
        if only_pending:
            where.append(c.state == "pending")
        with self._begin(f"releasing the {kind.what} claim") as conn:
            conn.execute(delete(kind.table).where(*where))

    def last_claim(
        self, kind: ClaimKind, owner_id: int, sender_key: str, audience: str = INTERNAL
    ) -> LastClaim | None:
        with self._guard(f"reading the {kind.what} interval"), self.engine.connect() as conn:
            row = next(iter(kind.read_claim.rows(conn, kind.params(owner_id, sender_key, audience))), None)
        return None if row is None else LastClaim(*row)


def _claim_values(request: ClaimRequest, state: str) -> tuple[dict[str, object], dict[str, object]]:
    """The parameters of the take-over UPDATE and the values of a new row, for ``request``."""
    kind, now = request.kind, request.now
    takes = {
        **kind.params(request.owner_id, request.sender_key, request.audience),
        "p_now": now,
        "p_message_key": request.message_key,
        "p_token": request.token,
        "p_state": state,
        "p_stale_by": now - request.stale_after,
    }
    if request.interval:
        takes["p_answered_by"] = now - request.interval
    row_values = {
        **kind.key(request.owner_id, request.sender_key, request.audience),
        "replied_at": now,
        "message_key": request.message_key,
        "state": state,
        "token": request.token,
    }
    return takes, row_values


def takes_in_one_statement(dialect: str) -> bool:
    """Whether a claim can be taken inside another transaction: an INSERT that does nothing on a
    conflict (SQLite, PostgreSQL); MySQL's failed INSERT needs a transaction of its own."""
    return dialect in ("sqlite", "postgresql")


def take_sent(conn: Connection, request: ClaimRequest) -> str:
    """In the caller's transaction, which holds the write: take the claim as ``sent`` at once.

    WON, TAKEN (the last response holds it) or PENDING (another delivery's claim is neither
    confirmed nor released, or the row kept changing): the caller commits only on WON. The backend
    must take claims in one statement (``takes_in_one_statement``). As in ``Claims.claim``, a row
    created, changed or released by a concurrent transaction in between (PostgreSQL; SQLite's
    writer is alone) means looking again: each statement sees what was committed before it.
    """
    assert takes_in_one_statement(conn.dialect.name), "this backend's INSERT needs a transaction of its own"
    for _attempt in range(3):
        found = _take_or_look(conn, request, "sent")
        if found is not None:
            return found
    return PENDING


# _take_or_look: no row, and the backend's INSERT needs a transaction of its own (MySQL/MariaDB).
_ABSENT = "absent"


def _take_or_look(conn: Connection, request: ClaimRequest, state: str) -> str | None:
    """One try in the caller's write transaction: WON (taken, as ``state``); TAKEN or PENDING (what
    the row says); None when the row was released or changed in between (look again); _ABSENT."""
    kind = request.kind
    takes, row_values = _claim_values(request, state)
    if kind.take_over(bool(request.interval)).execute(conn, takes) == 1:
        return WON
    absent = kind.insert_if_absent(conn.dialect.name)
    if absent is not None and absent.rows(conn, row_values):
        return WON
    row = next(
        iter(kind.read_claim.rows(conn, kind.params(request.owner_id, request.sender_key, request.audience))),
        None,
    )
    if row is None:
        return _ABSENT if absent is None else None
    verdict = LastClaim(*row).verdict(request.message_key, request.now, request.interval, request.stale_after)
    return None if verdict == WON else verdict
