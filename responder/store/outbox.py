"""The outbox table: responses committed with their decision, leased to one sender, sent exactly once.

A row's life: ``pending`` (waiting for its next attempt), leased by one sender (``lease_token``,
``lease_until``), ``sending`` from just before the final dot is written, then ``sent``; or ``failed``
(the relay refused it, 5xx) or ``gave-up`` (still not sent at ``expires_at``). A lease that expires
on a ``pending`` row frees it for any sender: the relay never had its final dot, so sending again
cannot mail twice. A ``sending`` row whose lease expired belonged to a sender that died between the
final dot and the relay's answer: the relay may have queued it, so it is counted as sent, never sent
again (the one window in which a response can be lost rather than duplicated).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from responder.decide.records import DecisionRecord
from responder.errors import StoreUnavailable
from responder.store.audit import insert_audit
from responder.store.claims import BOUNCES, REPLIES, TAKEN, WON, ClaimKind, ClaimRequest, take_sent
from responder.store.counters import CounterWindow
from responder.store.driver import Prepared, PreparedInsert
from responder.store.engine import Database
from responder.store.schema import bounce_claims, outbox, rate_counters, reply_claims

PENDING, SENDING, SENT, FAILED, GAVE_UP = "pending", "sending", "sent", "failed", "gave-up"
STATES = (PENDING, SENDING, SENT, FAILED, GAVE_UP)
FINAL_STATES = (SENT, FAILED, GAVE_UP)
# Said of a row found ``sending`` with its sender gone.
UNCONFIRMED = "sender stopped after the final dot, before the relay's answer: counted as sent"
_KINDS: dict[str, ClaimKind] = {REPLIES.what: REPLIES, BOUNCES.what: BOUNCES}
TOKEN_LENGTH = 32
# How often one take_due picks again after losing rows to another sender.
TAKE_ROUNDS = 3


class ClaimLost(StoreUnavailable):
    """An interval claim of the decision was taken over before the commit: nothing is promised."""


class ClaimTaken(Exception):
    """A claim taken at the commit is held by the last response: nothing was written, the response
    is not due (``index``: which of the claims asked for)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


@dataclass(frozen=True)
class HeldClaim:
    """An interval claim the decision holds (pending), confirmed by the commit."""

    kind: ClaimKind
    owner_id: int
    sender_key: str
    token: str


@dataclass(frozen=True)
class Lease:
    """A sender's hold on a row: only the holder of ``token`` sends it, until ``until``."""

    token: str
    until: dt.datetime


@dataclass(frozen=True)
class Owed:
    """One composed response to commit: the envelope, the bytes, and where it came from."""

    mail_from: str
    rcpt_to: str
    message: bytes
    action: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class Mark:
    """A sender's mark on a leased row: ``sending`` without ``sent_at``, else ``sent`` then."""

    row_id: int
    token: str
    sent_at: dt.datetime | None = None
    note: str = ""


@dataclass(frozen=True)
class OutboxRow:
    id: int
    created_at: dt.datetime
    expires_at: dt.datetime
    next_attempt_at: dt.datetime
    attempts: int
    state: str
    lease_token: str | None
    lease_until: dt.datetime | None
    sent_at: dt.datetime | None
    mail_from: str
    rcpt_to: str
    message: bytes
    last_error: str
    action: str
    queue_id: str
    message_id: str
    sender: str
    recipient: str
    claims: str


_FIELDS = tuple(OutboxRow.__dataclass_fields__)


def _row(mapping: Any) -> OutboxRow:
    return OutboxRow(**{name: mapping[name] for name in _FIELDS})


