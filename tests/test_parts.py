"""The lean MIME reader: the structure and first text the body-reading rules see, on any input."""

from __future__ import annotations

import random
import time

from responder.mail.parts import MAX_PARTS, content_type, first_text, parts
from tests.helpers import MESSAGES


def _sample(name: str) -> bytes:
    return (MESSAGES / name).read_bytes()


def test_structure_of_a_real_bounce_stops_at_the_returned_message() -> None:
    raw = _sample("automated/exchange55-ims-undeliverable.eml")
    assert [part.content_type for part in parts(raw)] == ["multipart/mixed", "text/plain", "message/rfc822"]


def test_nested_multiparts_and_a_reused_boundary() -> None:
    found = [p.content_type for p in parts(_sample("personal/outlook-reply-read-receipt.eml"))]
    assert found[:4] == ["multipart/mixed", "multipart/related", "multipart/alternative", "text/plain"]
    assert "application/msword" in found
    # Outlook Express for Mac used one boundary for two levels: read what can be read, never a crash.
    assert first_text(_sample("personal/outlook-express-mac-reused-boundary.eml")) == "some removed test."


def test_first_text_is_decoded_and_stripped_of_tags() -> None:
    # base64 text/html, as Exchange sent the out-of-office notice
    assert "i am away on vacation" in first_text(_sample("automated/exchange-oof-return-path-null.eml"))
    assert first_text(_sample("automated/qmail-failure-notice.eml")).startswith(
        "hi. this is the qmail-send program"
    )


def test_parameters_quoted_or_not_any_case() -> None:
    assert content_type('MULTIPART/Mixed; REPORT-TYPE=delivery-status; BOUNDARY="a;b \\"c\\""') == (
        "multipart/mixed",
        {"report-type": "delivery-status", "boundary": 'a;b "c"'},
    )
    assert content_type("") == ("text/plain", {})


def test_deep_or_wide_input_is_bounded() -> None:
    deep = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(5000))
    wide = (
        b'Content-Type: multipart/mixed; boundary="x"\n\n' + b"--x\nContent-Type: text/plain\n\nt\n" * 10000
    )
    for raw in (deep, wide):
        started = time.monotonic()
        assert len(parts(raw)) <= MAX_PARTS
        assert time.monotonic() - started < 2


def test_random_input_never_raises() -> None:
    pieces = [
        b"Content-Type: multipart/mixed; boundary=b\n",
        b"Content-Type: text/html; charset=nonsense\n",
        b"Content-Transfer-Encoding: base64\n",
        b"Content-Transfer-Encoding: quoted-printable\n",
        b"\n",
        b"\r\n",
        b"--b\n",
        b"--b--\n",
        b"=\n",
        b"=ZZ",
        b"\xff\xfe",
        b"<p>",
        b"abc",
        b"Content-Type: message/rfc822\n",
    ]
    rng = random.Random(5230)
    for _ in range(3000):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        assert parts(raw)
        assert isinstance(first_text(raw), str)


def test_every_body_is_a_view_of_the_message_not_a_copy() -> None:
    # The structure stays cached while the hook decides: copied bodies would hold a message twice.
    raw = _sample("personal/outlook-reply-read-receipt.eml")
    found = parts(raw)
    assert len(found) > 4
    assert all(part.body.obj is raw for part in found)
    # A part that starts with a line break has no header; its body is what follows the breaks.
    assert bytes(parts(b"\r\n\r\nhello\r\n")[0].body) == b"hello\r\n"
