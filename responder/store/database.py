"""The Store façade: one object over the repositories; database faults become StoreUnavailable."""

from __future__ import annotations

from collections.abc import Sequence

from responder.decide.records import DecisionRecord, Retirement, Vacation
from responder.store.audit import Audit, PurgeResult
from responder.store.changes import Change, Changes
from responder.store.claims import (
    BOUNCES,
    PENDING,
    REPLIES,
    TAKEN,
    WON,
    ClaimKind,
    ClaimRequest,
    Claims,
    LastClaim,
)
from responder.store.counters import Counters, CounterWindow, RateCounter
from responder.store.engine import STATEMENT_SLACK, limit_statements, make_engine, sqlite_file
from responder.store.migrate import Migrations
from responder.store.outbox import Outbox
from responder.store.recipients import record_ids
from responder.store.retirements import Retirements
from responder.store.tokens import ApiToken, TokenExists, Tokens
from responder.store.vacations import Vacations

__all__ = [
    "BOUNCES",
    "PENDING",
    "REPLIES",
    "STATEMENT_SLACK",
    "TAKEN",
    "WON",
    "ApiToken",
    "Change",
    "ClaimKind",
    "ClaimRequest",
    "CounterWindow",
    "DecisionRecord",
    "LastClaim",
    "PurgeResult",
    "RateCounter",
    "Retirement",
    "Store",
    "TokenExists",
    "Vacation",
    "limit_statements",
    "make_engine",
]


# The repositories share one engine and its fault translation (``Database``), so the façade is
# their union: every caller keeps ``store.vacation_for(...)``, and each table's SQL lives in one module.
class Store(Migrations, Vacations, Retirements, Claims, Counters, Audit, Outbox, Tokens, Changes):
    """All database access of the engine and the admin commands."""

    @classmethod
    def open(cls, url: str, busy_timeout: float = 10.0, pooled: bool = False) -> Store:
        """A store on ``url``. A SQLite file is never created here (a command that only reads, or a
        hook, would leave an empty file with its own owner): only ``upgrade`` creates it.

        ``pooled``: for a long-running process. Its connections are checked before use, and on SQLite
        its writers take turns with the other processes of the service on ``<file>.lock``."""
        sqlite = sqlite_file(url)
        if sqlite is None:
            return cls(make_engine(url, busy_timeout, pooled), busy_timeout=busy_timeout)
        engine = make_engine(sqlite[1], busy_timeout, pooled)
        return cls(engine, sqlite_path=sqlite[0], busy_timeout=busy_timeout, shared_turn=pooled)

    def recipient_records(self, addresses: Sequence[str]) -> tuple[Vacation | None, Retirement | None]:
        """``vacation_for`` and ``retirement_for`` of every message: one statement for a recipient
        with neither, the row of each it has besides."""
        wanted = [a for a in addresses if a]
        if not wanted:
            return None, None
        with self._guard("looking up the recipient"), self.engine.connect() as conn:
            vacation_id, retirement_id = record_ids(conn, wanted)
            vacation = None if vacation_id is None else self._vacation_by_id(conn, vacation_id)
            retirement = None if retirement_id is None else self._retirement_by_id(conn, retirement_id)
            return vacation, retirement
