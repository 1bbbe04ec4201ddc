"""The decisions table (the audit) and the purge of everything that ages out."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, insert, select

from responder.decide.records import DecisionRecord
from responder.store.engine import Database
from responder.store.schema import bounce_claims, decisions, rate_counters, reply_claims


@dataclass(frozen=True)
class PurgeResult:
    claims: int
    counters: int
    audit: int


class Audit(Database):
    """Writing and reading the audit, and the purge."""

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