def lease_token(owner: str) -> str:
    """A lease token that starts with ``owner`` (a worker's key), so its parent can find its rows."""
    return owner + secrets.token_hex((TOKEN_LENGTH - len(owner)) // 2)


def _claims_json(held: Sequence[HeldClaim], counters: Sequence[CounterWindow]) -> str:
    return json.dumps(
        {
            "claims": [[h.kind.what, h.owner_id, h.sender_key, h.token] for h in held],
            "counters": [[c.scope, c.key, c.start.isoformat(), c.end.isoformat()] for c in counters],
        }
    )


def _give_back(conn: Connection, claims: str) -> None:
    """Release what a response that will never go out held: its interval claims and its rate counts."""
    try:
        data = json.loads(claims or "{}")
    except ValueError:
        return
    for what, owner_id, key, token in data.get("claims", []):
        kind = _KINDS.get(what)
        if kind is None:
            continue
        c = kind.table.c
        conn.execute(
            delete(kind.table).where(c[kind.owner] == owner_id, c.sender_key == key, c.token == token)
        )
    r = rate_counters.c
    for scope, key, start, _end in data.get("counters", []):
        conn.execute(
            update(rate_counters)
            .where(
                r.scope == scope,
                r.counter_key == key,
                r.window_start == dt.datetime.fromisoformat(start),
                r.count > 0,
            )
            .values(count=r.count - 1)
        )


_c = outbox.c
# The statements of every response, built once (building one costs more than SQLite's run of it).
_QUEUE = PreparedInsert(outbox, [column.name for column in outbox.c if column.name != "id"])
_MARK_SENDING = Prepared(
    update(outbox)
    .where(_c.id == bindparam("p_id"), _c.lease_token == bindparam("p_token"), _c.state == PENDING)
    .values(state=SENDING)
)
_MARK_SENT = Prepared(
    update(outbox)
    .where(_c.id == bindparam("p_id"), _c.lease_token == bindparam("p_token"))
    .values(
        state=SENT,
        sent_at=bindparam("p_now"),
        lease_until=None,
        last_error=bindparam("p_note"),
        attempts=_c.attempts + 1,
    )
)


class Outbox(Database):
    """All SQL on the outbox table."""

    def queue_response(
        self,
        owed: Owed,
        held: Sequence[HeldClaim],
        counters: Sequence[CounterWindow],
        audit: DecisionRecord,
        lease: Lease | None = None,
        taking: Sequence[ClaimRequest] = (),
    ) -> OutboxRow:
        """In ONE transaction: confirm the decision's interval claims, queue the response, audit it.

        ClaimLost (nothing written) when a claim is no longer this decision's: another delivery took
        it over as stale, and whichever commits first owes the response. ``taking``: claims taken
        here, as sent, rather than before (``claims.take_sent``): ClaimTaken (nothing written) when
        the last response holds one of them, ClaimLost when another delivery's claim on it is
        pending. Either way whichever commits first owes the response. ``lease``: the row is born
        leased to the sender that will send it at once, so that no sender has to look it up; if that
        sender dies, the lease expires and the row is free for any other, as after ``take_due``.
        The row as written is returned, for that sender.
        """
        with self._begin("queueing the response", durable=True) as conn:
            for claim in held:
                kind = claim.kind
                done = kind.confirm.execute(
                    conn,
                    {"p_owner": claim.owner_id, "p_sender_key": claim.sender_key, "p_token": claim.token},
                )
                if done != 1:
                    raise ClaimLost(f"the {kind.what} claim for <{claim.sender_key}> was taken over")
            for index, request in enumerate(taking):
                verdict = take_sent(conn, request)
                if verdict == TAKEN:
                    raise ClaimTaken(index)
                if verdict != WON:
                    raise ClaimLost(
                        f"another delivery's {request.kind.what} claim for <{request.sender_key}> is pending"
                    )
            held = [*held, *(HeldClaim(r.kind, r.owner_id, r.sender_key, r.token) for r in taking)]
            values: dict[str, Any] = {
                "created_at": audit.at,
                "expires_at": owed.expires_at,
                "next_attempt_at": audit.at,
                "attempts": 0,
                "state": PENDING,
                "lease_token": lease.token if lease else None,
                "lease_until": lease.until if lease else None,
                "sent_at": None,
                "mail_from": owed.mail_from[:320],
                "rcpt_to": owed.rcpt_to[:320],
                "message": owed.message,
                "last_error": "",
                "action": owed.action,
                "queue_id": audit.queue_id,
                "message_id": audit.message_id,
                "sender": audit.sender,
                "recipient": audit.recipient,
                "claims": _claims_json(held, counters),
            }
            key = _QUEUE.key(conn, values)
            insert_audit(conn, [audit])
            return OutboxRow(id=key, **values)

    def take_due(self, owner: str, now: dt.datetime, batch: int, lease: float) -> list[OutboxRow]:
        """Lease up to ``batch`` pending rows due at ``now`` to one sender, for ``lease`` seconds.

        Every backend: a conditional UPDATE that re-tests the row is free, so of several senders on
        any host exactly one sets its token on a row; PostgreSQL and MariaDB first pick the rows with
        ``FOR UPDATE SKIP LOCKED`` so that senders do not queue up behind each other's picks.
        """
        c = outbox.c
        token = lease_token(owner)
        free = and_(
            c.state == PENDING,
            c.next_attempt_at <= now,
            or_(c.lease_until.is_(None), c.lease_until < now),
        )
        until = now + dt.timedelta(seconds=lease)
        # Without SKIP LOCKED (SQLite) senders racing pick the same rows and the losers lease none of
        # them: a loser picks again among the rows still free.
        for _round in range(TAKE_ROUNDS):
            with self._begin("taking responses from the outbox") as conn:
                pick = select(c.id).where(free).order_by(c.next_attempt_at, c.id).limit(batch)
                if conn.dialect.name != "sqlite":
                    pick = pick.with_for_update(skip_locked=True)
                ids = [row.id for row in conn.execute(pick)]
                if not ids:
                    break
                won = conn.execute(
                    update(outbox).where(c.id.in_(ids), free).values(lease_token=token, lease_until=until)
                ).rowcount
            batch -= int(won)
            if won == len(ids) or batch <= 0:
                break
        with self._connect("taking responses from the outbox") as conn:
            rows = conn.execute(select(outbox).where(c.lease_token == token).order_by(c.id)).mappings()
            return [_row(row) for row in rows]

    def mark_sending(self, row_id: int, token: str) -> bool:
        """Right before the final dot: False when the lease is no longer ours (do not send)."""
        return self.mark_many([Mark(row_id, token)])[0]

    def mark_sent(self, row_id: int, token: str, now: dt.datetime, note: str = "") -> None:
        self.mark_many([Mark(row_id, token, now, note)])

    def mark_many(self, marks: Sequence[Mark]) -> list[bool]:
        """Each mark in one transaction: a sender's ``sending`` and ``sent`` marks of the moment.

        True for a ``sent`` mark, and for a ``sending`` mark whose lease is still ours.
        """
        with self._begin("marking responses as being sent or sent") as conn:
            results = [
                mark.sent_at is not None
                or _MARK_SENDING.execute(conn, {"p_id": mark.row_id, "p_token": mark.token}) == 1
                for mark in marks
            ]
            sent = [
                {"p_id": mark.row_id, "p_token": mark.token, "p_now": mark.sent_at, "p_note": mark.note}
                for mark in marks
                if mark.sent_at is not None
            ]
            if sent:
                _MARK_SENT.execute_many(conn, sent)
        return results

    def retry_later(self, row_id: int, token: str, error: str, at: dt.datetime) -> None:
        """A transient fault: back to pending (also from ``sending``: the relay answered, so it has no
        copy), next attempt at ``at``."""
        c = outbox.c
        with self._begin("scheduling a retry") as conn:
            conn.execute(
                update(outbox)
                .where(c.id == row_id, c.lease_token == token, c.state.in_((PENDING, SENDING)))
                .values(
                    state=PENDING,
                    lease_token=None,
                    lease_until=None,
                    next_attempt_at=at,
                    attempts=c.attempts + 1,
                    last_error=error[:2000],
                )
            )

    def finish_unsent(self, row_id: int, token: str, state: str, error: str, audit: DecisionRecord) -> bool:
        """``failed`` or ``gave-up``: give back the claims and counts, audit it, in one transaction."""
        c = outbox.c
        with self._begin("giving up a response") as conn:
            row = conn.execute(
                select(c.claims).where(
                    c.id == row_id, c.lease_token == token, c.state.in_((PENDING, SENDING))
                )
            ).first()
            if row is None:
                return False
            conn.execute(
                update(outbox)
                .where(c.id == row_id)
                .values(
                    state=state,
                    lease_token=None,
                    lease_until=None,
                    attempts=c.attempts + 1,
                    last_error=error[:2000],
                )
            )
            _give_back(conn, row.claims)
            insert_audit(conn, [audit])
            return True

    def release_leases(self, owner: str, now: dt.datetime) -> int:
        """The leases of a sender that is gone (``owner`` its key): pending rows are free at once,
        ``sending`` ones counted as sent. Also frees its uncommitted interval claims: a process that
        is gone can no longer commit them. How many outbox rows it held."""
        c = outbox.c
        mine = c.lease_token.like(f"{owner}%")
        with self._begin("releasing a stopped sender's leases") as conn:
            freed = conn.execute(
                update(outbox).where(mine, c.state == PENDING).values(lease_token=None, lease_until=None)
            )
            unknown = conn.execute(
                update(outbox)
                .where(mine, c.state == SENDING)
                .values(state=SENT, sent_at=now, lease_until=None, last_error=UNCONFIRMED)
            )
            for table in (reply_claims, bounce_claims):
                conn.execute(delete(table).where(table.c.state == "pending", table.c.token.like(f"{owner}%")))
            return int(freed.rowcount) + int(unknown.rowcount)

    def recover_unconfirmed(self, now: dt.datetime) -> int:
        """``sending`` rows whose lease expired: their sender died after the final dot; counted as sent."""
        c = outbox.c
        with self._begin("recovering responses of a stopped sender") as conn:
            done = conn.execute(
                update(outbox)
                .where(c.state == SENDING, c.lease_until < now)
                .values(state=SENT, sent_at=now, lease_until=None, last_error=UNCONFIRMED)
            )
            return int(done.rowcount)

    def outbox_stats(self, now: dt.datetime) -> tuple[int, float]:
        """(responses owed and not yet sent, age in seconds of the oldest of them; 0.0 when none)."""
        c = outbox.c
        with self._connect("reading the outbox") as conn:
            depth, oldest = conn.execute(
                select(func.count(), func.min(c.created_at)).where(c.state.in_((PENDING, SENDING)))
            ).one()
        if not depth or oldest is None:
            return 0, 0.0
        if oldest.tzinfo is None:  # func.min bypasses the column type
            oldest = oldest.replace(tzinfo=dt.UTC)
        return int(depth), max(0.0, (now - oldest).total_seconds())

    def outbox_rows(self, states: Sequence[str] = STATES, limit: int = 100) -> list[OutboxRow]:
        c = outbox.c
        query = select(outbox).where(c.state.in_(tuple(states))).order_by(c.id.desc()).limit(limit)
        with self._connect("reading the outbox") as conn:
            return [_row(row) for row in conn.execute(query).mappings()]

    def outbox_retry(self, now: dt.datetime, max_age: float, row_id: int | None = None) -> int:
        """Make pending rows (all, or ``row_id``, also failed or given up) due now, with a fresh max_age.

        A failed or given-up row had its claims given back: sending it anyway is the admin's call.
        """
        c = outbox.c
        where: ColumnElement[bool] = (
            c.state.in_((PENDING, FAILED, GAVE_UP)) if row_id is not None else c.state == PENDING
        )
        if row_id is not None:
            where = and_(where, c.id == row_id)
        with self._begin("retrying outbox responses") as conn:
            done = conn.execute(
                update(outbox)
                .where(where, or_(c.lease_until.is_(None), c.lease_until < now))
                .values(
                    state=PENDING,
                    next_attempt_at=now,
                    expires_at=now + dt.timedelta(seconds=max_age),
                    lease_token=None,
                    lease_until=None,
                )
            )
            return int(done.rowcount)

    def outbox_purge(self, sent_before: dt.datetime | None = None, row_id: int | None = None) -> int:
        """Delete finished rows (sent, failed, given up): those older than ``sent_before``, or ``row_id``."""
        c = outbox.c
        where: ColumnElement[bool] = c.state.in_(FINAL_STATES)
        if row_id is not None:
            where = and_(where, c.id == row_id)
        if sent_before is not None:
            where = and_(
                where,
                or_(
                    and_(c.sent_at.is_not(None), c.sent_at < sent_before),
                    and_(c.sent_at.is_(None), c.created_at < sent_before),
                ),
            )
        with self._begin("purging the outbox") as conn:
            return int(conn.execute(delete(outbox).where(where)).rowcount)
