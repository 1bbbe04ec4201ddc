"""Which vacation and which retired address a recipient has: one statement for both, every message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BindParameter,
    CompoundSelect,
    Select,
    Table,
    bindparam,
    literal_column,
    select,
    union_all,
)
from sqlalchemy.engine import Connection

from responder.store.driver import Prepared
from responder.store.schema import retired_addresses, vacations

_VACATION = "v"
_RETIRED = "r"


def _lookup(count: int) -> CompoundSelect[Any]:
    """The ids of the vacations and retirements of ``count`` addresses (bound as p_a0, p_a1, ...)."""
    # Plain parameters, not an expanding IN: expanding one costs about as much as running the query.
    params: list[BindParameter[Any]] = [bindparam(f"p_a{number}") for number in range(count)]

    def side(kind: str, table: Table) -> Select[Any]:
        where = table.c.address == params[0] if count == 1 else table.c.address.in_(params)
        return select(literal_column(f"'{kind}'").label("kind"), table.c.id, table.c.address).where(where)

    return union_all(side(_VACATION, vacations), side(_RETIRED, retired_addresses))


# Built once: a message names its recipient and, when it differs, the original recipient.
_LOOKUPS = {count: Prepared(_lookup(count)) for count in (1, 2)}


def record_ids(conn: Connection, wanted: Sequence[str]) -> tuple[int | None, int | None]:
    """The id of the vacation and of the retirement of the first of ``wanted`` that has one."""
    statement = _LOOKUPS.get(len(wanted)) or Prepared(_lookup(len(wanted)))
    rows = statement.rows(conn, {f"p_a{number}": address for number, address in enumerate(wanted)})
    found = {(kind, address): row_id for kind, row_id, address in rows}

    def first(kind: str) -> int | None:
        return next((found[(kind, a)] for a in wanted if (kind, a) in found), None)

    return first(_VACATION), first(_RETIRED)
