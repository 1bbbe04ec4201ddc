"""``responder log``: the decision audit trail, or with ``--changes`` the web service's change log."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from responder.cli.admin.common import EX_OK, parse_address, print_json, print_table, row_count
from responder.config.settings import Settings

if TYPE_CHECKING:
    from responder.store.database import DecisionRecord, Store


def register(commands: Any) -> None:
    audit = commands.add_parser("log", help="the decision audit trail, newest first")
    audit.add_argument("--json", action="store_true")
    audit.add_argument("--sender")
    audit.add_argument("--recipient")
    audit.add_argument("--limit", type=row_count, default=50, help="at most this many rows (default 50)")
    audit.add_argument(
        "--changes", action="store_true", help="changes made through the web service and API instead"
    )
    audit.add_argument("--address", help="with --changes: the changes of this address only")
    audit.set_defaults(handler=_log)


def _record_json(record: DecisionRecord) -> dict[str, Any]:
    return {**record.__dict__, "at": record.at.isoformat(timespec="seconds")}


def _changes(args: argparse.Namespace, store: Store) -> int:
    import json

    address = parse_address(args.address) if args.address else None
    found = store.list_changes(address=address, limit=args.limit) if args.limit else []
    if args.json:
        print_json([{**change.__dict__, "at": change.at.isoformat(timespec="seconds")} for change in found])
        return EX_OK
    rows = [
        [
            c.at.strftime("%Y-%m-%d %H:%M:%S"),
            c.actor,
            c.via,
            c.address,
            c.action,
            json.dumps(c.detail, ensure_ascii=False, sort_keys=True),
        ]
        for c in found
    ]
    empty = "no changes recorded" + (f" for {address}" if address else "")
    print_table(
        ["TIME (UTC)", "WHO", "VIA", "ADDRESS", "ACTION", "WHAT CHANGED (before, after)"], rows, empty
    )
    return EX_OK


def _log(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    if args.changes:
        return _changes(args, store)
    sender = parse_address(args.sender) if args.sender else None
    recipient = parse_address(args.recipient) if args.recipient else None
    records = store.decisions(sender=sender, recipient=recipient, limit=args.limit) if args.limit else []
    if args.json:
        print_json([_record_json(r) for r in records])
        return EX_OK
    if not args.limit:
        return EX_OK  # asked for no rows
    rows = [
        [
            r.at.strftime("%Y-%m-%d %H:%M:%S"),
            r.action,
            r.reason or "-",
            r.sender or "<>",
            r.recipient,
            r.queue_id or "-",
            r.detail,
        ]
        for r in records
    ]
    empty = "no decisions recorded" + (" for the addresses given" if sender or recipient else "")
    print_table(["TIME (UTC)", "ACTION", "REASON", "SENDER", "RECIPIENT", "QUEUE ID", "DETAIL"], rows, empty)
    return EX_OK
