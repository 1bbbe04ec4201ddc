"""Housekeeping and rate-limit commands: ``responder purge``, ``responder limits show|reset``."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import TYPE_CHECKING, Any

from responder.cli.admin.common import EX_OK, AdminError, parse_address, print_json, print_table
from responder.config.settings import Settings
from responder.config.values import Limit, format_duration, parse_duration
from responder.decide.limits import GLOBAL_KEY, SCOPES
from responder.mail.addresses import sender_domain, sender_key

if TYPE_CHECKING:
    from responder.store.database import RateCounter, Store


def register(commands: Any) -> None:
    purge = commands.add_parser(
        "purge",
        help="delete expired reply claims, closed rate-limit windows and audit rows past the retention",
    )
    purge.add_argument(
        "--older-than",
        metavar="DURATION",
        help="delete audit rows older than this, e.g. 30d (default: store.audit_retention)",
    )
    purge.set_defaults(handler=_purge)

    limits = commands.add_parser("limits", help="rate-limit counters").add_subparsers(
        dest="limits_command", required=True, metavar="COMMAND"
    )
    show = limits.add_parser("show", help="the counters of the current windows")
    show.add_argument("--sender", help="one sender: its own, its domain's and the global counter")
    show.add_argument("--recipient", help="one vacation address: its counter and the global one")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_show)

    reset = limits.add_parser("reset", help="delete counters so that their limits start again at 0")
    reset.add_argument("--sender", help="the counter of this sender (normalized as for counting)")
    reset.add_argument("--sender-domain", help="the counter of this sender domain")
    reset.add_argument("--recipient", help="the counter of this vacation address")
    reset.add_argument("--global", dest="global_", action="store_true", help="the global counter")
    reset.add_argument("--all", action="store_true", help="every counter")
    reset.set_defaults(handler=_reset)


def _purge(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    retention = settings.store.audit_retention
    if args.older_than is not None:
        try:
            retention = parse_duration(args.older_than)
        except ValueError as exc:
            raise AdminError(f"--older-than: {exc}") from None
    now = dt.datetime.now(dt.UTC)
    # No interval is longer than reply.max_interval, so an older claim can no longer hold back a reply.
    claims_before = now - dt.timedelta(seconds=settings.reply.max_interval)
    done = store.purge(now, claims_before, now - dt.timedelta(seconds=retention))
    print(
        f"purged {done.claims} reply claims older than {format_duration(settings.reply.max_interval)}, "
        f"{done.counters} closed rate-limit windows, "
        f"{done.audit} audit rows older than {format_duration(retention)}"
    )
    return EX_OK


def _limits_by_scope(settings: Settings) -> dict[str, Limit | None]:
    return {scope.name: scope.limit(settings.limits) for scope in SCOPES}


def _show(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    selectors: list[tuple[str, str | None]] = []
    if args.sender:
        key = sender_key(parse_address(args.sender))
        selectors += [("sender", key), ("sender-domain", sender_domain(key))]
    if args.recipient:
        selectors.append(("recipient", parse_address(args.recipient)))
    if selectors:
        selectors.append(("global", GLOBAL_KEY))
    now = dt.datetime.now(dt.UTC)
    counters = store.counters(now, selectors)
    limits = _limits_by_scope(settings)
    if args.json:
        print_json([_counter_json(c, limits[c.scope]) for c in counters])
        return EX_OK
    rows = []
    for c in counters:
        limit = limits[c.scope]
        rows.append(
            [
                c.scope,
                c.counter_key,
                f"{c.count}/{limit.count}" if limit else f"{c.count}/off",
                f"{c.window_start:%Y-%m-%d %H:%M:%S} - {c.window_end:%Y-%m-%d %H:%M:%S}",
                "reached" if limit and c.count >= limit.count else "",
            ]
        )
    wanted = ", ".join(f"{scope} {key}" for scope, key in selectors) or "any key"
    empty = f"no responses counted in the open windows for {wanted}"
    print_table(["SCOPE", "KEY", "COUNT/LIMIT", "WINDOW (UTC)", "REACHED"], rows, empty)
    return EX_OK


def _counter_json(counter: RateCounter, limit: Limit | None) -> dict[str, Any]:
    return {
        "scope": counter.scope,
        "key": counter.counter_key,
        "count": counter.count,
        "limit": str(limit) if limit else "off",
        "window_start": counter.window_start.isoformat(),
        "window_end": counter.window_end.isoformat(),
        "tripped": counter.tripped,
    }


def _reset(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    selectors: list[tuple[str, str | None]] = []
    if args.sender:
        selectors.append(("sender", sender_key(parse_address(args.sender))))
    if args.sender_domain:
        domain = parse_address(f"x@{args.sender_domain}").rpartition("@")[2]
        selectors.append(("sender-domain", domain))
    if args.recipient:
        selectors.append(("recipient", parse_address(args.recipient)))
    if args.global_:
        selectors.append(("global", GLOBAL_KEY))
    if args.all:
        selectors = []
    elif not selectors:
        raise AdminError("say what to reset: --sender, --sender-domain, --recipient, --global or --all")
    removed = store.reset_counters(selectors)
    print(f"reset {removed} rate-limit counters")
    return EX_OK
