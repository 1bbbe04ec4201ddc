"""Rate limits over the store: fixed windows, counted atomically, given back when no response goes out.

Windows are fixed and aligned to the Unix epoch in UTC: a ``10/1d`` limit allows 10 responses from
00:00 to 24:00 UTC, a ``50/1h`` limit 50 per clock hour. Fixed windows need one row per key and window
and one conditional UPDATE per check, which every backend makes atomic; the price is that up to twice
the count can go out around a window boundary (the end of one window and the start of the next).

The counts taken for a response are a Claim in ``ctx.claims``: the engine keeps it when the response
went out and gives it back on every other path, so only responses actually sent are counted.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from responder.config.settings import LimitSettings
from responder.config.values import Limit
from responder.mail.addresses import sender_domain

if TYPE_CHECKING:
    from responder.decide.context import Context
    from responder.store.database import CounterWindow, Store

log = logging.getLogger("responder")

GLOBAL_KEY = "*"


@dataclass(frozen=True)
class Scope:
    setting: str  # the key in [limits]
    name: str  # the scope stored with the counter
    key: Callable[[Context], str]
    limit: Callable[[LimitSettings], Limit | None]


def _recipient(ctx: Context) -> str:
    # The vacation's address for a reply, the retired address for a bounce.
    return ctx.responder_address


# Most specific first: a flood from one sender stops at its own counter, never touching the shared
# global row that every process updates.
SCOPES: tuple[Scope, ...] = (
    Scope("per_sender", "sender", lambda ctx: ctx.sender_key, lambda s: s.per_sender),
    Scope(
        "per_sender_domain",
        "sender-domain",
        lambda ctx: sender_domain(ctx.sender_key),
        lambda s: s.per_sender_domain,
    ),
    Scope("per_recipient", "recipient", _recipient, lambda s: s.per_recipient),
    Scope("global", "global", lambda _ctx: GLOBAL_KEY, lambda s: s.global_),
)


def configured(settings: LimitSettings) -> list[tuple[Scope, Limit]]:
    """The limits that are not ``off``, in checking order."""
    return [(scope, limit) for scope in SCOPES if (limit := scope.limit(settings)) is not None]


def window(limit: Limit, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The fixed window of ``limit`` that holds ``now``: [start, end)."""
    epoch = int(now.timestamp())
    start = epoch - epoch % limit.window
    begin = dt.datetime.fromtimestamp(start, dt.UTC)
    return begin, begin + dt.timedelta(seconds=limit.window)


@dataclass(frozen=True)
class CounterClaim:
    """One response counted against every limit; given back when the response did not go out."""

    store: Store
    counters: tuple[CounterWindow, ...]

    def confirm(self) -> None:
        """The counts were taken when claiming; a response that went out keeps them."""

    def release(self) -> None:
        self.store.give_back_counts(self.counters)


@dataclass(frozen=True)
class _Check:
    scope: Scope
    limit: Limit
    counter: CounterWindow

    def reached(self) -> str:
        whom = "" if self.scope.name == "global" else f" for {self.counter.key}"
        until = self.counter.end.strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{self.scope.setting} {self.limit} reached{whom} until {until}"


def check_limits(ctx: Context) -> str | None:
    """Count this response against every limit; the detail of the first limit reached, else None.

    First one read of all counters: a message over any limit (the usual case during a flood) is
    refused without a write. Then all counts are taken in one transaction, all or none, so
    concurrent processes never send more than a limit even when all of them passed the read.
    A dry run (explain) stops after the read.
    """
    limits = configured(ctx.settings.limits)
    if not limits:
        return None
    from responder.store.database import CounterWindow

    store = ctx.services.store
    checks = [
        _Check(scope, limit, CounterWindow(scope.name, scope.key(ctx), *window(limit, ctx.now)))
        for scope, limit in limits
    ]
    counts = store.counts([check.counter for check in checks])
    for check, count in zip(checks, counts, strict=True):
        if count >= check.limit.count:
            return _reached(ctx, store, check)
    if ctx.dry_run:
        return None
    reached = store.take_counts([(check.counter, check.limit.count) for check in checks])
    if reached is not None:
        return _reached(ctx, store, checks[reached])
    ctx.claims.append(CounterClaim(store, tuple(check.counter for check in checks)))
    return None


def _reached(ctx: Context, store: Store, check: _Check) -> str:
    detail = check.reached()
    # The circuit breaker says so once per window, whichever process first finds it open.
    if check.scope.name == "global" and not ctx.dry_run and store.mark_tripped(check.counter):
        log.warning("circuit breaker: %s; no automatic responses are sent until then", detail)
    return detail
