"""The fast path's own header reader agrees with the standard library's."""

from __future__ import annotations

import io
import random
import re
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

import pytest

from responder.mail.headers import header_block, parse_fields
from tests.helpers import MESSAGES

HEADER_PIECES = [
    b"From ",
    b"From: a@b",
    b"Subject",
    b":",
    b" ",
    b"\t",
    b"\r\n",
    b"\n",
    b"\r",
    b"x",
    b"\xc3\xa9",
    b"\xff",
    b"To: ",
    b"a b",
    b"Received: from x",
    b"\r\n\r\n",
    b"\n\n",
    b"List-Id: <l>",
    b" c",
    b"::",
    b"\x00",
    b"\x0b",
    b"\x0c",
    b"\x85",
    b"Precedence: bulk",
    b"List-Id : <l>",
    b"Auto-Submitted\t: auto-replied",
]

# The one intended difference from the feedparser: the obsolete "Name : value" is the field "Name".
_OBSOLETE_NAME = re.compile(r"^(?!From )([\041-\071\073-\176]+)[\t ]+:")


def _without_obsolete_blanks(raw: bytes) -> bytes:
    lines = io.StringIO(raw.decode("ascii", "surrogateescape"), newline="").readlines()
    return "".join(_OBSOLETE_NAME.sub(r"\1:", line) for line in lines).encode("ascii", "surrogateescape")


def _email_fields(raw: bytes) -> list[tuple[str, str]]:
    """compat32's fields, with the obsolete syntax written the modern way first."""
    block = header_block(_without_obsolete_blanks(raw))
    parsed = BytesHeaderParser(policy=compat32).parsebytes(block)
    return [(name, str(value)) for name, value in parsed.raw_items()]


@pytest.mark.parametrize(
    "path", sorted(p for p in MESSAGES.rglob("*") if p.is_file()), ids=lambda p: str(p.relative_to(MESSAGES))
)
def test_header_fields_of_the_corpus(path: Path) -> None:
    raw = path.read_bytes()
    assert parse_fields(header_block(raw)) == _email_fields(raw)


def test_header_fields_of_random_input() -> None:
    rng = random.Random(20261127)
    for _ in range(20000):
        raw = b"".join(rng.choice(HEADER_PIECES) for _ in range(rng.randint(0, 25)))
        assert parse_fields(header_block(raw)) == _email_fields(raw), raw


def test_obsolete_blanks_before_the_colon_name_the_field() -> None:
    raw = b"From: a@b\r\nList-Id : <l.example.org>\r\nX-Loop\t:  a@b\r\nSubject: s\r\n\r\nbody"
    assert parse_fields(raw) == [
        ("From", "a@b"),
        ("List-Id", "<l.example.org>"),
        ("X-Loop", "a@b"),
        ("Subject", "s"),
    ]
    # The feedparser ends the header at the first such line: that is what this reader does not copy.
    feedparser = BytesHeaderParser(policy=compat32).parsebytes(raw)
    assert [name for name, _ in feedparser.raw_items()] == ["From"]
