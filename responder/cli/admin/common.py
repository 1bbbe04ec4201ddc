"""What the admin commands share: AdminError, address, zone and time parsing, option readers, output."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from responder.config.settings import Settings
from responder.decide.records import ScheduleChanges
from responder.errors import ExitCode
from responder.mail.message import normalize_address

if TYPE_CHECKING:
    from responder.store.database import Store

# The admin commands' statuses, named where the package names every exit status.
EX_OK = ExitCode.EX_OK
EX_FAILURE = ExitCode.EX_FAILURE

# What every admin subcommand sets with ``set_defaults(handler=...)``.
Handler = Callable[[argparse.Namespace, "Store", Settings], int]


class AdminError(Exception):
    """A command that cannot be carried out as given; the message says why."""


def run_admin(args: argparse.Namespace, settings: Settings) -> int:
    """Open the store and run the subcommand's handler; an AdminError is a one-line message and status 1."""
    from responder.store.database import Store

    store = Store.open(settings.database.url, settings.database.busy_timeout)
    try:
        if args.command != "db":  # the db commands are the ones that work on another schema
            store.check_schema()
        handler: Handler = args.handler
        return handler(args, store, settings)
    except AdminError as exc:
        print(f"responder: {exc}", file=sys.stderr)
        return EX_FAILURE
    finally:
        store.close()


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def print_record(fields: Mapping[str, object], message: str) -> None:
    """``show`` output: one aligned ``key: value`` line per field, then the message indented."""
    for key, value in fields.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key + ':':10} {'-' if shown in (None, '') else shown}")
    print("message:")
    for line in message.splitlines():
        print(f"  {line}")


def row_count(text: str) -> int:
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
    from responder.logsetup import printable

    if not rows:
        print(empty)
        return
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(heading), *(len(row[i]) for row in rows)) for i, heading in enumerate(headings)]
    for line in (headings, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def parse_address(text: str) -> str:
    address = normalize_address(text)
    if address is None:
        raise AdminError(f"not an email address: {text!r}")
    return address


def time_zone(name: str) -> ZoneInfo:
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


def schedule_options(args: argparse.Namespace, existing: _Scheduled | None, fields: ScheduleChanges) -> None:
    """Set timezone, starts_at and ends_at in ``fields`` from --timezone, --start and --end."""
    zone_name = args.timezone or (existing.timezone if existing else "UTC")
    tz = time_zone(zone_name)
    fields["timezone"] = zone_name
    if args.start is not None:
        fields["starts_at"] = parse_when(args.start, tz)
    if args.end is not None:
        fields["ends_at"] = parse_when(args.end, tz)
    start = fields.get("starts_at", existing.starts_at if existing else None)
    end = fields.get("ends_at", existing.ends_at if existing else None)
    if start is not None and end is not None and end <= start:
        raise AdminError("--end must be after --start")


def wall_time(value: dt.datetime | None, zone: str) -> str | None:
    return None if value is None else value.astimezone(ZoneInfo(zone)).isoformat(timespec="minutes")
