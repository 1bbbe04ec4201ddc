"""The fast path's own readers agree with the standard library ones they stand in for."""

from __future__ import annotations

import io
import random
import re
import tomllib
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

import pytest

from responder.hook.quickconf import parse_plain, read_document
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

TOML_PIECES = [
    "[server]",
    "[ a ]",
    "[a.b]",
    "[[x]]",
    "\n",
    "\r\n",
    "\r",
    " ",
    "\t",
    "#c",
    "key",
    "k-1",
    "a b",
    "=",
    '"x"',
    '"a\\"b"',
    "'lit'",
    "'''",
    '"""',
    "1",
    "+1",
    "-0",
    "01",
    "1_0",
    "1__0",
    "1.5",
    "1.",
    "1e3",
    "true",
    "false",
    "True",
    "[",
    "]",
    ",",
    "x",
    "\u00e9",
    "\x00",
    "\u2028",
    "\ufeff",
    "socket",
    '="unix:/run/x"',
    "0x1f",
    "1979-05-27",
    "inf",
    "[1, 2]",
    '["a",]',
    "{a=1}",
    "_1",
    "1_",
    "#",
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


def _toml(text: str) -> dict[str, object] | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None


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


def test_plain_toml_of_random_input_is_tomllibs_or_nothing() -> None:
    rng = random.Random(3834)
    read = 0
    for _ in range(40000):
        text = "".join(rng.choice(TOML_PIECES) for _ in range(rng.randint(0, 14)))
        got = parse_plain(text)
        if got is not None:
            read += 1
            # repr: 1 and 1.0 (and True) compare equal, but are not the same value.
            assert repr(got) == repr(_toml(text)), text
    assert read > 1000  # the plain subset is actually exercised


@pytest.mark.parametrize(
    "text",
    [
        '[server]\nsocket = "unix:/run/responder/lmtp.sock"\n',
        "[database]\r\nurl = 'sqlite:////var/lib/r.sqlite3' # the file\r\nbusy_timeout = 10\r\n",
        '[verify]\ntrusted_authserv_ids = ["mx.example.com", "mx2.example.com",]\n[log]\nsyslog = true\n',
        "[limits]\nper_sender = 1_000\nratio = 0.5\nnegative = -3\n",
    ],
)
def test_plain_configurations_are_read_without_tomllib(text: str) -> None:
    assert parse_plain(text) == tomllib.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        '[server]\nsocket = "unix:/run/\\u0078.sock"\n',  # escapes
        "[verify]\ntrusted_authserv_ids = [\n  'a',\n]\n",  # multi-line array
        'server.socket = "unix:/x"\n',  # dotted key
        "[server]\nstarted = 1979-05-27T07:32:00Z\n",  # a date
    ],
)
def test_everything_else_is_left_to_tomllib(text: str, tmp_path: Path) -> None:
    assert parse_plain(text) is None
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    assert read_document(str(path)) == tomllib.loads(text)


def test_unreadable_or_invalid_files_give_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    assert read_document(str(path)) is None
    path.write_bytes(b"[server\n")
    assert read_document(str(path)) is None
    path.write_bytes(b"\xff = 1\n")
    assert read_document(str(path)) is None
