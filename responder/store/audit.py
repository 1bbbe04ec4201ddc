"""The decisions table (the audit) and the purge of everything that ages out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from responder.decide.records import DecisionRecord
from responder.store.driver import Prepared
from responder.store.engine import Database, domain_pattern
from responder.store.schema import bounce_claims, decisions, rate_counters, reply_claims


@dataclass(frozen=True)
class PurgeResult:
    claims: int
    counters: int
    audit: int


# Written for every message: compiled once, run on the driver (responder.store.driver).
_AUDIT_ROWS = Prepared(insert(decisions), list(DecisionRecord.__dataclass_fields__))


def insert_audit(conn: Connection, records: Sequence[DecisionRecord]) -> None:
    """Audit rows in the caller's transaction."""
    _AUDIT_ROWS.execute_many(conn, [record.__dict__ for record in records])


class Audit(Database):
    """Writing and reading the audit, and the purge."""

    def record(self, record: DecisionRecord) -> None:
        with self._begin("writing the audit") as conn:
            insert_audit(conn, [record])

    def record_many(self, records: Sequence[DecisionRecord]) -> None:
        """Several audit rows in one transaction (responder.store.group_commit)."""
        with self._begin("writing the audit") as conn:
            insert_audit(conn, records)

    def decisions(
        self,
        sender: str | None = None,
        recipient: str | None = None,
        limit: int = 50,
        *,
        reason: str | None = None,
        recipient_domain: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> list[DecisionRecord]:
        """Newest first; ``since`` inclusive and ``until`` exclusive, like a vacation's start and end."""
        c = decisions.c
        query = select(decisions).order_by(c.at.desc(), c.id.desc()).limit(limit)
        if sender:
            query = query.where(c.sender == sender)
        if recipient:
            query = query.where(c.recipient == recipient)
        if reason:
            query = query.where(c.reason == reason)
        if recipient_domain:
            query = query.where(c.recipient.like(domain_pattern(recipient_domain), escape="/"))
        if since:
            query = query.where(c.at >= since)
        if until:
            query = query.where(c.at < until)
        with self._guard("reading the audit"), self.engine.connect() as conn:
            return [
                DecisionRecord(**{k: row[k] for k in DecisionRecord.__dataclass_fields__})
                for row in conn.execute(query).mappings()
            ]

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
