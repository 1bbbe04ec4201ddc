"""Build the RFC 3834 / RFC 5230 reply message; every header goes through EmailMessage."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime, getaddresses, make_msgid
from typing import Any, ClassVar, TypeVar

# LOOP_HEADER lives in message (the hook reads it before composing anything); re-exported here.
from responder.mail.message import LOOP_HEADER as LOOP_HEADER  # noqa: PLC0414
from responder.mail.message import Inbound, canonical_address, clean_text, decode_text, normalize_address

SUBJECT_PREFIX = "Auto: "
DEFAULT_SUBJECT = "Automated reply"
MAX_SUBJECT = 256
MAX_REFERENCES = 20
MAX_DISPLAY_NAME = 128


# Fields whose values repeat from one reply to the next (the vacation's From and loop address, the
# constant markers, the MIME fields of a text body); parsing one costs about as much as the rest of
# the reply's composing, so each distinct value is parsed once.
_REPEATING = frozenset(
    {
        "from",
        "auto-submitted",
        "precedence",
        "x-auto-response-suppress",
        LOOP_HEADER.lower(),
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)
_MAX_KEPT = 4096
_K = TypeVar("_K")
_V = TypeVar("_V")


def _kept(cache: dict[_K, _V], key: _K, make: Callable[[], _V]) -> _V:
    """``cache[key]``, made on first use; a full cache starts over, so that odd values cannot fill it."""
    found = cache.get(key)
    if found is None:
        if len(cache) >= _MAX_KEPT:
            cache.clear()
        found = cache[key] = make()
    return found


class _RepeatingHeaders(HeaderRegistry):
    """policy.SMTP's header registry, keeping the parsed field of each repeating value.

    A parsed header is immutable (a str with its parse tree, which folding only reads), so one
    object can serve every reply and thread.
    """

    def __init__(self) -> None:
        super().__init__()
        self.kept: dict[tuple[str, str], BaseHeader] = {}
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        # The registry builds a new class on every look-up (twice per field set: its maximum count,
        # then its value), the dearest step of composing a header; each name's class is kept.
        return _kept(self._classes, name.lower(), lambda: super(_RepeatingHeaders, self).__getitem__(name))

    def __call__(self, name: str, value: object) -> BaseHeader:
        if not isinstance(value, str) or name.lower() not in _REPEATING:
            return super().__call__(name, value)
        return _kept(self.kept, (name, value), lambda: super(_RepeatingHeaders, self).__call__(name, value))


# Fields set to a new value for each reply. A value of printable ASCII words that fits on its line
# is one the email package folds to itself: it is kept as its source text (what the package does
# with a source value that needs no refolding), not parsed into a header object that would only
# be folded back. Reading such a field parses it then.
_PER_REPLY = frozenset({"to", "subject", "date", "message-id", "in-reply-to", "references"})
_plain = re.compile(r"[!-~]+(?: [!-~]+)*").fullmatch


class _FoldOnce(EmailPolicy):
    """policy.SMTP, folding each repeating field once: a fold is a function of the name and value."""

    _folded: ClassVar[dict[tuple[str, str], bytes]] = {}

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        text = str(value) if type(value) is Address else value
        if (
            type(text) is str
            and len(name) + 2 + len(text) <= (self.max_line_length or 0)
            and name.lower() in _PER_REPLY
            and _plain(text)
            and "=?" not in text
        ):
            return (name, text)
        return super().header_store_parse(name, value)

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() not in _REPEATING:
            return super().fold_binary(name, value)
        return _kept(
            self._folded, (name, str(value)), lambda: super(_FoldOnce, self).fold_binary(name, value)
        )


_POLICY = _FoldOnce(linesep="\r\n", header_factory=_RepeatingHeaders())


@dataclass(frozen=True)
class Outgoing:
    """A composed response: envelope and the bytes to send."""

    mail_from: str
    rcpt_to: str
    message: EmailMessage
    # The final bytes once signed (the DKIM-Signature fields, then the message as signed); a
    # signature covers these bytes, not whatever serialising ``message`` again would give.
    data: bytes = b""

    def as_bytes(self) -> bytes:
        return self.data or self.message.as_bytes(policy=_POLICY)


def cut_text(text: str, limit: int) -> str:
    """``text`` when it fits in ``limit`` characters, else its start with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def literal_text(text: str) -> str:
    """``text`` as an unstructured header value that EmailMessage keeps as it is.

    EmailMessage decodes encoded words in the values it is given, so text that only looks like
    one (an encoded word that failed to decode the first time) would be decoded a second time,
    into anything, lone surrogates included. Wrapped in one encoded word it is decoded once.
    """
    if "=?" not in text:
        return text
    import base64

    return "=?utf-8?b?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="


