"""The pages' forms read into the store's change sets, each bad value a FieldError naming its field."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from responder.decide.records import (
    DEFAULT_STATUS,
    Retirement,
    RetirementChanges,
    Vacation,
    VacationChanges,
    valid_status,
)
from responder.mail.message import normalize_address
from responder.manage.vacations import blank
from responder.web.schedule import FieldError, parse_local, zone

# Far beyond a reply anyone reads; the request itself is capped before it is parsed (MAX_FORM_BYTES).
MAX_MESSAGE = 64 * 1024
MAX_SUBJECT = 256
MAX_FORM_BYTES = 512 * 1024
MAX_TEMPLATE = 64 * 1024


def text(form: Mapping[str, object], name: str, default: str = "") -> str:
    value = form.get(name, default)
    if not isinstance(value, str):
        raise FieldError(name, "expected text, not a file")
    return value


def address_field(value: str, field: str = "address") -> str:
    address = normalize_address(value.strip())
    if address is None:
        raise FieldError(field, f"not a mail address: {value!r}")
    return address


def one_line(value: str, field: str, limit: int) -> str:
    """A header's text: one line without control characters (a CR or LF would start another header)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise FieldError(field, "must be one line, without line breaks or control characters")
    if len(value) > limit:
        raise FieldError(field, f"is {len(value)} characters long; at most {limit}")
    return value.strip()


def body_text(value: str, field: str, limit: int) -> str:
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    if "\x00" in value:
        raise FieldError(field, "contains a NUL character")
    if len(value) > limit:
        raise FieldError(field, f"is {len(value)} characters long; at most {limit}")
    return value


@dataclass(frozen=True)
class Schedule:
    timezone: str
    starts_at: dt.datetime | None
    ends_at: dt.datetime | None


def schedule(form: Mapping[str, object]) -> Schedule:
    name = text(form, "timezone", "UTC").strip() or "UTC"
    tz = zone(name)
    start = parse_local(text(form, "start"), tz, "start")
    end = parse_local(text(form, "end"), tz, "end")
    if start is not None and end is not None and end <= start:
        raise FieldError("end", "the end must be after the start")
    return Schedule(name, start, end)


def vacation_changes(form: Mapping[str, object]) -> VacationChanges:
    """What the out-of-office form sets: on/off, schedule, subject (empty: "Auto: " + theirs), message."""
    when = schedule(form)
    message = body_text(text(form, "message"), "message", MAX_MESSAGE)
    if not message.strip():
        raise FieldError("message", "write the text of the reply")
    subject = one_line(text(form, "subject"), "subject", MAX_SUBJECT)
    return {
        "enabled": text(form, "enabled") in ("on", "1", "true"),
        "timezone": when.timezone,
        "starts_at": when.starts_at,
        "ends_at": when.ends_at,
        "subject": subject or None,
        "message": message,
    }


def prospective_vacation(
    address: str, existing: Vacation | None, changes: VacationChanges, now: dt.datetime
) -> Vacation:
    """The vacation as it will be once ``changes`` are saved: what the preview shows."""
    return dataclasses.replace(existing or blank(address, now), **changes)


def retirement_changes(form: Mapping[str, object]) -> RetirementChanges:
    when = schedule(form)
    message = body_text(text(form, "message"), "message", MAX_MESSAGE)
    if not message.strip():
        raise FieldError("message", "say where to write instead")
    status = text(form, "status", DEFAULT_STATUS).strip() or DEFAULT_STATUS
    if not valid_status(status):
        raise FieldError("status", f"not a permanent RFC 3463 status: {status!r} (e.g. 5.1.6)")
    return {
        "timezone": when.timezone,
        "starts_at": when.starts_at,
        "ends_at": when.ends_at,
        "message": message,
        "status": status,
    }


def blank_retirement(address: str, now: dt.datetime) -> Retirement:
    return Retirement(
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
