"""The inbound message: envelope, headers parsed defensively, and address helpers."""

from __future__ import annotations

import re
from typing import NamedTuple

from responder.cached import cached_property
from responder.mail.headers import header_block, parse_fields

# The email package is imported only where it is needed: the pipe hook decides most messages on the
# header fields alone (responder.mail.headers), and importing it costs as much as starting Python. For the
# same reason the small records on that path are NamedTuples: dataclasses imports inspect and ast.

# Postfix pipe(8) expands a null sender to MAILER-DAEMON unless null_sender= is set.
NULL_SENDERS = frozenset({"", "<>", "mailer-daemon"})
# Marks our own responses: one that comes back to us is a loop, whatever else it says.
LOOP_HEADER = "X-Responder-Loop"

# A run of control characters (CR, LF and TAB included) with the blanks around it becomes one space.
_CONTROL = re.compile(r"[ ]*[\x00-\x1f\x7f-\x9f\u2028\u2029]+[ ]*")
_FOLD = re.compile(r"\r?\n[ \t]*")
_LOCAL_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-\u0080-\U0010ffff]+$")
_QUOTED_LOCAL = re.compile(r'^"(?:[^"\\\r\n]|\\.)+"$')
_QUOTED_PAIR = re.compile(r"\\(.)")
# Lone surrogates: what an undecodable byte or a broken encoded word leaves in a str; no codec writes them.
_SURROGATE = re.compile("[\ud800-\udfff]")
_DOMAIN_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def clean_text(value: str) -> str:
    """Unfold a header value, replace control characters (CR and LF included) by one space and lone
    surrogates by U+FFFD, so that the text can be written in any header, log line or database."""
    return _SURROGATE.sub("\ufffd", _CONTROL.sub(" ", value)).strip()


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def printable(value: str) -> str:
    """``value`` with lone surrogates (undecodable bytes) written as backslash escapes."""
    return _SURROGATE.sub(_escape, value)


def _undo_surrogates(value: str) -> str:
    # 8-bit header bytes arrive as surrogate escapes; most are raw UTF-8 in practice.
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def decode_text(value: str) -> str:
    """Decode RFC 2047 encoded words and raw 8-bit text; never raises, never keeps control characters."""
    from email.header import decode_header, make_header

    value = _undo_surrogates(_FOLD.sub(" ", value))
    try:
        decoded = str(make_header(decode_header(value)))
    except (LookupError, ValueError, UnicodeError, AssertionError):
        decoded = value
    return clean_text(decoded)


def _ascii_domain(domain: str) -> str | None:
    domain = domain.rstrip(".").lower()
    if domain.startswith("[") and domain.endswith("]"):
        return domain  # address literal
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        return None
    labels = ascii_domain.split(".")
    if not all(_DOMAIN_LABEL.match(label) for label in labels):
        return None
    return ascii_domain


def _dot_atom(local: str) -> bool:
    return bool(_LOCAL_ATOM.match(local)) and not (
        local.startswith(".") or local.endswith(".") or ".." in local
    )


def _split(address: str) -> tuple[str, str, str] | None:
    """(local part, domain as given without a final dot, lower-case ASCII domain) of an addr-spec.

    A quoted local part that says what a dot-atom says (``"bob"``, ``"b\\ob"``) comes back as that
    dot-atom: RFC 5321 section 4.1.2 makes them one mailbox.
    """
    address = address.strip().strip("<>").strip()
    if len(address) > 320 or "@" not in address:
        return None
    local, _, domain = address.rpartition("@")
    if _QUOTED_LOCAL.match(local):
        unquoted = _QUOTED_PAIR.sub(r"\1", local[1:-1])
        if _dot_atom(unquoted):
            local = unquoted
    elif not _dot_atom(local):
        return None
    ascii_domain = _ascii_domain(domain)
    if ascii_domain is None:
        return None
    return local, domain.rstrip("."), ascii_domain


def normalize_address(address: str) -> str | None:
    """A comparable form of an addr-spec (domain in lower-case ASCII, local part lower-cased), or None."""
    parts = _split(address)
    return f"{parts[0].lower()}@{parts[2]}" if parts else None


def canonical_address(address: str) -> str | None:
    """The addr-spec to send to: without angle brackets, a needless quoting or the domain's final dot."""
    parts = _split(address)
    return f"{parts[0]}@{parts[1]}" if parts else None


def is_null_sender(sender: str) -> bool:
    return sender.strip().lower() in NULL_SENDERS


