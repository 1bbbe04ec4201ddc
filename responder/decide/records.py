"""The records the engine decides on: vacations, retired addresses (RFC 3463 status, one-line SMTP text)."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass
from typing import TypedDict

from responder.mail.message import clean_text

DEFAULT_STATUS = "5.1.6"
# RFC 3463 section 3: class 5 (permanent); subject 0-7 are the defined ones; detail 1*3digit.
_STATUS = re.compile(r"^5\.([0-7])\.(0|[1-9][0-9]{0,2})$")
# Postfix answers "554 5.1.6 <address>: Recipient address rejected: TEXT"; with a 256-octet
# address and the 512-octet reply line limit of RFC 5321 section 4.5.3.1.5 that leaves about 210.
MAX_SMTP_TEXT = 200
DEFAULT_TEXT = "This address no longer receives mail"

# The two audiences of a vacation's messages: senders of the site's own verified domains, and everyone.
INTERNAL = "internal"
EXTERNAL = "external"
AUDIENCES = (INTERNAL, EXTERNAL)
# Who gets the external message: everyone outside (all) or nobody (none, reason external-audience).
EXTERNAL_AUDIENCES = ("all", "none")


@dataclass(frozen=True)
class Translation:
    """A vacation's subject and message for one audience in one language other than its default."""

    audience: str
    language: str
    subject: str | None
    message: str | None
    html_message: str | None


@dataclass(frozen=True)
class Vacation:
    id: int
    address: str
    enabled: bool
    message: str
    subject: str | None
    from_header: str | None
    template: str | None
    starts_at: dt.datetime | None
    ends_at: dt.datetime | None
    timezone: str
    interval_seconds: int | None
    aliases: tuple[str, ...]
    created_at: dt.datetime
    updated_at: dt.datetime
    # The internal (or only) message in HTML, next to or instead of ``message``.
    html_message: str | None = None
    # The message for senders outside reply.internal_domains; all None: they get the internal one.
    external_subject: str | None = None
    external_message: str | None = None
    external_html_message: str | None = None
    external_audience: str = "all"
    # The language of the fields above (a BCP 47 tag), None when not said.
    default_language: str | None = None
    translations: tuple[Translation, ...] = ()

    def has_external(self) -> bool:
        """True when an external message is set, in the default language or any other."""
        return bool(self.external_message or self.external_html_message) or any(
            t.audience == EXTERNAL for t in self.translations
        )

    def state(self, now: dt.datetime) -> str:
        """``off``, ``scheduled`` before the start, ``ended`` from the end on, ``active`` in between."""
        if not self.enabled:
            return "off"
        if self.starts_at is not None and now < self.starts_at:
            return "scheduled"
        if self.ends_at is not None and now >= self.ends_at:
            return "ended"
        return "active"

    def own_addresses(self) -> frozenset[str]:
        return frozenset((self.address, *self.aliases))


@dataclass(frozen=True)
class DecisionRecord:
    """One row of the audit: what was decided about one recipient of one message, and why."""

    at: dt.datetime
    queue_id: str
    message_id: str
    sender: str
    recipient: str
    action: str
    reason: str | None
    detail: str


class ScheduleChanges(TypedDict, total=False):
    """The schedule columns that vacations and retired addresses share."""

    starts_at: dt.datetime | None
    ends_at: dt.datetime | None
    timezone: str


class VacationChanges(ScheduleChanges, total=False):
    """The columns a ``put_vacation`` sets; a column left out keeps its value (or its default)."""

    enabled: bool
    message: str
    subject: str | None
    from_header: str | None
    template: str | None
    interval_seconds: int | None
    html_message: str | None
    external_subject: str | None
    external_message: str | None
    external_html_message: str | None
    external_audience: str
    default_language: str | None


class RetirementChanges(ScheduleChanges, total=False):
    """The columns a ``put_retirement`` sets; a column left out keeps its value."""

    message: str
    status: str


@dataclass(frozen=True)
class Retirement:
    id: int
    address: str
    message: str
    status: str
    starts_at: dt.datetime | None
    ends_at: dt.datetime | None
    timezone: str
    created_at: dt.datetime
    updated_at: dt.datetime

    def state(self, now: dt.datetime) -> str:
        """``scheduled`` before the start, ``ended`` from the end on, ``active`` in between."""
        if self.starts_at is not None and now < self.starts_at:
            return "scheduled"
        if self.ends_at is not None and now >= self.ends_at:
            return "ended"
        return "active"

    def active(self, now: dt.datetime) -> bool:
        return self.state(now) == "active"

    @property
    def safe_status(self) -> str:
        """The status, or the default when the row holds something else (an edit by hand)."""
        return self.status if valid_status(self.status) else DEFAULT_STATUS

    def smtp_text(self) -> str:
        return smtp_text(self.message) or DEFAULT_TEXT

    def reject_text(self) -> str:
        """``5.x.y text``: what follows REJECT in a policy answer, and 550 in a Diagnostic-Code."""
        return f"{self.safe_status} {self.smtp_text()}"


def valid_status(text: str) -> bool:
    """True for a permanent RFC 3463 status code with a defined subject, such as 5.1.6."""
    return _STATUS.match(text) is not None


# Punctuation that NFKD leaves alone but has a plain ASCII look-alike.
_PUNCTUATION = (
    {ord(c): "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"}
    | {ord(c): "'" for c in "\u2018\u2019\u201a\u201b\u2032"}
    | {ord(c): '"' for c in "\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb"}
)


def _ascii(char: str) -> str:
    if " " <= char <= "~":
        return char
    if ord(char) in _PUNCTUATION:
        return _PUNCTUATION[ord(char)]
    # "é" -> "e", "ﬁ" -> "fi"; what has no ASCII form becomes "?".
    folded = "".join(c for c in unicodedata.normalize("NFKD", char) if " " <= c <= "~")
    return folded or "?"


def smtp_text(message: str, limit: int = MAX_SMTP_TEXT) -> str:
    """``message`` as one line of printable ASCII for an SMTP reply or a Diagnostic-Code.

    Line breaks, tabs and control characters become single spaces (a CR or LF would end the reply
    or inject another), other characters are folded to ASCII, and the text is cut at a word boundary.
    """
    flat = " ".join(clean_text(message).split())
    text = " ".join("".join(_ascii(c) for c in flat).split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + "..."
