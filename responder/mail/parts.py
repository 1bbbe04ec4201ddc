"""The MIME structure of a message, read without the email package, for the rules that look past the header.

Only what the rules ask for: each part's content type and parameters, and the first text. Attached
messages (``message/*``) are leaves: what a forwarded or returned message contains is not this
message's structure. Depth and count are bounded, so no input costs more than a pass over its bytes.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from responder.mail.headers import header_span, parse_fields
from responder.mail.message import clean_text

MAX_DEPTH = 5
MAX_PARTS = 100
# Enough for the opening sentences of any notice; a heuristic needs no more.
TEXT_LIMIT = 8192

_TEXT_START = re.compile(rb"[^\r\n]")
_PARAMETER = re.compile(r""";\s*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)""")
_TAG = re.compile(r"<[^<>]*>")
_BLANKS = re.compile(r"\s+")


class Part(NamedTuple):
    content_type: str
    params: dict[str, str]
    encoding: str
    # A view into the message: a copy of each body would hold a large message twice (the cache keeps it).
    body: memoryview


def content_type(value: str) -> tuple[str, dict[str, str]]:
    """A Content-Type value as (lower-case type, parameters with lower-case names, unquoted values)."""
    value = clean_text(value)
    kind = value.split(";", 1)[0].strip().lower()
    params: dict[str, str] = {}
    for name, given in _PARAMETER.findall(value):
        unquoted = re.sub(r"\\(.)", r"\1", given[1:-1]) if given.startswith('"') else given
        params.setdefault(name.lower(), unquoted)
    return kind or "text/plain", params


def _part(raw: bytes | memoryview) -> Part:
    # The body stays a view of the message: a copy of each part would double a large message.
    view = memoryview(raw)
    if bytes(view[:2]).startswith((b"\r\n", b"\n")):
        # A part with no header field at all: the body starts after the leading line breaks.
        text = _TEXT_START.search(raw)
        header, body = b"", view[text.start() if text else len(view) :]
    else:
        start = header_span(raw)[1]
        header, body = bytes(view[:start]), view[start:]
    fields = {name.lower(): value for name, value in reversed(parse_fields(header))}
    kind, params = content_type(fields.get("content-type", ""))
    encoding = clean_text(fields.get("content-transfer-encoding", "")).lower()
    return Part(kind, params, encoding, body)


def _children(body: memoryview, boundary: str) -> list[memoryview]:
    delimiter = re.compile(
        rb"(?m)^--" + re.escape(boundary.encode("utf-8", "surrogateescape")) + rb"(--)?[ \t]*\r?$"
    )
    pieces: list[memoryview] = []
    start: int | None = None
    for match in delimiter.finditer(body):
        if start is not None:
            # The line break before a delimiter belongs to the delimiter (RFC 2046 section 5.1.1).
            end = match.start()
            if end > start and body[end - 1] == ord("\n"):
                end -= 1
            if end > start and body[end - 1] == ord("\r"):
                end -= 1
            pieces.append(body[start:end])
        if match.group(1) or len(pieces) >= MAX_PARTS:
            return pieces
        start = match.end() + (2 if bytes(body[match.end() : match.end() + 2]) == b"\r\n" else 1)
    if start is not None:
        pieces.append(body[start:])  # no closing delimiter: the rest is the last part
    return pieces


def parts(raw: bytes) -> tuple[Part, ...]:
    """The message and every part below it, depth first; ``message/*`` parts are not opened."""
    # bytes() so that any buffer the caller hands in can be the cache key (no copy for bytes).
    return _parts(bytes(raw))


# Two rules read the structure of the same message one after the other.
@lru_cache(maxsize=1)
def _parts(raw: bytes) -> tuple[Part, ...]:
    found: list[Part] = []

    def walk(part: Part, depth: int) -> None:
        found.append(part)
        boundary = part.params.get("boundary", "")
        if not part.content_type.startswith("multipart/") or not boundary or depth >= MAX_DEPTH:
            return
        for child in _children(part.body, boundary):
            if len(found) >= MAX_PARTS:
                return
            walk(_part(child), depth + 1)

    walk(_part(raw), 0)
    return tuple(found)


def first_text(raw: bytes) -> str:
    """The first text part (or the single body) as plain lower-case words, decoded, tags removed."""
    for part in parts(raw):
        if part.content_type.startswith("multipart/"):
            continue
        if not part.content_type.startswith("text/"):
            return ""
        return _plain(part)
    return ""


def _plain(part: Part) -> str:
    import binascii

    data = bytes(part.body[: TEXT_LIMIT * 2])
    try:
        if part.encoding == "base64":
            data = binascii.a2b_base64(b"".join(data.split())[: TEXT_LIMIT * 4 // 3 // 4 * 4])
        elif part.encoding == "quoted-printable":
            data = binascii.a2b_qp(data)
    except (binascii.Error, ValueError):
        pass  # left as it came: a heuristic reads what it can
    charset = part.params.get("charset", "utf-8")
    try:
        text = data.decode(charset, "replace")
    except LookupError:
        text = data.decode("utf-8", "replace")
    if part.content_type == "text/html":
        text = _TAG.sub(" ", text).replace("&nbsp;", " ")
    return _BLANKS.sub(" ", text[:TEXT_LIMIT]).strip().lower()
