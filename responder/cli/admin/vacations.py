"""``responder vacation set/show/list/off/delete``: vacations, their schedules and their replies."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
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
from responder.cli.admin.vacation_content import (
    ContentChanges,
    check_content,
    content_options,
    register_content,
)
from responder.config.settings import Settings
from responder.config.values import format_duration, parse_duration
from responder.decide.records import Vacation, VacationChanges
from responder.manage.vacations import applied_interval, blank, vacation_json

if TYPE_CHECKING:
    from responder.store.database import Store


def register(commands: Any) -> None:
    vacation = commands.add_parser("vacation", help="manage vacations").add_subparsers(
        dest="vacation_command", required=True, metavar="COMMAND"
    )
    put = vacation.add_parser("set", help="create or update a vacation and switch it on")
    put.add_argument("address")
    text = put.add_mutually_exclusive_group()
    text.add_argument("--message", help="reply text (the template's {{ message }})")
    text.add_argument("--message-file", help="file holding the reply text (UTF-8)")
    put.add_argument("--subject", help="reply subject (default: 'Auto: ' + the original subject)")
    register_content(put)
    put.add_argument(
        "--from", dest="from_header", help='reply From, e.g. "Alice Example <alice@example.com>"'
    )
    add_schedule_arguments(put)
    put.add_argument("--interval", help="at most one reply per sender per interval, e.g. 7d, 12h")
    put.add_argument("--alias", action="append", help="another address of the same person (repeatable)")
    put.add_argument("--template", help="template file name in the templates directory")
    put.set_defaults(handler=_set)
    show = vacation.add_parser("show", help="show one vacation")
    show.add_argument("address")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_show)
    listing = vacation.add_parser("list", help="list all vacations")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)
    off = vacation.add_parser("off", help="switch a vacation off (kept for later)")
    off.add_argument("address")
    off.set_defaults(handler=_off)
    delete = vacation.add_parser("delete", help="delete a vacation and its reply history")
    delete.add_argument("address")
    delete.set_defaults(handler=_delete)


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
) -> tuple[VacationChanges, ContentChanges]:
    fields: VacationChanges = {"enabled": True}
    message = message_option(args, False, "vacation")
    content = content_options(args, existing, message, fields)
    schedule_options(args, existing, fields)
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
    if args.from_header is not None:
        fields["from_header"] = _from_header(args.from_header) if args.from_header else None
    if args.template is not None:
        fields["template"] = args.template or None
    return fields, content


def _check_template(settings: Settings, vacation: Vacation) -> None:
    """Render every message (each audience and language, text and HTML) with sample values, so that
    a broken template is refused now, not at delivery."""
    from responder.decide.content import all_contents
    from responder.decide.templates import (
        SAMPLE_SENDER,
        SAMPLE_SUBJECT,
        Renderer,
        RenderError,
        html_template_for,
        reply_variables,
        template_names,
    )

    interval = dt.timedelta(seconds=applied_interval(vacation, settings))
    renderer = Renderer(settings.reply.templates_dir)
    reply = settings.reply
    for audience, content in all_contents(vacation):
        language = content.language.language
        variables = reply_variables(vacation, SAMPLE_SENDER, SAMPLE_SUBJECT, interval, content, audience)
        names = [template_names(vacation.template or reply.default_template, language)]
        if variables["html_message"]:
            names.append(
                template_names(html_template_for(vacation.template, reply.default_html_template), language)
            )
        try:
            for choices in names:
                renderer.render(choices, variables)
        except RenderError as exc:
            raise AdminError(str(exc)) from None


def _prospective(
    address: str, existing: Vacation | None, fields: VacationChanges, now: dt.datetime
) -> Vacation:
    """The vacation as it will be once ``fields`` are saved, to check it before saving."""
    return dataclasses.replace(existing or blank(address, now), **fields)


def _interval(vacation: Vacation, settings: Settings) -> tuple[str, str | None]:
    """The interval that applies (as the engine keeps it between its bounds), and the one set, if any."""
    applies = format_duration(applied_interval(vacation, settings))
    return applies, None if vacation.interval_seconds is None else format_duration(vacation.interval_seconds)


def _shown_interval(vacation: Vacation, settings: Settings) -> str:
    applies, stored = _interval(vacation, settings)
    if stored is None:
        return f"{applies} (reply.default_interval)"
    if stored != applies:
        return f"{applies} (set to {stored}; kept between reply.min_interval and reply.max_interval)"
    return applies


def _find(store: Store, address: str) -> Vacation:
    vacation = store.vacation_for([address])
    if vacation is None or vacation.address != address:
        raise AdminError(f"no vacation for {address}")
    return vacation


def _list(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    now = dt.datetime.now(dt.UTC)
    items = store.list_vacations()
    if args.json:
        print_json([vacation_json(v, now, settings) for v in items])
        return EX_OK
    rows = [
        [
            v.address,
            v.state(now),
            wall_time(v.starts_at, v.timezone) or "-",
            wall_time(v.ends_at, v.timezone) or "-",
            v.timezone,
            _interval(v, settings)[0],
        ]
        for v in items
    ]
    print_table(["ADDRESS", "STATUS", "START", "END", "TIMEZONE", "INTERVAL"], rows, "no vacations")
    return EX_OK


def _set(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    now = dt.datetime.now(dt.UTC)
    address = parse_address(args.address)
    if store.retirement_for([address]) is not None:
        raise AdminError(
            f"{address} is retired; an address is either on vacation or retired: "
            f"run `responder bounce delete {address}` first"
        )
    existing = store.vacation_for([address])
    existing = existing if existing and existing.address == address else None
    fields, content = _vacation_fields(args, existing, settings)
    aliases = None if args.alias is None else [parse_address(a) for a in args.alias]
    prospective = content.apply(_prospective(address, existing, fields, now))
    check_content(prospective)
    _check_template(settings, prospective)
    store.put_vacation(address, now, aliases, content.translations, content.drop_languages, **fields)
    print(f"{address}: {_find(store, address).state(now)}")
    return EX_OK


def _show(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    now = dt.datetime.now(dt.UTC)
    vacation = _find(store, parse_address(args.address))
    shown = vacation_json(vacation, now, settings)
    if args.json:
        print_json(shown)
        return EX_OK
    del shown["message"], shown["interval_set"]
    for key in ("html_message", "external_message", "external_html_message", "translations"):
        del shown[key]
    shown["html"] = f"{len(vacation.html_message)} characters" if vacation.html_message else None
    shown["external"] = "yes" if vacation.has_external() else None
    shown["languages"] = sorted({f"{t.language} ({t.audience})" for t in vacation.translations})
    shown["interval"] = _shown_interval(vacation, settings)
    print_record(shown, vacation.message)
    return EX_OK


def _off(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    address = parse_address(args.address)
    if not store.set_enabled(address, False, dt.datetime.now(dt.UTC)):
        raise AdminError(f"no vacation for {address}")
    print(f"{address}: off")
    return EX_OK


def _delete(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    address = parse_address(args.address)
    if not store.delete_vacation(address):
        raise AdminError(f"no vacation for {address}")
    print(f"{address}: deleted")
    return EX_OK
