"""Retired-address values: RFC 3463 status codes, the one-line SMTP text, DSN address fields."""

from __future__ import annotations

import datetime as dt

import pytest

from responder.decide.records import DEFAULT_STATUS, MAX_SMTP_TEXT, Retirement, smtp_text, valid_status
from responder.mail.dsn import address_field, original_headers

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("status", "valid"),
    [
        ("5.1.6", True),
        ("5.1.1", True),
        ("5.2.1", True),
        ("5.7.1", True),
        ("5.0.0", True),
        ("5.1.999", True),
        ("4.1.6", False),  # transient: a retired address is gone for good
        ("2.0.0", False),
        ("5.8.1", False),  # no subject 8 in RFC 3463
        ("5.01.6", False),
        ("5.1.06", False),
        ("5.1.1000", False),
        ("5.1", False),
        ("5.1.6 ", False),
        ("550", False),
        ("", False),
    ],
)
def test_status_codes(status: str, valid: bool) -> None:
    assert valid_status(status) is valid


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Alice has left.", "Alice has left."),
        ("Alice has left.\r\nWrite to bob@example.com.", "Alice has left. Write to bob@example.com."),
        ("line\n250 OK\r\n\r\nMAIL FROM:<x>", "line 250 OK MAIL FROM:<x>"),
        ("tab\there\x00nul\x7fdel", "tab here nul del"),
        ("J\u00f6rg \u2014 \u201cquoted\u201d \u2018single\u2019 \u2026", "Jorg - \"quoted\" 'single' ..."),
        ("ﬁne café", "fine cafe"),
        ("北京 office", "?? office"),
        ("  \u2028 padded \u2029 ", "padded"),
    ],
)
def test_smtp_text_is_one_line_of_printable_ascii(message: str, expected: str) -> None:
    text = smtp_text(message)
    assert text == expected
    assert text.isascii() and text.isprintable()


def test_smtp_text_is_cut_at_a_word() -> None:
    text = smtp_text("word " * 100)
    assert len(text) <= MAX_SMTP_TEXT
    assert text.endswith("word...")
    unbroken = smtp_text("x" * 500)
    assert len(unbroken) == MAX_SMTP_TEXT and unbroken.endswith("...")


def _retirement(**fields: object) -> Retirement:
    base: dict[str, object] = {
        "id": 1,
        "address": "alice@example.com",
        "message": "Alice has left.",
        "status": "5.1.6",
        "starts_at": None,
        "ends_at": None,
        "timezone": "UTC",
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Retirement(**{**base, **fields})  # type: ignore[arg-type]


def test_schedule_edges() -> None:
    hour = dt.timedelta(hours=1)
    assert _retirement().state(NOW) == "active"
    assert _retirement(starts_at=NOW).state(NOW) == "active"
    assert _retirement(starts_at=NOW + hour).state(NOW) == "scheduled"
    assert _retirement(ends_at=NOW).state(NOW) == "ended"
    assert _retirement(ends_at=NOW + hour).state(NOW) == "active"


def test_reject_text_survives_a_row_edited_by_hand() -> None:
    assert _retirement().reject_text() == "5.1.6 Alice has left."
    edited = _retirement(status="250 OK", message="\r\n\r\n")
    assert edited.reject_text() == f"{DEFAULT_STATUS} This address no longer receives mail"


def test_address_fields() -> None:
    assert address_field("alice@example.com") == "rfc822; alice@example.com"
    # RFC 6533 utf-8-addr-xtext: message/delivery-status stays 7-bit.
    assert address_field("jörg+x@example.com") == "utf-8; j\\x{F6}rg\\x{2B}x@example.com"


def test_original_headers_stop_at_the_body() -> None:
    raw = b"From: a@b\r\nSubject: s\r\n\r\nbody\r\n"
    assert original_headers(raw) == "From: a@b\nSubject: s\n"
    huge = b"".join(b"X-Pad: " + b"p" * 90 + b"\n" for _ in range(2000)) + b"\nbody"
    kept = original_headers(huge)
    assert len(kept) <= 64 * 1024 and kept.endswith("p\n")
