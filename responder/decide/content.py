"""What a reply says: the vacation's subject, text and HTML for one audience in the sender's language.

The language is the RFC 4647 lookup (section 3.4) of the message's Accept-Language (RFC 3282), then
of its Content-Language, among the languages the vacation has a message in for that audience; then
the vacation's default language. Placeholders (``{{ end_long }}``) are filled in here, in the
subject, the text and the HTML alike; dates in the long form are in the reply's language (CLDR data
through babel).
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parseaddr
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from babel import Locale

from responder.decide.records import EXTERNAL, INTERNAL, Translation, Vacation
from responder.mail.languages import content_languages, lookup, priority_list
from responder.mail.message import Inbound, clean_text, decode_text

# {{ name }}: the placeholders a person may write in a subject, text or HTML message.
PLACEHOLDERS = {
    "name": "the person's display name (from the reply's From, else the address)",
    "start": "the start in the vacation's time zone, e.g. 2026-12-21 09:00 (empty when none)",
    "end": "the end in the vacation's time zone, e.g. 2027-01-04 09:00 (empty when none)",
    "start_date": "the start's date in the reply's language, e.g. Monday, December 21, 2026",
    "end_date": "the end's date in the reply's language, e.g. Montag, 4. Januar 2027",
    "start_long": "the start's date and time in the reply's language",
    "end_long": "the end's date and time in the reply's language",
    "timezone": "the vacation's time zone, e.g. Europe/Berlin",
    "subject": "the subject of the message being answered",
}
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# Text messages and subjects accepted at ``vacation set``.
MAX_MESSAGE = 64 * 1024
MAX_SUBJECT = 998


@dataclass(frozen=True)
class LanguageChoice:
    """The language of the reply (None: the default, untagged), the one it is written in, and why."""

    language: str | None
    why: str

    def note(self) -> str:
        return f"language={self.language or 'default'}({self.why})"


@dataclass(frozen=True)
class Content:
    """The chosen texts, placeholders not yet filled in: a subject, a text or HTML message, or both."""

    subject: str | None
    message: str
    html_message: str | None
    language: LanguageChoice


def unknown_placeholders(text: str) -> list[str]:
    """The ``{{ ... }}`` names in ``text`` that are no placeholder, for an error at ``vacation set``."""
    return sorted({name for name in _PLACEHOLDER.findall(text) if name not in PLACEHOLDERS})


def _slots(vacation: Vacation, audience: str) -> dict[str | None, Translation]:
    """The messages of ``audience`` by language; None is the default language's (when it has one)."""
    if audience == EXTERNAL:
        default = Translation(
            audience,
            "",
            vacation.external_subject,
            vacation.external_message,
            vacation.external_html_message,
        )
    else:
        default = Translation(audience, "", vacation.subject, vacation.message, vacation.html_message)
    slots: dict[str | None, Translation] = {}
    if default.message or default.html_message or audience != EXTERNAL:
        slots[None] = default
    for translation in vacation.translations:
        if translation.audience == audience and translation.language != vacation.default_language:
            slots[translation.language] = translation
    return slots


def choose_language(
    vacation: Vacation, audience: str, inbound: Inbound
) -> tuple[LanguageChoice, Translation]:
    """The best language of the vacation's messages for ``audience`` and the message in it."""
    slots = _slots(vacation, audience)
    tags = [tag for tag in slots if tag is not None]
    if None in slots and vacation.default_language:
        tags.append(vacation.default_language)
    for field, parse in (("Accept-Language", priority_list), ("Content-Language", content_languages)):
        value = " ".join(clean_text(decode_text(v)) for v in inbound.values(field))
        ranges = parse(value) if value else []
        found = lookup(ranges, tags) if tags else None
        if found is not None:
            tag, wanted = found
            slot = slots.get(tag, slots.get(None))
            assert slot is not None
            return LanguageChoice(tag, f"{field} {wanted}"), slot
    if None in slots:
        default = vacation.default_language
        return LanguageChoice(default, "default" if default else "no language set"), slots[None]
    # An external message in other languages only, none of them asked for: the first, not the internal one.
    first = sorted(tags)[0]
    return LanguageChoice(first, "no default external message"), slots[first]


