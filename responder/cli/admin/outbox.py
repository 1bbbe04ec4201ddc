"""``responder outbox show/retry/purge``: the responses the service owes, has sent, or gave up on."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import TYPE_CHECKING, Any

from responder.cli.admin.common import EX_FAILURE, EX_OK, print_json, print_table, row_count
from responder.config.settings import Settings

if TYPE_CHECKING:
    from responder.store.database import Store
    from responder.store.outbox import OutboxRow


def _duration(text: str) -> float:
    from responder.config.values import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _row_id(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not an outbox id: {text!r}")
    return int(text)


def register(commands: Any) -> None:
    outbox = commands.add_parser(
        "outbox", help="responses the service owes, sent or gave up on"
    ).add_subparsers(dest="outbox_command", required=True, metavar="COMMAND")
    show = outbox.add_parser("show", help="the outbox, newest first, and how many are owed")
    show.add_argument("--json", action="store_true")
    show.add_argument("--state", action="append", choices=["pending", "sending", "sent", "failed", "gave-up"])
    show.add_argument("--limit", type=row_count, default=50, help="at most this many rows (default 50)")
    show.set_defaults(handler=_show)
    retry = outbox.add_parser("retry", help="send owed responses now (ID: also a failed or given-up one)")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", type=_row_id)
    which.add_argument("--all", action="store_true", help="every pending response")
    retry.set_defaults(handler=_retry)
    purge = outbox.add_parser("purge", help="delete finished responses (sent, failed, given up)")
    what = purge.add_mutually_exclusive_group(required=True)
    what.add_argument("id", nargs="?", type=_row_id)
    what.add_argument(
        "--sent-before", type=_duration, metavar="DURATION", help="finished longer ago than this"
    )
    purge.set_defaults(handler=_purge)


def _json(row: OutboxRow) -> dict[str, Any]:
    def when(value: dt.datetime | None) -> str | None:
        return None if value is None else value.isoformat(timespec="seconds")

    return {
        "id": row.id,
        "state": row.state,
        "action": row.action,
        "created_at": when(row.created_at),
        "next_attempt_at": when(row.next_attempt_at),
        "expires_at": when(row.expires_at),
        "sent_at": when(row.sent_at),
        "attempts": row.attempts,
        "mail_from": row.mail_from,
        "rcpt_to": row.rcpt_to,
        "queue_id": row.queue_id,
        "sender": row.sender,
        "recipient": row.recipient,
        "size": len(row.message),
        "last_error": row.last_error,
    }


def _show(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    from responder.decide.context import utcnow
    from responder.store.outbox import STATES

    states = tuple(args.state or STATES)
    rows = store.outbox_rows(states, args.limit) if args.limit else []
    depth, oldest = store.outbox_stats(utcnow())
    if args.json:
        print_json({"owed": depth, "oldest_age_seconds": round(oldest, 3), "rows": [_json(r) for r in rows]})
        return EX_OK
    print(f"{depth} responses owed" + (f", the oldest {oldest:.0f}s old" if depth else ""))
    table = [
        [
            str(r.id),
            r.state,
            r.action,
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            str(r.attempts),
            r.rcpt_to or "<>",
            r.recipient,
            r.last_error or "-",
        ]
        for r in rows
    ]
    print_table(
        ["ID", "STATE", "ACTION", "QUEUED (UTC)", "TRIES", "TO", "FOR", "LAST ERROR"],
        table,
        "the outbox is empty",
    )
    return EX_OK


def _retry(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    from responder.decide.context import utcnow

    count = store.outbox_retry(utcnow(), settings.outbox.max_age, None if args.all else args.id)
    if args.id is not None and not count:
        print(f"no response {args.id} to retry (unknown, sent, or being sent)")
        return EX_FAILURE
    print(f"{count} responses due now")
    return EX_OK


def _purge(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    from responder.decide.context import utcnow

    before = None if args.sent_before is None else utcnow() - dt.timedelta(seconds=args.sent_before)
    count = store.outbox_purge(sent_before=before, row_id=args.id)
    if args.id is not None and not count:
        print(f"no finished response {args.id} (unknown, or still owed)")
        return EX_FAILURE
    print(f"{count} finished responses deleted")
    return EX_OK
