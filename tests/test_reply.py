"""The reply as a real SMTP server receives it: envelope, every header, body, encodings, no injection."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from email import policy
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Unpack

import pytest

from responder.config.load import settings_from_mapping
from responder.decide.context import Services
from responder.decide.engine import respond
from responder.decide.records import VacationChanges
from responder.mail.message import Envelope, Inbound
from responder.mail.reply import compose_reply
from responder.smtp.transport import SmtpTransport
from responder.store.database import REPLIES, Store
from tests.helpers import MESSAGES, FakeClock, sample
from tests.sink import Received, SmtpSink

ALICE = "alice@example.com"
BOB = "bob@example.org"


@pytest.fixture
def services(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock, tmp_path: Path
) -> Iterator[Services]:
    (tmp_path / "templates").mkdir()
    settings = settings_from_mapping(
        {
            "database": {"url": db_url},
            "smtp": {"port": sink.port, "hostname": "mx.example.net"},
            "reply": {"templates_dir": str(tmp_path / "templates")},
            "verify": {"require": "off"},
        }
    )
    yield Services(settings, clock=clock, store=store, transport=SmtpTransport(settings.smtp))


def _vacation(store: Store, now: dt.datetime, **fields: Unpack[VacationChanges]) -> None:
    values: VacationChanges = {"enabled": True, "message": "I am away until Monday.", "timezone": "UTC"}
    values.update(fields)
    store.put_vacation(ALICE, now, None, **values)


def _reply(services: Services, sink: SmtpSink, name: str, sender: str = BOB) -> Received:
    decision = respond(Inbound(Envelope(sender, ALICE), sample(name)), services)
    assert decision.action == "reply", (decision.reason, decision.detail)
    [received] = sink.wait_for(1)
    return received


def test_envelope_and_headers(services: Services, store: Store, sink: SmtpSink, clock: FakeClock) -> None:
    _vacation(store, clock())
    received = _reply(services, sink, "personal.eml")
    assert received.mail_from == "<>"
    assert received.rcpt_tos == [BOB]
    assert "NOTIFY=NEVER" not in received.rcpt_options  # the sink offers no DSN extension
    msg = received.message
    assert msg["From"] == ALICE
    assert str(msg["To"]) == "Bob Sender <bob@example.org>"
    assert msg["Subject"] == "Auto: Café meeting"
    assert msg["In-Reply-To"] == "<abc123@example.org>"
    assert msg["References"] == "<abc123@example.org>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Precedence"] == "bulk"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert parsedate_to_datetime(msg["Date"]) == clock()
    assert msg["Message-ID"].endswith("@mx.example.net>")
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert msg.get_content().startswith("I am away until Monday.")
    assert b"Subject: Auto: =?utf-8?" in received.data  # RFC 2047 on the wire


def test_configured_subject_from_and_non_ascii_body(
    services: Services, store: Store, sink: SmtpSink, clock: FakeClock
) -> None:
    _vacation(
        store,
        clock(),
        subject="Abwesenheitsnotiz: zurück am Montag",
        from_header="Alice Müller <alice@example.com>",
        message="Ich bin bis Montag nicht da. 🌴",
    )
    msg = _reply(services, sink, "personal.eml").message
    assert msg["Subject"] == "Abwesenheitsnotiz: zurück am Montag"
    assert str(msg["From"]) == "Alice Müller <alice@example.com>"
    assert "Ich bin bis Montag nicht da. 🌴" in msg.get_content()


def test_references_chain_and_missing_subject(
    services: Services, store: Store, sink: SmtpSink, clock: FakeClock
) -> None:
    _vacation(store, clock())
    msg = _reply(services, sink, "no-subject-no-message-id.eml").message
    assert msg["Subject"] == "Automated reply"
    assert msg["In-Reply-To"] is None
    assert msg["References"] is None


def test_encoded_crlf_in_subject_adds_no_header(
    services: Services, store: Store, sink: SmtpSink, clock: FakeClock
) -> None:
    _vacation(store, clock())
    received = _reply(services, sink, "subject-injection.eml")
    msg = received.message
    assert msg["Bcc"] is None
    assert received.rcpt_tos == [BOB]
    assert msg["Subject"] == "Auto: Hello Bcc: victim@example.net body"
    assert b"\nBcc:" not in received.data


def test_8bit_subject_is_decoded_and_reencoded(
    services: Services, store: Store, sink: SmtpSink, clock: FakeClock
) -> None:
    _vacation(store, clock())
    received = _reply(services, sink, "subject-non-ascii-8bit.eml")
    assert received.message["Subject"] == "Auto: Grüße aus Köln 🌧"
    assert received.data.isascii()


def test_long_subject_is_cut(services: Services, store: Store, sink: SmtpSink, clock: FakeClock) -> None:
    _vacation(store, clock())
    raw = b"From: bob@example.org\nTo: alice@example.com\nSubject: " + b"x" * 1000 + b"\n\nhi\n"
    respond(Inbound(Envelope(BOB, ALICE), raw), services)
    [received] = sink.wait_for(1)
    subject = received.message["Subject"]
    assert len(subject) == 256
    assert subject.startswith("Auto: xxx") and subject.endswith("…")


def test_reply_from_recipient_envelope_option(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    settings = settings_from_mapping(
        {
            "database": {"url": db_url},
            "smtp": {"port": sink.port},
            "reply": {"envelope_sender": "recipient"},
            "verify": {"require": "off"},
        }
    )
    services = Services(settings, clock=clock, store=store, transport=SmtpTransport(settings.smtp))
    _vacation(store, clock())
    assert _reply(services, sink, "personal.eml").mail_from == ALICE


def test_admin_template_gets_its_variables(
    services: Services, store: Store, sink: SmtpSink, clock: FakeClock, tmp_path: Path
) -> None:
    (tmp_path / "templates" / "custom.txt.j2").write_text(
        "{{ message }}|{{ recipient }}|{{ sender }}|{{ subject }}|{{ start.isoformat() }}|"
        "{{ end.isoformat() }}|{{ timezone }}|{{ interval }}\n",
        encoding="utf-8",
    )
    start = clock() - dt.timedelta(days=1)
    end = clock() + dt.timedelta(days=2)
    _vacation(
        store, clock(), template="custom.txt.j2", starts_at=start, ends_at=end, timezone="Europe/Berlin"
    )
    body = _reply(services, sink, "personal.eml").message.get_content().replace("\r\n", "\n")
    assert body == (
        "I am away until Monday.|alice@example.com|bob@example.org|Café meeting|"
        "2026-11-26T13:00:00+01:00|2026-11-29T13:00:00+01:00|Europe/Berlin|7d\n"
    )


@pytest.mark.parametrize(
    "template",
    [
        "{{ undefined_variable }}",
        "{% if %}",
        "{{ message.__class__.__mro__ }}",
        "{{ ''.__class__.__subclasses__() }}",
    ],
)
def test_template_error_drops_and_sends_nothing(
    template: str, services: Services, store: Store, sink: SmtpSink, clock: FakeClock, tmp_path: Path
) -> None:
    (tmp_path / "templates" / "bad.txt.j2").write_text(template, encoding="utf-8")
    _vacation(store, clock(), template="bad.txt.j2")
    decision = respond(Inbound(Envelope(BOB, ALICE), sample("personal.eml")), services)
    assert (decision.action, decision.reason) == ("drop", "template-error")
    assert sink.received() == []
    # The interval was not used up by a reply that never went out.
    assert store.last_claim(REPLIES, store.list_vacations()[0].id, BOB) is None


def test_reply_fed_back_to_another_vacation_is_not_answered(
    services: Services, store: Store, sink: SmtpSink, clock: FakeClock
) -> None:
    now = clock()
    _vacation(store, now)
    store.put_vacation(BOB, now, None, enabled=True, message="Bob is away too.", timezone="UTC")
    first = _reply(services, sink, "personal.eml")
    # Bob's own hook receives Alice's reply: null envelope sender and Auto-Submitted.
    decision = respond(Inbound(Envelope("", BOB), first.data), services)
    assert (decision.action, decision.reason) == ("suppress", "null-sender")
    # Even with the recipient envelope option the reply stays unanswered.
    decision = respond(Inbound(Envelope(ALICE, BOB), first.data), services)
    assert (decision.action, decision.reason) == ("suppress", "auto-submitted")
    assert len(sink.received()) == 1


def test_a_field_folded_once_is_the_field_the_email_package_folds(tmp_path: Path) -> None:
    inbound = Inbound(
        Envelope(sender="bob@example.org", recipient="alice@example.com"), sample("personal.eml")
    )
    long_name = "Álice Ümlaut, " * 8  # a From that folds over lines, in encoded words
    composed = []
    for number in range(3):
        outgoing = compose_reply(
            inbound,
            from_header=f'"{long_name}{number % 2}" <alice@example.com>',
            responder_address="alice@example.com",
            subject=None,
            body="Away.\n",
            envelope_sender="",
            now=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
            hostname="mx.example.com",
        )
        data = outgoing.as_bytes()
        assert data == outgoing.message.as_bytes(policy=policy.SMTP)
        composed.append(data.split(b"\r\nTo:", 1)[0])
    assert composed[0] == composed[2] != composed[1]  # the folds kept apart by value
    assert composed[0].count(b"\r\n ") >= 1 and b"=?utf-8?" in composed[0]


# Display names that quoting, escaping or folding could change: each must come out as the email
# package itself writes it.
_NAMES = [
    "Bob",
    "Bob Smith",
    "Smith, Bob",
    'Bob "the" Builder',
    "O'Brien",
    "Dr. Bob",
    "two  spaces",
    "back\\slash",
    "(not a comment)",
    "<angle>",
    "a@b",
    "Ünïcode Name",
    "=?utf-8?q?looks_encoded?=",
    "x" * 90,
]
_SUBJECTS = ["", "hello", "two  spaces", " leading", "trailing ", "tab\there", "s" * 70, "x " * 50, "Grüße"]


def _replies(names: list[str], subjects: list[str]) -> Iterator[bytes]:
    for path in sorted(MESSAGES.rglob("*.eml")):
        data = path.read_bytes()
        for number, (name, subject) in enumerate(zip(names, subjects * len(names), strict=False)):
            sender = "bob@example.org" if number % 3 else "bob.smith-jr+tag@sub.example.org"
            header = f"From: {name} <{sender}>\nSubject: {subject}\n".encode("utf-8", "surrogateescape")
            inbound = Inbound(Envelope(sender=sender, recipient="alice@example.com"), header + data)
            yield compose_reply(
                inbound,
                from_header="Alice <alice@example.com>",
                responder_address="alice@example.com",
                subject=None,
                body="Away.\n",
                envelope_sender="",
                now=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
                hostname="mx.example.com",
            ).as_bytes()


def test_fields_kept_as_given_are_what_the_email_package_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Composed with and without the per-reply fields kept as their source text: the same bytes."""
    import itertools

    from responder.mail import reply

    names = [*_NAMES, *(f"Sender {n}" for n in range(3))]
    ids = itertools.count()
    monkeypatch.setattr(reply, "make_msgid", lambda domain: f"<{next(ids)}@{domain}>")
    kept = list(_replies(names, _SUBJECTS))
    ids = itertools.count()
    monkeypatch.setattr(reply._FoldOnce, "header_store_parse", policy.EmailPolicy.header_store_parse)
    parsed = list(_replies(names, _SUBJECTS))
    assert len(kept) > 1000
    for one, other in zip(kept, parsed, strict=True):
        assert one == other
