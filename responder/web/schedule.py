"""Schedules in forms: browser date-times read as wall time in an IANA zone, and shown back in words."""

from __future__ import annotations

import datetime as dt
from functools import cache
from zoneinfo import ZoneInfo, available_timezones


class FieldError(Exception):
    """A form value that cannot be taken as given; ``field`` names the form field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@cache
def zone_names() -> tuple[str, ...]:
    """Every IANA zone this Python knows (tzdata), sorted, for the time-zone select."""
    return tuple(sorted(available_timezones() | {"UTC"}))


def zone(name: str, field: str = "timezone") -> ZoneInfo:
    if name not in zone_names():
        raise FieldError(field, f"unknown time zone {name!r}: pick an IANA name such as Europe/Berlin")
    return ZoneInfo(name)


def parse_local(text: str, tz: ZoneInfo, field: str) -> dt.datetime | None:
    """A browser ``datetime-local`` value (or a date alone, at midnight) as wall time in ``tz``; UTC out.

    An empty value is no bound. A wall time that a DST change skips or repeats is taken as the zone's
    rules say (``fold=0``): the earlier of two, or shifted past the gap.
    """
    text = text.strip()
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise FieldError(field, f"not a date and time: {text!r} (use YYYY-MM-DD HH:MM)") from None
    if when.tzinfo is not None:
        raise FieldError(field, "give the wall time without an offset; the time zone field says where")
    if not 2000 <= when.year <= 2200:
        raise FieldError(field, f"the year {when.year} is out of range")
    return when.replace(tzinfo=tz).astimezone(dt.UTC)


def local_input(value: dt.datetime | None, zone_name: str) -> str:
    """``value`` as the ``datetime-local`` input shows it: wall time in the vacation's zone, to the minute."""
    if value is None:
        return ""
    return value.astimezone(ZoneInfo(zone_name)).strftime("%Y-%m-%dT%H:%M")


def wall_time(value: dt.datetime, zone_name: str) -> str:
    """``2026-12-04 17:00``: an instant as wall time in a zone, for tables."""
    return value.astimezone(ZoneInfo(zone_name)).strftime("%Y-%m-%d %H:%M")


def spoken_time(value: dt.datetime, zone_name: str) -> str:
    """``Friday 4 December 2026, 17:00 (Europe/Berlin)``: an instant as a person in that zone reads it."""
    local = value.astimezone(ZoneInfo(zone_name))
    return f"{local:%A} {local.day} {local:%B %Y, %H:%M} ({zone_name})"


_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def spoken_duration(seconds: float) -> str:
    """``7 days``, ``1 day and 12 hours``: a duration in words, largest units first (days, not weeks)."""
    left = int(seconds)
    parts: list[str] = []
    for name, size in _UNITS:
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count} {name}{'' if count == 1 else 's'}")
    if not parts:
        return "0 seconds"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def interval_sentence(seconds: float) -> str:
    """The interval rule as a sentence: ``one reply per sender every 7 days``."""
    if seconds == 86400:
        return "one reply per sender every day"
    return f"one reply per sender every {spoken_duration(seconds)}"
