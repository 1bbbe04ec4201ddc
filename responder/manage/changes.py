"""Recording a change: each field's value before and after, under the actor and the channel it came by."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from responder.store.database import Change, Store


def difference(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{field: [old, new]}`` for each field that differs; a missing side is null."""
    before, after = before or {}, after or {}
    return {
        key: [before.get(key), after.get(key)]
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }


def record(
    store: Store,
    now: dt.datetime,
    actor: str,
    via: str,
    address: str,
    action: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
) -> None:
    store.record_change(now, actor, via, address, action, difference(before, after))


def entry(
    now: dt.datetime,
    actor: str,
    via: str,
    address: str,
    action: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
) -> Change:
    """The change-log row of a change, to be written in the change's own transaction."""
    return Change(now, actor, via, address, action, difference(before, after))
