"""Migration 0005 on SQLite, PostgreSQL and MariaDB: old rows keep their meaning up and down."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text

from responder.decide.records import EXTERNAL, INTERNAL, Translation
from responder.store.database import REPLIES, ClaimRequest, Store

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def _claims(store: Store) -> list[tuple[str, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT sender_key, audience FROM reply_claims ORDER BY sender_key, audience")
        )
        return [(row[0], row[1]) for row in rows]


def test_claims_and_vacations_before_0005_keep_their_meaning(empty_backend_url: str) -> None:
    store = Store.open(empty_backend_url)
    try:
        store.upgrade("0003")
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO vacations (address, enabled, message, timezone, created_at, updated_at) "
                    "VALUES ('alice@example.com', :on, 'Away.', 'UTC', :now, :now)"
                ),
                {"on": True, "now": NOW.replace(tzinfo=None)},
            )
            vacation_id = conn.execute(text("SELECT id FROM vacations")).scalar_one()
            conn.execute(
                text(
                    "INSERT INTO vacation_aliases (vacation_id, address) VALUES (:id, 'a.alias@example.com')"
                ),
                {"id": vacation_id},
            )
            conn.execute(
                text(
                    "INSERT INTO reply_claims"
                    " (vacation_id, sender_key, replied_at, message_key, state, token)"
                    " VALUES (:id, 'bob@example.org', :now, '<m1@example.org>', 'sent', 't1')"
                ),
                {"id": vacation_id, "now": NOW.replace(tzinfo=None)},
            )
        store.upgrade("0005")
        # The claim made before was for the one message there was: the internal one.
        assert _claims(store) == [("bob@example.org", INTERNAL)]
        [vacation] = store.list_vacations()
        assert (vacation.external_audience, vacation.html_message, vacation.translations) == ("all", None, ())
        store.put_vacation(
            "alice@example.com",
            NOW,
            None,
            [Translation(EXTERNAL, "de", "Abwesend", "Weg.", None)],
            external_message="Out of office.",
        )
        request = ClaimRequest(
            REPLIES, vacation.id, "bob@example.org", "<m2@example.org>", NOW, HOUR, HOUR, "t2", EXTERNAL
        )
        assert store.claim(request) == "won"  # the external reply has its own interval
        assert _claims(store) == [("bob@example.org", EXTERNAL), ("bob@example.org", INTERNAL)]
        store.downgrade("0003")
        with store.engine.connect() as conn:
            claims = conn.execute(text("SELECT sender_key, token FROM reply_claims")).all()
        assert [tuple(row) for row in claims] == [("bob@example.org", "t1")]
        with store.engine.connect() as conn:
            aliases = conn.execute(text("SELECT address FROM vacation_aliases")).scalars().all()
        assert aliases == ["a.alias@example.com"]  # no table copy cascaded a delete
        store.upgrade()
        [vacation] = store.list_vacations()
        assert vacation.translations == () and vacation.external_message is None
    finally:
        store.close()
