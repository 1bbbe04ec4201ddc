"""The vacations table, its aliases and its messages in other languages: look-up, listing, saving."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from responder.decide.records import Translation, Vacation, VacationChanges
from responder.store.changes import Change, write_change
from responder.store.driver import Prepared
from responder.store.engine import Database
from responder.store.schema import reply_claims, vacation_aliases, vacation_messages, vacations

# The look-ups of every message, built once (building one costs more than SQLite's run of it).
_BY_ADDRESS = select(vacations).where(vacations.c.address.in_(bindparam("p_addresses", expanding=True)))
_ALIASES = (
    select(vacation_aliases.c.vacation_id, vacation_aliases.c.address)
    .where(vacation_aliases.c.vacation_id.in_(bindparam("p_ids", expanding=True)))
    .order_by(vacation_aliases.c.id)
)
_MESSAGES = (
    select(vacation_messages)
    .where(vacation_messages.c.vacation_id.in_(bindparam("p_ids", expanding=True)))
    .order_by(vacation_messages.c.audience, vacation_messages.c.language)
)
# The one vacation of a message, by id: run on the driver (responder.store.driver).
_ONE = Prepared(select(vacations).where(vacations.c.id == bindparam("p_id")))
_ONES_ALIASES = Prepared(
    select(vacation_aliases.c.address)
    .where(vacation_aliases.c.vacation_id == bindparam("p_id"))
    .order_by(vacation_aliases.c.id)
)
_ONES_MESSAGES = Prepared(
    select(*(vacation_messages.c[name] for name in Translation.__dataclass_fields__))
    .where(vacation_messages.c.vacation_id == bindparam("p_id"))
    .order_by(vacation_messages.c.audience, vacation_messages.c.language)
)
_COLUMNS = tuple(column.name for column in vacations.c)


class Vacations(Database):
    """All SQL on vacations and their aliases."""

    def _aliases(self, conn: Connection, ids: Sequence[int]) -> dict[int, tuple[str, ...]]:
        found: dict[int, list[str]] = {i: [] for i in ids}
        if ids:
            for vacation_id, address in conn.execute(_ALIASES, {"p_ids": list(ids)}):
                found[vacation_id].append(address)
        return {i: tuple(v) for i, v in found.items()}

    def _translations(self, conn: Connection, ids: Sequence[int]) -> dict[int, tuple[Translation, ...]]:
        found: dict[int, list[Translation]] = {i: [] for i in ids}
        if ids:
            for row in conn.execute(_MESSAGES, {"p_ids": list(ids)}).mappings():
                found[row["vacation_id"]].append(
                    Translation(
                        row["audience"], row["language"], row["subject"], row["message"], row["html_message"]
                    )
                )
        return {i: tuple(v) for i, v in found.items()}

    @staticmethod
    def _vacation(
        row: Mapping[Any, Any], aliases: tuple[str, ...], translations: tuple[Translation, ...]
    ) -> Vacation:
        return Vacation(
            aliases=aliases,
            translations=translations,
            **{column.name: row[column.name] for column in vacations.c},
        )

    def vacation_for(self, addresses: Sequence[str]) -> Vacation | None:
        """The vacation of the first of ``addresses`` that has one (recipient before original recipient)."""
        wanted = [a for a in addresses if a]
        if not wanted:
            return None
        with self._guard("looking up the vacation"), self.engine.connect() as conn:
            return self._vacation_on(conn, wanted)

    def _vacation_on(self, conn: Connection, wanted: Sequence[str]) -> Vacation | None:
        rows = {row["address"]: row for row in conn.execute(_BY_ADDRESS, {"p_addresses": wanted}).mappings()}
        for address in wanted:
            if address in rows:
                return self._whole(conn, rows[address])
        return None

    def _vacation_by_id(self, conn: Connection, vacation_id: int) -> Vacation | None:
        rows = _ONE.rows(conn, {"p_id": vacation_id})
        if not rows:
            return None  # deleted since its id was read
        return self._whole(conn, dict(zip(_COLUMNS, rows[0], strict=True)))

    def _whole(self, conn: Connection, row: Mapping[Any, Any]) -> Vacation:
        """One vacation's row with its aliases and its messages in other languages."""
        key = {"p_id": row["id"]}
        aliases = tuple(address for (address,) in _ONES_ALIASES.rows(conn, key))
        translations = tuple(Translation(*fields) for fields in _ONES_MESSAGES.rows(conn, key))
        return self._vacation(row, aliases, translations)

    def list_vacations(self) -> list[Vacation]:
        with self._guard("listing vacations"), self.engine.connect() as conn:
            rows = list(conn.execute(select(vacations).order_by(vacations.c.address)).mappings())
            ids = [row["id"] for row in rows]
            aliases, translations = self._aliases(conn, ids), self._translations(conn, ids)
            return [self._vacation(row, aliases[row["id"]], translations[row["id"]]) for row in rows]

    def put_vacation(
        self,
        address: str,
        now: dt.datetime,
        aliases: Sequence[str] | None,
        translations: Sequence[Translation] | None = None,
        drop_languages: Sequence[str] = (),
        *,
        change: Change | None = None,
        **changes: Unpack[VacationChanges],
    ) -> None:
        """Create or update the vacation of ``address``; ``aliases`` None keeps the current list.

        Each of ``translations`` replaces the message of its (audience, language), or deletes it when
        it has no text at all; the others are kept. Every message in a language of ``drop_languages``
        is deleted, for both audiences.
        ``change``, when given, is logged in the same transaction (the web service's change log).
        """
        with self._begin("saving the vacation") as conn:
            existing = conn.execute(
                select(vacations.c.id).where(vacations.c.address == address)
            ).scalar_one_or_none()
            if existing is None:
                result = conn.execute(
                    insert(vacations).values(address=address, created_at=now, updated_at=now, **changes)
                )
                key = result.inserted_primary_key
                assert key is not None
                vacation_id = int(key[0])
            else:
                vacation_id = existing
                conn.execute(
                    update(vacations).where(vacations.c.id == vacation_id).values(updated_at=now, **changes)
                )
            if aliases is not None:
                conn.execute(delete(vacation_aliases).where(vacation_aliases.c.vacation_id == vacation_id))
                for alias in dict.fromkeys(aliases):
                    conn.execute(insert(vacation_aliases).values(vacation_id=vacation_id, address=alias))
            c = vacation_messages.c
            if drop_languages:
                conn.execute(
                    delete(vacation_messages).where(
                        c.vacation_id == vacation_id, c.language.in_(drop_languages)
                    )
                )
            for item in translations or ():
                conn.execute(
                    delete(vacation_messages).where(
                        c.vacation_id == vacation_id, c.audience == item.audience, c.language == item.language
                    )
                )
                if not (item.subject or item.message or item.html_message):
                    continue  # an emptied message is a deleted one
                conn.execute(
                    insert(vacation_messages).values(
                        vacation_id=vacation_id,
                        audience=item.audience,
                        language=item.language,
                        subject=item.subject,
                        message=item.message,
                        html_message=item.html_message,
                    )
                )
            if change is not None:
                write_change(conn, change)

    def set_enabled(
        self, address: str, enabled: bool, now: dt.datetime, change: Change | None = None
    ) -> bool:
        with self._begin("saving the vacation") as conn:
            result = conn.execute(
                update(vacations)
                .where(vacations.c.address == address)
                .values(enabled=enabled, updated_at=now)
            )
            if result.rowcount > 0 and change is not None:
                write_change(conn, change)
            return result.rowcount > 0

    def delete_vacation(self, address: str, change: Change | None = None) -> bool:
        with self._begin("deleting the vacation") as conn:
            vacation_id = conn.execute(
                select(vacations.c.id).where(vacations.c.address == address)
            ).scalar_one_or_none()
            if vacation_id is None:
                return False
            # Explicit deletes: foreign keys may be off on an old SQLite file opened elsewhere.
            conn.execute(delete(reply_claims).where(reply_claims.c.vacation_id == vacation_id))
            conn.execute(delete(vacation_aliases).where(vacation_aliases.c.vacation_id == vacation_id))
            conn.execute(delete(vacation_messages).where(vacation_messages.c.vacation_id == vacation_id))
            conn.execute(delete(vacations).where(vacations.c.id == vacation_id))
            if change is not None:
                write_change(conn, change)
            return True
