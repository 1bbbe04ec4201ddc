"""Read the header fields of a message as compat32's parser does, without the email package.

The pipe hook decides most messages on their headers alone; importing ``email.parser`` costs about as
much as starting Python. This reader follows ``email.feedparser`` line for line (the same line
splitting, header pattern, unix-from and continuation handling, and compat32's value rule), so every
path sees the same fields; tests compare the two on the corpus and on random input.

One deliberate difference: the obsolete syntax of RFC 5322 section 4.5 (``List-Id : <x>``, blanks
between the name and the colon) is a field here, named without the blanks. The feedparser ends the
header at such a line, which would hide a ``List-Id`` or ``Auto-Submitted`` written that way.
"""

from __future__ import annotations

import io
import re

# email.feedparser.headerRE: a field name and colon, a unix-from line, or a continuation line; and
# the obsolete form with blanks before the colon (RFC 5322 obs-optional).
_FIELD_LINE = re.compile(r"^(From |[\041-\071\073-\176]*:|[\041-\071\073-\176]+[\t ]+:|[\t ])")
# The empty line that ends the top-level header block, with the line end before it.
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def header_span(raw: bytes | memoryview) -> tuple[int, int]:
    """(end of the header block's last line, before its line end; start of the body) of ``raw``.

    Both are ``len(raw)`` when no empty line ends the header. Only the header block is ever parsed: a
    30 MB body must not cost a full MIME parse, and attached messages are in the body.
    """
    match = _HEADER_END.search(raw)
    return match.span() if match else (len(raw), len(raw))


def header_block(raw: bytes) -> bytes:
    """The top-level header block of ``raw``, up to and including the empty line that ends it."""
    return raw[: header_span(raw)[1]]


def _lines(text: str) -> list[str]:
    # The feedparser splits with a newline="" StringIO: on CRLF, CR and LF, line ends kept.
    return io.StringIO(text, newline="").readlines()


def _field(source: list[str]) -> tuple[str, str]:
    # compat32.header_source_parse
    name, value = source[0].split(":", 1)
    name = name.rstrip(" \t")
    value = value.lstrip(" \t") + "".join(source[1:])
    return name, value.rstrip("\r\n")


def parse_fields(block: bytes) -> list[tuple[str, str]]:
    """The (name, raw value) pairs of a header block, in order; 8-bit bytes as surrogate escapes."""
    lines: list[str] = []
    for line in _lines(block.decode("ascii", "surrogateescape")):
        if not _FIELD_LINE.match(line):
            break
        lines.append(line)
    fields: list[tuple[str, str]] = []
    current: list[str] = []
    for line in lines:
        if line[0] in " \t":
            # A continuation; one with no field before it is dropped, as the feedparser drops it.
            if current:
                current.append(line)
            continue
        if current:
            fields.append(_field(current))
            current = []
        if line.startswith("From "):
            continue  # a unix-from line, first or misplaced: never a field
        if line.find(":") == 0:
            continue  # no field name
        current = [line]
    if current:
        fields.append(_field(current))
    return fields