def addresses_in(values: list[str]) -> set[str]:
    """Every normalized address named in the given address-list header values.

    Both the raw and the RFC 2047-decoded forms are parsed, so that encoded display names and
    (non-conforming) encoded addresses are tolerated alike.
    """
    from email.utils import getaddresses

    found: set[str] = set()
    for value in values:
        raw = _undo_surrogates(_FOLD.sub(" ", value))
        for candidate in {raw, decode_text(raw)}:
            for _name, addr in getaddresses([candidate]):
                normalized = normalize_address(addr)
                if normalized:
                    found.add(normalized)
    return found


class Envelope(NamedTuple):
    """What the MTA says about one delivery: one sender, one recipient."""

    sender: str
    recipient: str
    original_recipient: str = ""
    client_address: str = ""
    helo: str = ""
    queue_id: str = ""


class Inbound:
    """One message as received, with lazily parsed headers that never raise on access.

    The recipients of one LMTP transaction share one message: ``for_recipient`` gives each its own
    envelope over the same parsed header and the same ``shared`` results (sender verification).
    """

    def __init__(self, envelope: Envelope, raw: bytes) -> None:
        # Bytes that are not UTF-8 (in argv, in an LMTP command) arrive as surrogate escapes, which no
        # database, log handler or SMTP client can write: the envelope keeps them as backslash escapes,
        # and a sender spelt with them is no address to answer.
        self.damaged_sender = bool(_SURROGATE.search(envelope.sender))
        if any(_SURROGATE.search(value) for value in envelope):
            envelope = Envelope(*map(printable, envelope))
        self.envelope = envelope
        self.raw = raw if isinstance(raw, bytes) else bytes(raw)
        # Per-message work that every recipient view of this message reuses (keyed by its owner).
        self.shared: dict[object, object] = {}

    def for_recipient(self, recipient: str, original_recipient: str = "") -> Inbound:
        """This message for another recipient of the same transaction; parsed parts are shared."""
        # What copy.copy does for a plain instance, without its reduce protocol (every recipient).
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.envelope = Envelope(
            *map(
                printable, self.envelope._replace(recipient=recipient, original_recipient=original_recipient)
            )
        )
        return view

    @cached_property
    def header(self) -> bytes:
        """The top-level header block with LF line ends, as the pipe hook gets it and LMTP does not.

        Normalised here, once, so that every path (hook, thin client, LMTP) parses the same fields and
        digests the same bytes; the body is left as it came (DKIM hashes it from ``raw``).
        """
        return header_block(self.raw).replace(b"\r\n", b"\n")

    @cached_property
    def fields(self) -> list[tuple[str, str]]:
        """The (name, raw value) pairs of the header, in order, as ``headers.parse_fields`` reads them."""
        return parse_fields(self.header)

    @cached_property
    def _fields(self) -> dict[str, list[str]]:
        # The raw values, as compat32's raw_items() has them: its fetch would turn 8-bit values into
        # lossy Header objects.
        fields: dict[str, list[str]] = {}
        for name, value in self.fields:
            fields.setdefault(name.lower(), []).append(value)
        return fields

    def values(self, name: str) -> list[str]:
        """All raw values of a header field, as text (8-bit bytes as surrogate escapes)."""
        return self._fields.get(name.lower(), [])

    def first(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None

    def has(self, name: str) -> bool:
        return name.lower() in self._fields

    @cached_property
    def parseable(self) -> bool:
        """False for empty input and for bytes with no header field at all."""
        return len(self._fields) > 0

    @cached_property
    def subject(self) -> str:
        value = self.first("Subject")
        return decode_text(value) if value is not None else ""

    @cached_property
    def message_id(self) -> str:
        """The Message-ID as one clean token, or "" when there is none."""
        value = self.first("Message-ID")
        if value is None:
            return ""
        match = re.search(r"<[^<>\s]+>", clean_text(_undo_surrogates(value)))
        return match.group(0) if match else ""

    @cached_property
    def message_key(self) -> str:
        """Identifies this message across MTA retries: its Message-ID, else a digest of its header block."""
        if self.message_id:
            return self.message_id
        import hashlib

        return "sha256:" + hashlib.sha256(self.header).hexdigest()

    @property
    def return_path(self) -> str:
        """The envelope sender as given, without blanks and angle brackets."""
        return self.envelope.sender.strip().strip("<>")

    @cached_property
    def sender_address(self) -> str | None:
        return None if self.damaged_sender else normalize_address(self.envelope.sender)

    @cached_property
    def content_type(self) -> str:
        value = self.first("Content-Type") or ""
        return clean_text(value).split(";", 1)[0].strip().lower()

    def address_header(self, *names: str) -> set[str]:
        found: set[str] = set()
        for name in names:
            found |= addresses_in(self.values(name))
        return found
