"""The retired_addresses table: look-up by address, listing, saving, deleting."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Unpack

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection, RowMapping

from responder.decide.records import Retirement, RetirementChanges
from responder.store.changes import Change, write_change
from responder.store.engine import Database
from responder.store.schema import bounce_claims, retired_addresses, vacations

# The look-up of every message, built once (building it costs more than SQLite's run of it).
_BY_ADDRESS = select(retired_addresses).where(
    retired_addresses.c.address.in_(bindparam("p_addresses", expanding=True))
)

_BY_ID = select(retired_addresses).where(retired_addresses.c.id == bindparam("p_id"))


class Retirements(Database):
    """All SQL on retired addresses."""

    def retirement_for(self, addresses: Sequence[str]) -> Retirement | None:
        """The retirement of the first of ``addresses`` that has one, active or not."""
        wanted = [a for a in addresses if a]
        if not wanted:
            return None
        with self._guard("looking up the retired address"), self.engine.connect() as conn:
            return self._retirement_on(conn, wanted)

    @staticmethod
    def _retirement_on(conn: Connection, wanted: Sequence[str]) -> Retirement | None:
        rows = {row["address"]: row for row in conn.execute(_BY_ADDRESS, {"p_addresses": wanted}).mappings()}
        for address in wanted:
            if address in rows:
                return _retirement(rows[address])
        return None

    @staticmethod
    def _retirement_by_id(conn: Connection, retirement_id: int) -> Retirement | None:
        row = conn.execute(_BY_ID, {"p_id": retirement_id}).mappings().first()
        return None if row is None else _retirement(row)  # None: deleted since its id was read

    def list_retirements(self) -> list[Retirement]:
        with self._guard("listing retired addresses"), self.engine.connect() as conn:
            query = select(retired_addresses).order_by(retired_addresses.c.address)
            return [_retirement(row) for row in conn.execute(query).mappings()]

    def put_retirement(
        self,
        address: str,
        now: dt.datetime,
        *,
        change: Change | None = None,
        **changes: Unpack[RetirementChanges],
    ) -> bool:
        """Create or update the retirement of ``address``; False (nothing saved) when it has a vacation."""
        r = retired_addresses.c
        with self._begin("saving the retired address") as conn:
            vacation = conn.execute(select(vacations.c.id).where(vacations.c.address == address)).first()
            if vacation is not None:
                return False
            existing = conn.execute(select(r.id).where(r.address == address)).scalar_one_or_none()
            if existing is None:
                conn.execute(
                    insert(retired_addresses).values(
                        address=address, created_at=now, updated_at=now, **changes
                    )
                )
            else:
                conn.execute(
                    update(retired_addresses).where(r.id == existing).values(updated_at=now, **changes)
                )
            if change is not None:
                write_change(conn, change)
            return True

    def delete_retirement(self, address: str, change: Change | None = None) -> bool:
        r = retired_addresses.c
        with self._begin("deleting the retired address") as conn:
            retired_id = conn.execute(select(r.id).where(r.address == address)).scalar_one_or_none()
            if retired_id is None:
                return False
            # Explicit delete: foreign keys may be off on an old SQLite file opened elsewhere.
            conn.execute(delete(bounce_claims).where(bounce_claims.c.retired_id == retired_id))
            conn.execute(delete(retired_addresses).where(r.id == retired_id))
            if change is not None:
                write_change(conn, change)
            return True


def _retirement(row: RowMapping) -> Retirement:
    return Retirement(**{column.name: row[column.name] for column in retired_addresses.c})
