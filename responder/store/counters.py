"""The rate_counters table: all-or-none counting against the limits, giving back, listing, resetting."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, delete, insert, or_, select, true, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from responder.errors import StoreUnavailable
from responder.store.driver import Prepared
from responder.store.engine import ATTEMPTS, Database
from responder.store.schema import rate_counters

# The statements of every response counted, on the driver's own cursor (responder.store.driver).
_c = rate_counters.c
_ONE = (
    _c.scope == bindparam("p_scope"),
    _c.counter_key == bindparam("p_key"),
    _c.window_start == bindparam("p_start"),
)
_READ = Prepared(select(_c.count).where(*_ONE))
_COUNT = Prepared(
    update(rate_counters).where(*_ONE, _c.count < bindparam("p_limit")).values(count=_c.count + 1)
)
_CREATE = Prepared(
    insert(rate_counters), ["scope", "counter_key", "window_start", "window_end", "count", "tripped"]
)


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


class Counters(Database):
    """All SQL on rate counters."""

    def take_counts(self, wanted: Sequence[tuple[CounterWindow, int]]) -> int | None:
        """Count one response in every (counter, limit) pair, all or none, in one transaction.

        None when counted; else the index of the first counter found at its limit (nothing counted).
        No upsert rowcounts are trusted. The conditional UPDATE tests ``count < limit`` on the row it
        holds locked (see ``Claims._claim_once``) and always changes the row it matches, so rowcount is 1
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
                self._one_writer("counting against the rate limits"),
                self.engine.connect() as conn,
                conn.begin() as transaction,
            ):
                for index, (counter, limit) in enumerate(wanted):
                    outcome = _count_one(conn, counter, limit)
                    if outcome != _COUNTED:
                        transaction.rollback()
                        return outcome == _FULL, index if outcome == _FULL else None
            return True, None

        for _round in range(ATTEMPTS):
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
        with self._guard("reading the rate counters"), self.engine.connect() as conn:
            # One look-up by key per counter: the statement is the same whatever the limits are.
            return [found[0][0] if (found := _READ.rows(conn, _bound(w))) else 0 for w in counters]

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


_COUNTED, _FULL, _AGAIN = "counted", "full", "again"


def _bound(counter: CounterWindow) -> dict[str, Any]:
    return {"p_scope": counter.scope, "p_key": counter.key, "p_start": counter.start}


def _count_one(conn: Connection, counter: CounterWindow, limit: int) -> str:
    """One step of ``take_counts``: counted, full (at its limit), or again (changed under us)."""
    where = _bound(counter)
    if _COUNT.execute(conn, {**where, "p_limit": limit}) == 1:
        return _COUNTED
    found = _READ.rows(conn, where)
    if found:
        return _FULL if found[0][0] >= limit else _AGAIN
    try:
        _CREATE.execute(
            conn,
            {
                "scope": counter.scope,
                "counter_key": counter.key,
                "window_start": counter.start,
                "window_end": counter.end,
                "count": 1,
                "tripped": False,
            },
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
