"""The changes table: every change made through the web service, appended and read back with filters."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from responder.store.engine import Database, domain_pattern
from responder.store.schema import changes


@dataclass(frozen=True)
class Change:
    at: dt.datetime
    actor: str
    via: str
    address: str
    action: str
    detail: dict[str, Any]


def write_change(conn: Connection, change: Change) -> None:
    """Append ``change`` in the caller's transaction: the change and its record commit together."""
    text = json.dumps(change.detail, ensure_ascii=False, sort_keys=True, default=str)
    conn.execute(
        insert(changes).values(
            at=change.at,
            actor=change.actor,
            via=change.via,
            address=change.address,
            action=change.action,
            detail=text,
        )
    )


class Changes(Database):
    """Writing and reading the change log."""

    def record_change(
        self, at: dt.datetime, actor: str, via: str, address: str, action: str, detail: dict[str, Any]
    ) -> None:
        with self._begin("recording the change") as conn:
            write_change(conn, Change(at, actor, via, address, action, detail))

    def list_changes(
        self,
        address: str | None = None,
        domain: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 50,
    ) -> list[Change]:
        c = changes.c
        query = select(changes).order_by(c.at.desc(), c.id.desc()).limit(limit)
        if address:
            query = query.where(c.address == address)
        if domain:
            query = query.where(c.address.like(domain_pattern(domain), escape="/"))
        if since:
            query = query.where(c.at >= since)
        if until:
            query = query.where(c.at < until)
        with self._connect("reading the change log") as conn:
            return [
                Change(r.at, r.actor, r.via, r.address, r.action, json.loads(r.detail))
                for r in conn.execute(query)
            ]
