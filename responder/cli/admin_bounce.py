"""Administrator commands for retired addresses: ``responder bounce set/show/list/delete``."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from responder.cli.admin import (
    EX_OK,
    AdminError,
    _address,
    _when,
    add_schedule_arguments,
    message_option,
    print_table,
    schedule_options,
)
from responder.config.settings import Settings
from responder.decide.records import DEFAULT_STATUS, Retirement, RetirementChanges, valid_status

if TYPE_CHECKING:
    from responder.store.database import Store


def add_bounce_commands(commands: Any) -> None:
    bounce = commands.add_parser(
        "bounce", help="manage retired addresses (mail to them is bounced)"
    ).add_subparsers(dest="bounce_command", required=True, metavar="COMMAND")
    put = bounce.add_parser("set", help="retire an address, or change its retirement")
    put.add_argument("address")
    text = put.add_mutually_exclusive_group()
    text.add_argument("--message", help="why, and where to write instead (SMTP reply text and DSN text)")
    text.add_argument("--message-file", help="file holding the message (UTF-8)")
    put.add_argument("--status", help=f"RFC 3463 status 5.x.y (default {DEFAULT_STATUS}: mailbox has moved)")
    add_schedule_arguments(put)
    for name, summary in (("show", "show one retired address"), ("list", "list all retired addresses")):
        sub = bounce.add_parser(name, help=summary)
        if name == "show":
            sub.add_argument("address")
        sub.add_argument("--json", action="store_true")
    bounce.add_parser("delete", help="un-retire an address and forget its bounce history").add_argument(
        "address"
    )


def _message(args: argparse.Namespace, existing: Retirement | None) -> str | None:
    message = message_option(args, existing is None, "retired address")
    if message is None:
        return None
    if not message.strip():
        raise AdminError("the message is empty: say where to write instead")
    return message


def _fields(args: argparse.Namespace, existing: Retirement | None) -> RetirementChanges:
    fields: RetirementChanges = {}
    message = _message(args, existing)
    if message is not None:
        fields["message"] = message
    if args.status is not None:
        if not valid_status(args.status):
            raise AdminError(
                f"not a permanent RFC 3463 status: {args.status!r} (use 5.X.Y with X 0-7, e.g. 5.1.6 mailbox "
                "has moved, 5.1.1 unknown user, 5.2.1 mailbox disabled)"
            )
        fields["status"] = args.status
    elif existing is None:
        fields["status"] = DEFAULT_STATUS
    schedule_options(args, existing, fields)
    return fields


def _prospective(
    address: str, existing: Retirement | None, fields: RetirementChanges, now: dt.datetime
) -> Retirement:
    """The retirement as it will be once ``fields`` are saved, to check it before saving."""
    if existing is not None:
        return dataclasses.replace(existing, **fields)
    base = Retirement(
        id=0,
        address=address,
        message="",
        status=DEFAULT_STATUS,
        starts_at=None,
        ends_at=None,
        timezone="UTC",
        created_at=now,
        updated_at=now,
    )
    return dataclasses.replace(base, **fields)


def _check_template(settings: Settings, retirement: Retirement) -> None:
    """Render the bounce template once now, so that a broken one is refused here, not at delivery."""
    from responder.decide.templates import (
        SAMPLE_SENDER,
        SAMPLE_SUBJECT,
        Renderer,
        RenderError,
        bounce_variables,
    )

    domain = retirement.address.rpartition("@")[2]
    mta = settings.bounce.reporting_mta or settings.smtp.hostname or domain
    variables = bounce_variables(retirement, SAMPLE_SENDER, SAMPLE_SUBJECT, mta, dt.datetime.now(dt.UTC))
    try:
        Renderer(settings.reply.templates_dir).render(settings.bounce.template, variables)
    except RenderError as exc:
        raise AdminError(str(exc)) from None


def _as_json(retirement: Retirement, now: dt.datetime) -> dict[str, Any]:
    return {
        "address": retirement.address,
        "state": retirement.state(now),
        "status": retirement.status,
        "start": _when(retirement.starts_at, retirement.timezone),
        "end": _when(retirement.ends_at, retirement.timezone),
        "timezone": retirement.timezone,
        "smtp_text": retirement.smtp_text(),
        "message": retirement.message,
        "updated": retirement.updated_at.isoformat(timespec="seconds"),
    }


def _find(store: Store, address: str) -> Retirement:
    retirement = store.retirement_for([address])
    if retirement is None:
        raise AdminError(f"{address} is not retired")
    return retirement


def run_bounce(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    now = dt.datetime.now(dt.UTC)
    command = args.bounce_command
    if command == "list":
        items = store.list_retirements()
        if args.json:
            print(json.dumps([_as_json(r, now) for r in items], indent=2, ensure_ascii=False))
            return EX_OK
        rows = [
            [
                r.address,
                r.state(now),
                r.status,
                _when(r.starts_at, r.timezone) or "-",
                _when(r.ends_at, r.timezone) or "-",
                r.timezone,
            ]
            for r in items
        ]
        print_table(["ADDRESS", "STATE", "STATUS", "START", "END", "TIMEZONE"], rows, "no retired addresses")
        return EX_OK
    address = _address(args.address)
    if command == "set":
        existing = store.retirement_for([address])
        fields = _fields(args, existing)
        _check_template(settings, _prospective(address, existing, fields, now))
        if not store.put_retirement(address, now, **fields):
            raise AdminError(
                f"{address} has a vacation; an address is either on vacation or retired: "
                f"run `responder vacation delete {address}` first"
            )
        retirement = _find(store, address)
        print(f"{address}: retired, {retirement.state(now)} ({retirement.status})")
        return EX_OK
    if command == "show":
        shown = _as_json(_find(store, address), now)
        if args.json:
            print(json.dumps(shown, indent=2, ensure_ascii=False))
            return EX_OK
        for key, value in shown.items():
            if key != "message":
                print(f"{key + ':':10} {'-' if value in (None, '') else value}")
        print("message:")
        for line in str(shown["message"]).splitlines():
            print(f"  {line}")
        return EX_OK
    if not store.delete_retirement(address):
        raise AdminError(f"{address} is not retired")
    print(f"{address}: deleted")
    return EX_OK