def choose_content(vacation: Vacation, audience: str, inbound: Inbound) -> Content:
    """The subject, text and HTML of the reply; a translation without a subject takes the default's."""
    language, slot = choose_language(vacation, audience, inbound)
    default = _slots(vacation, audience).get(None)
    subject = slot.subject or (default.subject if default else None)
    return Content(subject, slot.message or "", slot.html_message, language)


def all_contents(vacation: Vacation) -> list[tuple[str, Content]]:
    """Every (audience, message) the vacation can send, for checking them all at ``vacation set``."""
    found: list[tuple[str, Content]] = []
    audiences = (INTERNAL, EXTERNAL) if vacation.has_external() else (INTERNAL,)
    for audience in audiences:
        slots = _slots(vacation, audience)
        default = slots.get(None)
        for tag, slot in slots.items():
            language = LanguageChoice(tag or vacation.default_language, "check")
            subject = slot.subject or (default.subject if default else None)
            found.append((audience, Content(subject, slot.message or "", slot.html_message, language)))
    return found


def _wall(when: dt.datetime | None, zone: ZoneInfo) -> str:
    return when.astimezone(zone).strftime("%Y-%m-%d %H:%M") if when else ""


def _locale(language: str | None) -> Locale:
    from babel import Locale

    try:
        return Locale.parse((language or "en").replace("-", "_"))
    except (ValueError, LookupError):
        try:
            return Locale.parse((language or "en").split("-", 1)[0])
        except (ValueError, LookupError):
            return Locale.parse("en")


def _long_forms(when: dt.datetime | None, zone: ZoneInfo, language: str | None) -> tuple[str, str]:
    """The date, and the date with the time, written out in ``language`` (CLDR full date, short time)."""
    if when is None:
        return "", ""
    from babel.dates import format_date, format_time

    locale = _locale(language)
    local = when.astimezone(zone)
    date = format_date(local.date(), "full", locale=locale)
    time = format_time(local.time(), "short", locale=locale)
    pattern = str(locale.datetime_formats.get("full", "{1} {0}"))
    # CLDR patterns quote literal words ("{1} 'at' {0}"); babel's own format_datetime drops the quotes.
    long = pattern.replace("'", "").replace("{0}", time).replace("{1}", date)
    # CLDR puts narrow no-break spaces before "AM"; plain text readers show a plain space best.
    return _spaces(date), _spaces(long)


def _spaces(text: str) -> str:
    return text.replace("\u202f", " ").replace("\u00a0", " ")


def display_name(vacation: Vacation) -> str:
    name, address = parseaddr(vacation.from_header or "")
    return clean_text(name) or address or vacation.address


def placeholder_values(vacation: Vacation, language: str | None, subject: str) -> dict[str, str]:
    zone = ZoneInfo(vacation.timezone)
    start_date, start_long = _long_forms(vacation.starts_at, zone, language)
    end_date, end_long = _long_forms(vacation.ends_at, zone, language)
    return {
        "name": display_name(vacation),
        "start": _wall(vacation.starts_at, zone),
        "end": _wall(vacation.ends_at, zone),
        "start_date": start_date,
        "end_date": end_date,
        "start_long": start_long,
        "end_long": end_long,
        "timezone": vacation.timezone,
        "subject": subject,
    }


def fill(text: str, values: Mapping[str, str], escape: Callable[[str], str] = str) -> str:
    """``text`` with every known placeholder replaced by its value through ``escape``; others kept."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return escape(values[name]) if name in values else match.group(0)

    return _PLACEHOLDER.sub(replace, text)


def fill_html(text: str, values: Mapping[str, str]) -> str:
    return fill(text, values, lambda value: html.escape(value, quote=True))
