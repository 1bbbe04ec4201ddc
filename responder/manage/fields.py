"""Field parsers shared by the API, JMAP and the pages; each raises InvalidField naming the field."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from responder.config.values import parse_duration
from responder.mail.message import normalize_address
from responder.manage.errors import InvalidField

# RFC 5322 section 2.1.1: a header line is at most 998 characters.
MAX_SUBJECT = 900
MAX_MESSAGE = 64 * 1024


def address(field: str, value: object) -> str:
    if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
        raise InvalidField(field, f"{field}: not an email address")
    found = normalize_address(value.strip())
    if found is None:
        raise InvalidField(field, f"{field}: not an email address: {value!r}")
    return found


def text(field: str, value: object, limit: int = MAX_MESSAGE) -> str:
    if not isinstance(value, str):
        raise InvalidField(field, f"{field}: expected a string")
    if "\0" in value:
        raise InvalidField(field, f"{field}: contains a NUL character")
    if len(value) > limit:
        raise InvalidField(field, f"{field}: longer than {limit} characters")
    return value


def one_line(field: str, value: object, limit: int = MAX_SUBJECT) -> str:
    """A header value: no CR, LF or other control character (they would break the header)."""
    line = text(field, value, limit)
    if any(ord(c) < 32 or ord(c) == 127 for c in line):
        raise InvalidField(field, f"{field}: contains a line break or a control character")
    return line


def boolean(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidField(field, f"{field}: expected true or false")
    return value


def zone(field: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise InvalidField(field, f"{field}: expected an IANA time zone such as Europe/Berlin")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidField(field, f"{field}: unknown time zone {value!r} (use e.g. Europe/Berlin)") from None
    return value


def when(field: str, value: object, zone_name: str) -> dt.datetime | None:
    """An ISO 8601 date or date-time (wall time in ``zone_name`` without an offset); null or "" clears."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidField(field, f"{field}: expected an ISO 8601 date or time, or null")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidField(field, f"{field}: not an ISO 8601 date or time: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(zone_name))
    try:
        return parsed.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        raise InvalidField(field, f"{field}: out of range: {value!r}") from None


def duration(field: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidField(field, f"{field}: expected a duration such as 7d or 12h, or null")
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise InvalidField(field, f"{field}: {exc}") from None
    if seconds < 1 or seconds > 10 * 365 * 86400:
        raise InvalidField(field, f"{field}: out of range")
    return int(seconds)


def string_list(field: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidField(field, f"{field}: expected a list of strings")
    return list(value)


def check_order(start: dt.datetime | None, end: dt.datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise InvalidField("end", "end: must be after start (the end is exclusive)")


def only_known(body: dict[str, Any], known: set[str], ignored: set[str]) -> None:
    for key in body:
        if key not in known and key not in ignored:
            raise InvalidField(key, f"{key}: unknown field")


# A file name in the templates directory: no directories, no hidden files.
TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}\.j2$")


def template_name(field: str, value: object) -> str:
    if not isinstance(value, str) or not TEMPLATE_NAME.match(value) or ".." in value:
        raise InvalidField(
            field, f"{field}: a template is a file name such as vacation.txt.j2 (letters, digits, . _ -)"
        )
    return value
