"""Bounces after the queue: the rule table for DSNs, driven by the sample corpus; real store and relay."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from responder.config.load import settings_from_mapping
from responder.config.settings import Settings
from responder.decide.context import Services
from responder.decide.engine import respond
from responder.errors import RelayUnavailable
from responder.mail.message import Envelope, Inbound, canonical_address
from responder.smtp.transport import SmtpTransport
from responder.store.database import Store
from tests.helpers import Case, FakeClock, sample
from tests.sink import SmtpSink
from tests.test_bounce_hook import dsn_parts

ALICE = "alice@example.com"
BOB = "bob@example.org"
HOUR = dt.timedelta(hours=1)


# The same samples as the vacation corpus (tests/test_corpus.py), sent to a retired address.
CASES: dict[str, Case] = {
    "personal": Case("personal.eml", "bounce", None),
    "null-empty": Case("personal.eml", "suppress", "null-sender", sender=""),
    "null-brackets": Case("personal.eml", "suppress", "null-sender", sender="<>"),
    "null-mailer-daemon": Case("personal.eml", "suppress", "null-sender", sender="MAILER-DAEMON"),
    "sender-injection": Case("personal.eml", "suppress", "malformed", sender="bob@example.org\r\nBcc: x@y.z"),
    "garbage-bytes": Case("garbage.bin", "suppress", "malformed"),
    "empty-input": Case("empty.eml", "suppress", "malformed"),
    "list-owner": Case(
        "list-manager-sender.eml", "suppress", "system-sender", sender="owner-team@example.org"
    ),
    "list-bounces-verp": Case(
        "list-manager-sender.eml",
        "suppress",
        "system-sender",
        sender="team-bounces+alice=example.com@example.org",
    ),
    "noreply": Case("list-manager-sender.eml", "suppress", "system-sender", sender="no-reply@example.org"),
    "auto-replied": Case("auto-submitted-auto-replied.eml", "suppress", "auto-submitted"),
    "auto-generated": Case("auto-submitted-auto-generated-comment.eml", "suppress", "auto-submitted"),
    "auto-submitted-no": Case("auto-submitted-no.eml", "bounce", None),
    "precedence-bulk": Case("precedence-bulk.eml", "suppress", "precedence"),
    "precedence-list": Case("precedence-list.eml", "suppress", "precedence"),
    "list-id": Case("list-id.eml", "suppress", "list-header"),
    "list-unsubscribe": Case("list-unsubscribe.eml", "suppress", "list-header"),
    "mailing-list": Case("mailing-list.eml", "suppress", "list-header"),
    "xars-all": Case("x-auto-response-suppress-all.eml", "suppress", "auto-response-suppress"),
    # NDR asks bounce generators to stay quiet; OOF only asks vacation responders (MS-OXCMAIL).
    "xars-ndr": Case("x-auto-response-suppress-autoreply.eml", "suppress", "auto-response-suppress"),
    "xars-oof-still-bounces": Case("x-auto-response-suppress-oof.eml", "bounce", None),
    "dsn": Case("dsn-report.eml", "suppress", "report"),
    "delivery-status-in-mixed": Case("report-part-in-mixed.eml", "suppress", "report"),
    "null-return-path": Case(
        "automated/exchange-oof-return-path-null.eml",
        "suppress",
        "null-return-path",
        sender="fred@example.com",
    ),
    "x-autoreply": Case("x-autoreply-yes.eml", "suppress", "autoreply-header"),
    "non-dsn-bounce": Case("bounce-text-with-returned-header.eml", "suppress", "bounce-heuristic"),
    "person-writes-undeliverable": Case("person-writes-undeliverable.eml", "bounce", None),
    "mdn": Case("mdn-report.eml", "suppress", "report", sender="carol@example.org"),
    "loop-marker": Case("loop-marker.eml", "suppress", "loop"),
    "51-received": Case("loop-many-received.eml", "suppress", "loop"),
    "sender-is-recipient": Case("personal.eml", "suppress", "own-address", sender="Alice@Example.COM"),
    # not-addressed is for replies only: a DSN reports on the envelope recipient.
    "bcc-still-bounces": Case("bcc-via-list.eml", "bounce", None),
    "8bit-subject": Case("subject-non-ascii-8bit.eml", "bounce", None),
    "subject-injection": Case("subject-injection.eml", "bounce", None),
    "no-subject-no-message-id": Case("no-subject-no-message-id.eml", "bounce", None),
    "broken-mime": Case("broken-mime.eml", "bounce", None),
    "original-recipient-retired": Case(
        "personal.eml", "bounce", None, recipient="alice@mailbox.internal", original_recipient=ALICE
    ),
    # RFC 5321 section 4.1.2: a quoting the local part does not need names the same mailbox.
    "quoted-retired-recipient": Case("personal.eml", "bounce", None, recipient='"Alice"@example.com'),
    "scheduled": Case("personal.eml", "suppress", "no-vacation", recipient="scheduled@example.com"),
    "ended": Case("personal.eml", "suppress", "no-vacation", recipient="ended@example.com"),
    "starts-now": Case("personal.eml", "bounce", None, recipient="starts-now@example.com"),
    "neither": Case("personal.eml", "suppress", "no-vacation", recipient="nobody@example.com"),
    # routed return paths and crafted input, as for replies
    "routed-quoted-at": Case(
        "personal.eml", "suppress", "routed-sender", sender='"v@victim.example"@mx.example.net'
    ),
    "routed-percent": Case(
        "personal.eml", "suppress", "routed-sender", sender="v%victim.example@mx.example.net"
    ),
    "quoted-but-plain-sender": Case("personal.eml", "bounce", None, sender='"bob"@example.org'),
    "sender-domain-trailing-dot": Case("personal.eml", "bounce", None, sender="bob@example.org."),
    "sender-invalid-utf8": Case("personal.eml", "suppress", "malformed", sender="b\udcffob@example.org"),
    "subject-utf16-lone-surrogate": Case("subject-utf16-lone-surrogate.eml", "bounce", None),
    "subject-raw-unicode-escape": Case("subject-raw-unicode-escape.eml", "bounce", None),
    "display-name-10000-characters": Case("display-name-10000.eml", "bounce", None),
}


def _settings(db_url: str, sink: SmtpSink, **sections: dict[str, Any]) -> Settings:
    data: dict[str, dict[str, Any]] = {
        "database": {"url": db_url},
        "smtp": {"port": sink.port, "hostname": "mx.example.net"},
        "verify": {"require": "off"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return settings_from_mapping(data)


def retire(store: Store, address: str, now: dt.datetime, **fields: Any) -> None:
    values: dict[str, Any] = {"message": "Alice has left; write to bob@example.com.", "status": "5.1.6"}
    values |= {"timezone": "UTC"} | fields
    assert store.put_retirement(address, now, **values)


@pytest.fixture
def services(store: Store, db_url: str, sink: SmtpSink, clock: FakeClock) -> Iterator[Services]:
    now = clock()
    retire(store, ALICE, now)
    retire(store, "scheduled@example.com", now, starts_at=now + HOUR)
    retire(store, "ended@example.com", now, starts_at=now - HOUR, ends_at=now)
    retire(store, "starts-now@example.com", now, starts_at=now)
    settings = _settings(db_url, sink)
    yield Services(settings, clock=clock, store=store, transport=SmtpTransport(settings.smtp))


def _respond(
    services: Services, raw: bytes, sender: str = BOB, recipient: str = ALICE, original: str = ""
) -> Any:
    return respond(Inbound(Envelope(sender, recipient, original, queue_id="Q1"), raw), services)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_corpus(case: Case, services: Services, sink: SmtpSink) -> None:
    decision = _respond(services, sample(case.sample), case.sender, case.recipient, case.original_recipient)
    assert (decision.action, decision.reason) == (case.action, case.reason), decision.detail
    sent = sink.received()
    assert len(sent) == (1 if case.action == "bounce" else 0)
    if sent:
        assert sent[0].mail_from == "<>"
        assert sent[0].rcpt_tos == [canonical_address(case.sender)]
        assert sent[0].message.get_content_type() == "multipart/report"
    [row] = services.store.decisions()
    assert (row.action, row.reason, row.queue_id) == (case.action, case.reason, "Q1")


def test_every_rule_has_a_bounce_case() -> None:
    from responder.decide.rules import RULES

    covered = {case.reason for case in CASES.values()}
    # interval and rate-limit need several messages (below); unverified needs the gate (test_bounce_hook).
    stateful = {"interval", "rate-limit", "unverified"}
    for_bounces = {rule.reason for rule in RULES if "bounce" in rule.applies_to}
    assert for_bounces - stateful <= covered
    # A DSN has no audiences: it reports on the envelope recipient to whoever sent to it.
    assert {rule.reason for rule in RULES if "bounce" not in rule.applies_to} == {
        "not-addressed",
        "external-audience",
    }


def test_schedule_details(services: Services) -> None:
    scheduled = _respond(services, sample("personal.eml"), recipient="scheduled@example.com")
    assert scheduled.detail.startswith("scheduled@example.com retires 2026-11-27T13:00:00")
    ended = _respond(services, sample("personal.eml"), recipient="ended@example.com")
    assert ended.detail.startswith("retirement of ended@example.com ended 2026-11-27T12:00:00")


def _numbered(number: int, sender: str = BOB) -> bytes:
    header = f"From: {sender}\nTo: {ALICE}\nSubject: n{number}\nMessage-ID: <n{number}@example.org>\n"
    return (header + "\nhi\n").encode()


def test_one_bounce_per_sender_per_interval(services: Services, sink: SmtpSink, clock: FakeClock) -> None:
    assert _respond(services, _numbered(1)).action == "bounce"
    second = _respond(services, _numbered(2))
    assert (second.action, second.reason, second.detail) == (
        "suppress",
        "interval",
        "already bounced within 1d",
    )
    # Another sender is counted apart; BATV and +tag variants of Bob are Bob.
    assert _respond(services, _numbered(3, "carol@example.org"), "carol@example.org").action == "bounce"
    assert _respond(services, _numbered(4), "prvs=1234abcdef=bob+x@example.org").reason == "interval"
    clock.advance(days=1)
    assert _respond(services, _numbered(5)).action == "bounce"
    assert len(sink.wait_for(3)) == 3


def test_interval_zero_bounces_every_message_but_never_a_retry_twice(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    retire(store, ALICE, clock())
    settings = _settings(db_url, sink, bounce={"interval": 0})
    services = Services(settings, clock=clock, store=store, transport=SmtpTransport(settings.smtp))
    assert _respond(services, _numbered(1)).action == "bounce"
    assert _respond(services, _numbered(2)).action == "bounce"
    retry = _respond(services, _numbered(2))
    assert (retry.action, retry.reason) == ("suppress", "interval")
    assert len(sink.wait_for(2)) == 2


def test_purge_forgets_bounce_claims(services: Services, clock: FakeClock) -> None:
    assert _respond(services, _numbered(1)).action == "bounce"
    assert _respond(services, _numbered(2)).reason == "interval"
    done = services.store.purge(clock(), clock() + HOUR, clock() - HOUR)
    assert done.claims == 1
    assert _respond(services, _numbered(3)).action == "bounce"


def test_rate_limits_cover_bounces(store: Store, db_url: str, sink: SmtpSink, clock: FakeClock) -> None:
    retire(store, ALICE, clock())
    retire(store, "carol@example.com", clock())
    settings = _settings(db_url, sink, bounce={"interval": 0}, limits={"per_sender": "1/1d"})
    services = Services(settings, clock=clock, store=store, transport=SmtpTransport(settings.smtp))
    assert _respond(services, _numbered(1)).action == "bounce"
    limited = _respond(services, _numbered(2), recipient="carol@example.com")
    assert (limited.action, limited.reason) == ("drop", "rate-limit")
    assert len(sink.received()) == 1


def test_relay_refusal_drops_and_gives_the_interval_back(services: Services, sink: SmtpSink) -> None:
    sink.rcpt_reply = "550 5.7.1 relaying denied"
    refused = _respond(services, _numbered(1))
    assert (refused.action, refused.reason) == ("drop", "relay-refused")
    sink.rcpt_reply = ""
    assert _respond(services, _numbered(2)).action == "bounce"
    assert len(sink.wait_for(1)) == 1


def test_relay_outage_defers_and_gives_the_claim_back(services: Services, sink: SmtpSink) -> None:
    sink.rcpt_reply = "451 4.3.0 try later"
    with pytest.raises(RelayUnavailable):
        _respond(services, _numbered(1))
    sink.rcpt_reply = ""
    assert _respond(services, _numbered(1)).action == "bounce"
    assert len(sink.wait_for(1)) == 1


def test_dry_run_decides_without_sending_or_claiming(services: Services, sink: SmtpSink) -> None:
    decision = respond(Inbound(Envelope(BOB, ALICE), _numbered(1)), services, dry_run=True)
    assert decision.action == "bounce" and decision.outgoing is not None
    assert decision.outgoing.mail_from == "" and decision.outgoing.rcpt_to == BOB
    assert sink.received() == []
    assert _respond(services, _numbered(1)).action == "bounce"


def test_envelope_recipient_entry_wins_over_the_original(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    now = clock()
    retire(store, "old@example.com", now)
    store.put_vacation("new@example.com", now, None, enabled=True, message="I am away.", timezone="UTC")
    settings = _settings(db_url, sink)
    services = Services(settings, clock=clock, store=store, transport=SmtpTransport(settings.smtp))
    raw = b"From: bob@example.org\nTo: old@example.com, new@example.com\nSubject: s\n\nhi\n"
    assert _respond(services, raw, recipient="new@example.com", original="old@example.com").action == "reply"
    raw2 = raw.replace(b"Subject: s", b"Subject: t")
    decision = _respond(services, raw2, BOB, "old@example.com", "new@example.com")
    assert decision.action == "bounce"


def test_original_recipient_is_reported(services: Services, sink: SmtpSink) -> None:
    raw = b"From: bob@example.org\nTo: team@example.com\nSubject: s\nMessage-ID: <t@x>\n\nhi\n"
    assert _respond(services, raw, recipient=ALICE, original="team@example.com").action == "bounce"
    [received] = sink.wait_for(1)
    _human, [_per_message, per_recipient], _headers = dsn_parts(received.message)
    assert per_recipient["Original-Recipient"] == "rfc822; team@example.com"
    assert per_recipient["Final-Recipient"] == f"rfc822; {ALICE}"


def test_bounce_template_error_drops(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock, tmp_path: Path
) -> None:
    (tmp_path / "broken.txt.j2").write_text("{{ message.__class__.__mro__ }}")
    retire(store, ALICE, clock())
    settings = _settings(
        db_url, sink, bounce={"template": "broken.txt.j2"}, reply={"templates_dir": str(tmp_path)}
    )
    services = Services(settings, clock=clock, store=store, transport=SmtpTransport(settings.smtp))
    decision = _respond(services, _numbered(1))
    assert (decision.action, decision.reason) == ("drop", "template-error")
    assert sink.received() == []
    # The claim was given back: after the template is fixed, the sender still gets the notice.
    (tmp_path / "broken.txt.j2").write_text("{{ recipient }} is gone. {{ message }}\n")
    assert _respond(services, _numbered(1)).action == "bounce"
    [received] = sink.wait_for(1)
    text = dsn_parts(received.message)[0].get_content()
    assert text.splitlines() == [f"{ALICE} is gone. Alice has left; write to bob@example.com."]
