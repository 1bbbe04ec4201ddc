"""Vacations set, switched off and deleted through the web service: one set of checks, every change logged."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any
from zoneinfo import ZoneInfo

from responder.config.settings import Settings
from responder.config.values import format_duration
from responder.decide.records import Vacation, VacationChanges
from responder.manage import fields
from responder.manage.changes import entry
from responder.manage.errors import Conflict, InvalidField, NotFound
from responder.store.database import Store

# What `vacation show --json` prints, and what a PUT may send back: these are read, never written.
# The messages in other languages are shown, and set with `vacation set --language`.
READ_ONLY = {"address", "status", "interval_set", "updated", "translations"}
WRITABLE = {
    "enabled",
    "start",
    "end",
    "timezone",
    "interval",
    "subject",
    "from",
    "template",
    "aliases",
    "message",
    "html_message",
    "external_subject",
    "external_message",
    "external_html_message",
    "external_audience",
    "default_language",
}


def wall_time(value: dt.datetime | None, zone: str) -> str | None:
    return None if value is None else value.astimezone(ZoneInfo(zone)).isoformat(timespec="minutes")


def applied_interval(vacation: Vacation, settings: Settings) -> int:
    """The interval in seconds the engine keeps between reply.min_interval and reply.max_interval."""
    reply = settings.reply
    wanted = reply.default_interval if vacation.interval_seconds is None else vacation.interval_seconds
    return int(min(max(wanted, reply.min_interval), reply.max_interval))


def vacation_json(vacation: Vacation, now: dt.datetime, settings: Settings) -> dict[str, Any]:
    """The same fields as `responder vacation show --json`."""
    return {
        "address": vacation.address,
        "status": vacation.state(now),
        "enabled": vacation.enabled,
        "start": wall_time(vacation.starts_at, vacation.timezone),
        "end": wall_time(vacation.ends_at, vacation.timezone),
        "timezone": vacation.timezone,
        "interval": format_duration(applied_interval(vacation, settings)),
        "interval_set": None
        if vacation.interval_seconds is None
        else format_duration(vacation.interval_seconds),
        "subject": vacation.subject,
        "from": vacation.from_header,
        "template": vacation.template,
        "aliases": list(vacation.aliases),
        "message": vacation.message,
        **content_json(vacation),
        "updated": vacation.updated_at.isoformat(timespec="seconds"),
    }


def content_json(vacation: Vacation) -> dict[str, Any]:
    """The content fields of ``vacation show --json``: HTML, the external message, languages."""
    return {
        "html_message": vacation.html_message,
        "external_subject": vacation.external_subject,
        "external_message": vacation.external_message,
        "external_html_message": vacation.external_html_message,
        "external_audience": vacation.external_audience,
        "default_language": vacation.default_language,
        "translations": [
            {
                "audience": t.audience,
                "language": t.language,
                "subject": t.subject,
                "message": t.message,
                "html_message": t.html_message,
            }
            for t in vacation.translations
        ],
    }


def _logged(vacation: Vacation | None, settings: Settings, now: dt.datetime) -> dict[str, Any] | None:
    if vacation is None:
        return None
    shown = vacation_json(vacation, now, settings)
    for key in ("status", "updated", "interval"):
        del shown[key]
    return shown


def find(store: Store, address: str) -> Vacation | None:
    found = store.vacation_for([address])
    return found if found is not None and found.address == address else None


def blank(address: str, now: dt.datetime) -> Vacation:
    return Vacation(
        id=0,
        address=address,
        enabled=True,
        message="",
        subject=None,
        from_header=None,
        template=None,
        starts_at=None,
        ends_at=None,
        timezone="UTC",
        interval_seconds=None,
        aliases=(),
        created_at=now,
        updated_at=now,
    )


def from_header(value: object) -> str | None:
    from email.errors import ObsoleteHeaderDefect
    from email.headerregistry import Address
    from email.message import EmailMessage
    from email.policy import SMTP

    if value is None or value == "":
        return None
    line = fields.one_line("from", value)
    probe = EmailMessage(policy=SMTP)
    header: Any = None
    try:
        probe["From"] = line
        header = probe["From"]
        addresses = header.addresses
    except (ValueError, IndexError):
        addresses = ()
    defects = [d for d in getattr(header, "defects", ()) if not isinstance(d, ObsoleteHeaderDefect)]
    if len(addresses) != 1 or not addresses[0].domain or defects:
        raise InvalidField("from", 'from: needs one address, e.g. "Alice Example <alice@example.com>"')
    return str(Address(display_name=addresses[0].display_name, addr_spec=addresses[0].addr_spec))


def check_template(settings: Settings, vacation: Vacation) -> None:
    """Render once with sample values, so that a broken template is refused now, not at delivery."""
    from responder.decide.templates import (
        SAMPLE_SENDER,
        SAMPLE_SUBJECT,
        Renderer,
        RenderError,
        reply_variables,
    )

    interval = dt.timedelta(seconds=applied_interval(vacation, settings))
    try:
        Renderer(settings.reply.templates_dir).render(
            vacation.template or settings.reply.default_template,
            reply_variables(vacation, SAMPLE_SENDER, SAMPLE_SUBJECT, interval),
        )
    except RenderError as exc:
        field = "template" if vacation.template else "message"
        raise InvalidField(field, f"{field}: the reply does not render: {exc}") from None


def _template_name(value: object) -> str | None:
    if value is None or value == "":
        return None
    return fields.template_name("template", value)


def changes_from(
    body: Mapping[str, Any], existing: Vacation | None, allowed: Callable[[str], bool]
) -> tuple[VacationChanges, list[str] | None]:
    """The columns to save for a PUT body (fields left out keep their value) and the new aliases."""
    fields.only_known(dict(body), WRITABLE, READ_ONLY)
    changes: VacationChanges = {"enabled": fields.boolean("enabled", body.get("enabled", True))}
    if "message" in body:
        changes["message"] = _content_text("message", body["message"])
    elif existing is None and not body.get("html_message"):
        raise InvalidField("message", "message: a new vacation needs a message")
    zone_name = fields.zone("timezone", body["timezone"]) if "timezone" in body else None
    zone_name = zone_name or (existing.timezone if existing else "UTC")
    changes["timezone"] = zone_name
    if "start" in body:
        changes["starts_at"] = fields.when("start", body["start"], zone_name)
    if "end" in body:
        changes["ends_at"] = fields.when("end", body["end"], zone_name)
    start = changes.get("starts_at", existing.starts_at if existing else None)
    end = changes.get("ends_at", existing.ends_at if existing else None)
    fields.check_order(start, end)
    if "interval" in body:
        changes["interval_seconds"] = fields.duration("interval", body["interval"])
    if "subject" in body:
        subject = body["subject"]
        changes["subject"] = None if subject in (None, "") else _content_line("subject", subject)
    _content_changes(body, changes)
    if "from" in body:
        changes["from_header"] = from_header(body["from"])
    if "template" in body:
        changes["template"] = _template_name(body["template"])
    aliases = None
    if "aliases" in body:
        aliases = [fields.address("aliases", a) for a in fields.string_list("aliases", body["aliases"])]
        for alias in aliases:
            if not allowed(alias):
                raise InvalidField("aliases", f"aliases: {alias} is not an address you may manage")
    return changes, aliases


def set_vacation(
    store: Store,
    settings: Settings,
    actor: str,
    via: str,
    address: str,
    body: Mapping[str, Any],
    now: dt.datetime,
    allowed: Callable[[str], bool] = lambda _address: True,
) -> Vacation:
    """Create or update the vacation of ``address`` from a PUT body; InvalidField, nothing written, if bad."""
    if store.retirement_for([address]) is not None:
        raise Conflict(f"{address} is retired; an address is either on vacation or retired", "address")
    existing = find(store, address)
    changes, aliases = changes_from(body, existing, allowed)
    prospective = dataclasses.replace(existing or blank(address, now), **changes)
    if aliases is not None:
        prospective = dataclasses.replace(prospective, aliases=tuple(dict.fromkeys(aliases)))
    check_template(settings, prospective)
    logged = entry(
        now,
        actor,
        via,
        address,
        "vacation.set",
        _logged(existing, settings, now),
        _logged(prospective, settings, now),
    )
    store.put_vacation(address, now, aliases, change=logged, **changes)
    saved = find(store, address)
    assert saved is not None
    return saved


def switch_off(
    store: Store, settings: Settings, actor: str, via: str, address: str, now: dt.datetime
) -> Vacation:
    existing = find(store, address)
    if existing is None:
        raise NotFound(f"no vacation for {address}", "address")
    before = _logged(existing, settings, now)
    after = _logged(dataclasses.replace(existing, enabled=False), settings, now)
    if not store.set_enabled(
        address, False, now, entry(now, actor, via, address, "vacation.off", before, after)
    ):
        raise NotFound(f"no vacation for {address}", "address")
    saved = find(store, address)
    assert saved is not None
    return saved


def delete(store: Store, settings: Settings, actor: str, via: str, address: str, now: dt.datetime) -> None:
    existing = find(store, address)
    logged = entry(now, actor, via, address, "vacation.delete", _logged(existing, settings, now), None)
    if existing is None or not store.delete_vacation(address, logged):
        raise NotFound(f"no vacation for {address}", "address")


def _content_changes(body: Mapping[str, Any], changes: VacationChanges) -> None:
    """The HTML, external and language fields of a PUT body, checked as `vacation set` checks them."""
    from responder.decide.records import EXTERNAL_AUDIENCES

    if "html_message" in body:
        changes["html_message"] = _html("html_message", body["html_message"])
    if "external_html_message" in body:
        changes["external_html_message"] = _html("external_html_message", body["external_html_message"])
    if body.get("external_message") not in (None, ""):
        changes["external_message"] = _content_text("external_message", body["external_message"])
    elif "external_message" in body:
        changes["external_message"] = None
    if body.get("external_subject") not in (None, ""):
        changes["external_subject"] = _content_line("external_subject", body["external_subject"])
    elif "external_subject" in body:
        changes["external_subject"] = None
    if "external_audience" in body:
        audience = body["external_audience"]
        if audience not in EXTERNAL_AUDIENCES:
            raise InvalidField("external_audience", "external_audience: all or none")
        changes["external_audience"] = audience
    if "default_language" in body:
        value = body["default_language"]
        changes["default_language"] = None if value in (None, "") else _language("default_language", value)


def _placeholders(field: str, value: str) -> str:
    from responder.decide.content import PLACEHOLDERS, unknown_placeholders

    unknown = unknown_placeholders(value)
    if unknown:
        known = ", ".join(PLACEHOLDERS)
        raise InvalidField(field, f"{field}: unknown placeholder {{{{ {unknown[0]} }}}} (known: {known})")
    return value


def _content_text(field: str, value: object) -> str:
    return _placeholders(field, fields.text(field, value))


def _content_line(field: str, value: object) -> str:
    return _placeholders(field, fields.one_line(field, value))


def _html(field: str, value: object) -> str | None:
    """The sanitised HTML to store (None clears it); refused when nothing is left of it."""
    from responder.mail.html import HtmlError, checked_html

    if value is None or value == "":
        return None
    text = _content_text(field, value)
    try:
        clean, _removed = checked_html(text)
    except HtmlError as exc:
        raise InvalidField(field, f"{field}: {exc}") from None
    if not clean.strip():
        raise InvalidField(field, f"{field}: nothing is left once sanitised")
    return clean


def _language(field: str, value: object) -> str:
    from responder.mail.languages import language_tag

    if not isinstance(value, str):
        raise InvalidField(field, f"{field}: expected a language tag such as de or pt-BR")
    try:
        return language_tag(value)
    except ValueError as exc:
        raise InvalidField(field, f"{field}: {exc}") from None
