"""``responder bounce set/show/list/delete``: retired addresses, whose mail is bounced."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
from typing import TYPE_CHECKING, Any

from responder.cli.admin.common import (
    EX_OK,
    AdminError,
    add_schedule_arguments,
    message_option,
    parse_address,
    print_json,
    print_record,
    print_table,
    schedule_options,
    wall_time,
)
from responder.config.settings import Settings
from responder.decide.records import DEFAULT_STATUS, Retirement, RetirementChanges, valid_status

if TYPE_CHECKING:
    from responder.store.database import Store


def register(commands: Any) -> None:
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
    put.set_defaults(handler=_set)
    show = bounce.add_parser("show", help="show one retired address")
    show.add_argument("address")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_show)
    listing = bounce.add_parser("list", help="list all retired addresses")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)
    delete = bounce.add_parser("delete", help="un-retire an address and forget its bounce history")
    delete.add_argument("address")
    delete.set_defaults(handler=_delete)


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
        "start": wall_time(retirement.starts_at, retirement.timezone),
        "end": wall_time(retirement.ends_at, retirement.timezone),
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


def _list(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    now = dt.datetime.now(dt.UTC)
    items = store.list_retirements()
    if args.json:
        print_json([_as_json(r, now) for r in items])
        return EX_OK
    rows = [
        [
            r.address,
            r.state(now),
            r.status,
            wall_time(r.starts_at, r.timezone) or "-",
            wall_time(r.ends_at, r.timezone) or "-",
            r.timezone,
        ]
        for r in items
    ]
    print_table(["ADDRESS", "STATE", "STATUS", "START", "END", "TIMEZONE"], rows, "no retired addresses")
    return EX_OK


def _set(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    now = dt.datetime.now(dt.UTC)
    address = parse_address(args.address)
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


def _show(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    retirement = _find(store, parse_address(args.address))
    shown = _as_json(retirement, dt.datetime.now(dt.UTC))
    if args.json:
        print_json(shown)
        return EX_OK
    del shown["message"]
    print_record(shown, retirement.message)
    return EX_OK


def _delete(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    address = parse_address(args.address)
    if not store.delete_retirement(address):
        raise AdminError(f"{address} is not retired")
    print(f"{address}: deleted")
    return EX_OK
