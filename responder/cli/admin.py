"""Administrator commands: database migrations, vacations, and the decision audit."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from responder.config.settings import Settings
from responder.config.values import format_duration, parse_duration
from responder.mail.message import normalize_address

if TYPE_CHECKING:
    from collections.abc import Sequence

    from responder.store.database import DecisionRecord, Store, Vacation

EX_OK = 0
EX_FAILURE = 1


class AdminError(Exception):
    """A command that cannot be carried out as given; the message says why."""


def add_admin_commands(commands: Any) -> None:
    db = commands.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True, metavar="COMMAND"
    )
    db.add_parser("upgrade", help="migrate the database to the current schema")
    db.add_parser("current", help="print the schema revision of the database")

    vacation = commands.add_parser("vacation", help="manage vacations").add_subparsers(
        dest="vacation_command", required=True, metavar="COMMAND"
    )
    put = vacation.add_parser("set", help="create or update a vacation and switch it on")
    put.add_argument("address")
    text = put.add_mutually_exclusive_group()
    text.add_argument("--message", help="reply text (the template's {{ message }})")
    text.add_argument("--message-file", help="file holding the reply text (UTF-8)")
    put.add_argument("--subject", help="reply subject (default: 'Auto: ' + the original subject)")
    put.add_argument(
        "--from", dest="from_header", help='reply From, e.g. "Alice Example <alice@example.com>"'
    )
    add_schedule_arguments(put)
    put.add_argument("--interval", help="at most one reply per sender per interval, e.g. 7d, 12h")
    put.add_argument("--alias", action="append", help="another address of the same person (repeatable)")
    put.add_argument("--template", help="template file name in the templates directory")
    for name, summary in (("show", "show one vacation"), ("list", "list all vacations")):
        sub = vacation.add_parser(name, help=summary)
        if name == "show":
            sub.add_argument("address")
        sub.add_argument("--json", action="store_true")
    vacation.add_parser("off", help="switch a vacation off (kept for later)").add_argument("address")
    vacation.add_parser("delete", help="delete a vacation and its reply history").add_argument("address")

    from responder.cli.admin_bounce import add_bounce_commands

    add_bounce_commands(commands)

    audit = commands.add_parser("log", help="the decision audit trail, newest first")
    audit.add_argument("--json", action="store_true")
    audit.add_argument("--sender")
    audit.add_argument("--recipient")
    audit.add_argument("--limit", type=_count, default=50, help="at most this many rows (default 50)")

    # Commands kept in their own modules set `admin_handler(args, store, settings)` on their parsers.
    from responder.cli.admin_limits import add_limit_commands

    add_limit_commands(commands)


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"expected a number of rows, 0 or more: {text!r}")
    return count


def print_table(headings: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> None:
    """``rows`` under ``headings``, each column as wide as its widest cell; ``empty`` when there are none.

    Cells are printed with control characters escaped: audit rows written before they were escaped
    there may still hold what a sender sent.
    """
    from responder.hook.log import printable

    if not rows:
        print(empty)
        return
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(heading), *(len(row[i]) for row in rows)) for i, heading in enumerate(headings)]
    for line in (headings, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def run_admin(args: argparse.Namespace, settings: Settings) -> int:
    from responder.store.database import Store

    store = Store.open(settings.database.url, settings.database.busy_timeout)
    try:
        if args.command == "db":
            return _db(args, store)
        if args.command == "log":
            store.check_schema()
            return _log(args, store)
        if hasattr(args, "admin_handler"):
            store.check_schema()
            return int(args.admin_handler(args, store, settings))
        store.check_schema()
        if args.command == "bounce":
            from responder.cli.admin_bounce import run_bounce

            return run_bounce(args, store, settings)
        return _vacation(args, store, settings)
    except AdminError as exc:
        print(f"responder: {exc}", file=sys.stderr)
        return EX_FAILURE
    finally:
        store.close()


def _db(args: argparse.Namespace, store: Store) -> int:
    from responder.store.schema import SCHEMA_REVISION

    before = store.current_revision() if store.exists() else None
    if args.db_command == "upgrade":
        store.upgrade()
        after = store.current_revision()
        if after == before:
            print(f"database schema {after} is current: nothing to do")
        else:
            print(f"database schema upgraded from {before or 'empty'} to {after}")
        return EX_OK
    if before == SCHEMA_REVISION:
        print(f"{before} (current)")
    else:
        print(f"{before or 'none'} (this responder needs {SCHEMA_REVISION}: run `responder db upgrade`)")
    return EX_OK


def _address(text: str) -> str:
    address = normalize_address(text)
    if address is None:
        raise AdminError(f"not an email address: {text!r}")
    return address


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise AdminError(f"unknown time zone: {name!r} (use an IANA name such as Europe/Berlin)") from None


def parse_when(text: str, zone: ZoneInfo) -> dt.datetime | None:
    """An ISO 8601 date or date-time; without an offset it is wall time in ``zone``."""
    if text == "":
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise AdminError(f"not an ISO 8601 date or time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone)
    return when.astimezone(dt.UTC)


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """--start, --end and --timezone, read back by ``schedule_options``."""
    parser.add_argument("--start", help="ISO 8601 start; without offset read in --timezone; '' clears")
    parser.add_argument(
        "--end", help="ISO 8601 end (exclusive); without offset read in --timezone; '' clears"
    )
    parser.add_argument("--timezone", help="IANA time zone of --start/--end (default UTC)")


def message_option(args: argparse.Namespace, new: bool, what: str) -> str | None:
    """The text of --message or --message-file; None when neither is given for an existing entry."""
    if args.message is not None:
        return str(args.message)
    if args.message_file is not None:
        try:
            return Path(args.message_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AdminError(f"cannot read {args.message_file}: {exc}") from None
    if new:
        raise AdminError(f"a new {what} needs --message or --message-file")
    return None


class _Scheduled(Protocol):
    """A vacation or a retirement: both have a schedule in a time zone."""

    @property
    def timezone(self) -> str: ...

    @property
    def starts_at(self) -> dt.datetime | None: ...

    @property
    def ends_at(self) -> dt.datetime | None: ...


def schedule_options(args: argparse.Namespace, existing: _Scheduled | None) -> dict[str, Any]:
    """timezone, starts_at and ends_at from --timezone, --start and --end; the end after the start."""
    zone_name = args.timezone or (existing.timezone if existing else "UTC")
    zone = _zone(zone_name)
    fields: dict[str, Any] = {"timezone": zone_name}
    if args.start is not None:
        fields["starts_at"] = parse_when(args.start, zone)
    if args.end is not None:
        fields["ends_at"] = parse_when(args.end, zone)
    start = fields.get("starts_at", existing.starts_at if existing else None)
    end = fields.get("ends_at", existing.ends_at if existing else None)
    if start is not None and end is not None and end <= start:
        raise AdminError("--end must be after --start")
    return fields


def _from_header(text: str) -> str:
    from email.errors import ObsoleteHeaderDefect
    from email.headerregistry import Address
    from email.message import EmailMessage
    from email.policy import SMTP

    probe = EmailMessage(policy=SMTP)
    try:
        probe["From"] = text
        header: Any = probe["From"]
        addresses = header.addresses
    except (ValueError, IndexError):
        addresses = ()
    # RFC 5322's obsolete phrase syntax (an unquoted period, as in "Alice M. Example") is how people
    # write names, and Pigeonhole and mail readers take it; it is stored in today's syntax, quoted.
    defects = [d for d in getattr(header, "defects", ()) if not isinstance(d, ObsoleteHeaderDefect)]
    if len(addresses) != 1 or not addresses[0].domain or defects:
        raise AdminError(f'--from needs one address, e.g. "Alice Example <alice@example.com>": {text!r}')
    return str(Address(display_name=addresses[0].display_name, addr_spec=addresses[0].addr_spec))


def _vacation_fields(
    args: argparse.Namespace, existing: Vacation | None, settings: Settings
) -> dict[str, Any]:
    fields: dict[str, Any] = {"enabled": True}
    message = message_option(args, existing is None, "vacation")
    if message is not None:
        fields["message"] = message
    fields.update(schedule_options(args, existing))
    if args.interval is not None:
        try:
            seconds = parse_duration(args.interval)
        except ValueError as exc:
            raise AdminError(str(exc)) from None
        reply = settings.reply
        if not reply.min_interval <= seconds <= reply.max_interval:
            low, high = format_duration(reply.min_interval), format_duration(reply.max_interval)
            print(
                f"responder: note: interval is kept between {low} and {high} (reply.min_interval, "
                "reply.max_interval)",
                file=sys.stderr,
            )
        fields["interval_seconds"] = int(seconds)
    if args.subject is not None:
        fields["subject"] = args.subject or None
    if args.from_header is not None:
        fields["from_header"] = _from_header(args.from_header) if args.from_header else None
    if args.template is not None:
        fields["template"] = args.template or None
    return fields


def _check_template(settings: Settings, vacation: Vacation) -> None:
    """Render once with sample values, so that a broken template is refused now, not at delivery."""
    from responder.decide.templates import Renderer, RenderError

    zone = ZoneInfo(vacation.timezone)
    now = dt.datetime.now(zone)
    try:
        Renderer(settings.reply.templates_dir).render(
            vacation.template or settings.reply.default_template,
            {
                "message": vacation.message,
                "recipient": vacation.address,
                "sender": "sender@example.org",
                "subject": "Sample subject",
                "start": vacation.starts_at.astimezone(zone) if vacation.starts_at else now,
                "end": vacation.ends_at.astimezone(zone) if vacation.ends_at else now,
                "timezone": vacation.timezone,
                "interval": "7d",
            },
        )
    except RenderError as exc:
        raise AdminError(str(exc)) from None


def _prospective(
    address: str, existing: Vacation | None, fields: dict[str, Any], now: dt.datetime
) -> Vacation:
    """The vacation as it will be once ``fields`` are saved, to check it before saving."""
    from responder.store.database import Vacation

    if existing is not None:
        return dataclasses.replace(existing, **fields)
    base: dict[str, Any] = {
        "subject": None,
        "from_header": None,
        "template": None,
        "starts_at": None,
        "ends_at": None,
        "interval_seconds": None,
    }
    return Vacation(id=0, address=address, aliases=(), created_at=now, updated_at=now, **{**base, **fields})


def _when(value: dt.datetime | None, zone: str) -> str | None:
    return None if value is None else value.astimezone(ZoneInfo(zone)).isoformat(timespec="minutes")


def _interval(vacation: Vacation, settings: Settings) -> tuple[str, str | None]:
    """The interval that applies (as the engine keeps it between its bounds), and the one set, if any."""
    reply = settings.reply
    wanted = reply.default_interval if vacation.interval_seconds is None else vacation.interval_seconds
    applies = format_duration(min(max(wanted, reply.min_interval), reply.max_interval))
    return applies, None if vacation.interval_seconds is None else format_duration(vacation.interval_seconds)


def _shown_interval(vacation: Vacation, settings: Settings) -> str:
    applies, stored = _interval(vacation, settings)
    if stored is None:
        return f"{applies} (reply.default_interval)"
    if stored != applies:
        return f"{applies} (set to {stored}; kept between reply.min_interval and reply.max_interval)"
    return applies


def _as_json(vacation: Vacation, now: dt.datetime, settings: Settings) -> dict[str, Any]:
    applies, stored = _interval(vacation, settings)
    return {
        "address": vacation.address,
        "status": vacation.state(now),
        "enabled": vacation.enabled,
        "start": _when(vacation.starts_at, vacation.timezone),
        "end": _when(vacation.ends_at, vacation.timezone),
        "timezone": vacation.timezone,
        "interval": applies,
        "interval_set": stored,
        "subject": vacation.subject,
        "from": vacation.from_header,
        "template": vacation.template,
        "aliases": list(vacation.aliases),
        "message": vacation.message,
        "updated": vacation.updated_at.isoformat(timespec="seconds"),
    }


def _find(store: Store, address: str) -> Vacation:
    vacation = store.vacation_for([address])
    if vacation is None or vacation.address != address:
        raise AdminError(f"no vacation for {address}")
    return vacation


def _vacation(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    now = dt.datetime.now(dt.UTC)
    command = args.vacation_command
    if command == "list":
        items = store.list_vacations()
        if args.json:
            print(json.dumps([_as_json(v, now, settings) for v in items], indent=2, ensure_ascii=False))
            return EX_OK
        rows = [
            [
                v.address,
                v.state(now),
                _when(v.starts_at, v.timezone) or "-",
                _when(v.ends_at, v.timezone) or "-",
                v.timezone,
                _interval(v, settings)[0],
            ]
            for v in items
        ]
        print_table(["ADDRESS", "STATUS", "START", "END", "TIMEZONE", "INTERVAL"], rows, "no vacations")
        return EX_OK
    address = _address(args.address)
    if command == "set":
        if store.retirement_for([address]) is not None:
            raise AdminError(
                f"{address} is retired; an address is either on vacation or retired: "
                f"run `responder bounce delete {address}` first"
            )
        existing = store.vacation_for([address])
        existing = existing if existing and existing.address == address else None
        fields = _vacation_fields(args, existing, settings)
        aliases = None if args.alias is None else [_address(a) for a in args.alias]
        _check_template(settings, _prospective(address, existing, fields, now))
        store.put_vacation(address, now, aliases, **fields)
        print(f"{address}: {_find(store, address).state(now)}")
        return EX_OK
    if command == "show":
        vacation = _find(store, address)
        if args.json:
            print(json.dumps(_as_json(vacation, now, settings), indent=2, ensure_ascii=False))
            return EX_OK
        for key, value in _as_json(vacation, now, settings).items():
            if key in ("message", "interval_set"):
                continue
            shown = ", ".join(value) if isinstance(value, list) else value
            if key == "interval":
                shown = _shown_interval(vacation, settings)
            print(f"{key + ':':10} {'-' if shown in (None, '') else shown}")
        print("message:")
        for line in vacation.message.splitlines():
            print(f"  {line}")
        return EX_OK
    if command == "off":
        if not store.set_enabled(address, False, now):
            raise AdminError(f"no vacation for {address}")
        print(f"{address}: off")
        return EX_OK
    if not store.delete_vacation(address):
        raise AdminError(f"no vacation for {address}")
    print(f"{address}: deleted")
    return EX_OK


def _record_json(record: DecisionRecord) -> dict[str, Any]:
    return {**record.__dict__, "at": record.at.isoformat(timespec="seconds")}


def _log(args: argparse.Namespace, store: Store) -> int:
    sender = _address(args.sender) if args.sender else None
    recipient = _address(args.recipient) if args.recipient else None
    records = store.decisions(sender=sender, recipient=recipient, limit=args.limit) if args.limit else []
    if args.json:
        print(json.dumps([_record_json(r) for r in records], indent=2, ensure_ascii=False))
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