def reply_subject(configured: str | None, original: str) -> str:
    if configured:
        return cut_text(clean_text(configured), MAX_SUBJECT)
    if original:
        return cut_text(SUBJECT_PREFIX + original, MAX_SUBJECT)
    return DEFAULT_SUBJECT


def _display_name_for(inbound: Inbound, address: str) -> str:
    """The sender's own display name, when Sender/Resent-From/From names the envelope address."""
    for field in ("Sender", "Resent-From", "From"):
        for name, addr in getaddresses([decode_text(v) for v in inbound.values(field)]):
            if name and normalize_address(addr) == address:
                return cut_text(clean_text(name), MAX_DISPLAY_NAME)
    return ""


def _address(display_name: str, addr_spec: str) -> Address | str:
    try:
        return Address(display_name=literal_text(display_name), addr_spec=addr_spec)
    except (ValueError, IndexError):
        return addr_spec


def _references(inbound: Inbound) -> str:
    ids: list[str] = []
    for value in inbound.values("References"):
        ids.extend(
            token for token in clean_text(value).split() if token.startswith("<") and token.endswith(">")
        )
    if inbound.message_id:
        ids.append(inbound.message_id)
    return " ".join(ids[-MAX_REFERENCES:])


def html_document(fragment: str, language: str | None) -> str:
    """A sanitised HTML fragment as a whole document, its character set and language declared."""
    import html

    lang = f' lang="{html.escape(language)}"' if language else ""
    return (
        f'<!DOCTYPE html>\n<html{lang}>\n<head><meta charset="utf-8"></head>\n<body>\n'
        f"{fragment.strip()}\n</body>\n</html>\n"
    )


def compose_reply(
    inbound: Inbound,
    *,
    from_header: str,
    responder_address: str,
    subject: str | None,
    body: str,
    envelope_sender: str,
    now: dt.datetime,
    hostname: str,
    html: str | None = None,
    language: str | None = None,
) -> Outgoing:
    """The reply to ``inbound``: To the envelope sender only, never Reply-To or From (RFC 3834 section 4).

    With ``html`` (sanitised already) the body is multipart/alternative: ``body`` as text/plain first,
    then the HTML as text/html, which readers prefer (RFC 2046 section 5.1.4). ``language`` becomes
    Content-Language (RFC 3282).
    """
    sender = inbound.return_path
    sender = canonical_address(sender) or sender
    normalized = inbound.sender_address or sender
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = from_header
    msg["To"] = _address(_display_name_for(inbound, normalized), sender)
    msg["Subject"] = literal_text(reply_subject(subject, inbound.subject))
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=hostname)
    if inbound.message_id:
        msg["In-Reply-To"] = inbound.message_id
    references = _references(inbound)
    if references:
        msg["References"] = references
    msg["Auto-Submitted"] = "auto-replied"
    msg["Precedence"] = "bulk"
    msg["X-Auto-Response-Suppress"] = "All"
    msg[LOOP_HEADER] = responder_address
    msg.set_content(body, charset="utf-8")
    if html is not None:
        msg.add_alternative(html_document(html, language), subtype="html", charset="utf-8")
    if language:
        # After the body: set_content and add_alternative move or drop the Content-* fields.
        msg["Content-Language"] = language
    return Outgoing(mail_from=envelope_sender, rcpt_to=sender, message=msg)
