"""The sample corpus: one message per behaviour, one table of expected decisions, real store and relay."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Unpack

import pytest

from responder.config.load import settings_from_mapping
from responder.config.settings import Settings
from responder.decide.context import Services
from responder.decide.engine import respond
from responder.decide.records import VacationChanges
from responder.mail.message import Envelope, Inbound
from responder.smtp.transport import SmtpTransport
from responder.store.database import Store
from tests.helpers import MESSAGES, Case, FakeClock, sample
from tests.sink import SmtpSink

ALICE = "alice@example.com"
BOB = "bob@example.org"


CASES: dict[str, Case] = {
    "personal": Case("personal.eml", "reply", None),
    # null-sender: the three spellings Postfix and Dovecot hand over.
    "null-empty": Case("personal.eml", "suppress", "null-sender", sender=""),
    "null-brackets": Case("personal.eml", "suppress", "null-sender", sender="<>"),
    "null-mailer-daemon": Case("personal.eml", "suppress", "null-sender", sender="MAILER-DAEMON"),
    # malformed
    "sender-not-an-address": Case("personal.eml", "suppress", "malformed", sender="bob at example.org"),
    "sender-bad-domain": Case("personal.eml", "suppress", "malformed", sender="bob@exa mple.org"),
    "sender-injection": Case("personal.eml", "suppress", "malformed", sender="bob@example.org\r\nBcc: x@y.z"),
    "recipient-invalid": Case("personal.eml", "suppress", "malformed", recipient="alice"),
    "garbage-bytes": Case("garbage.bin", "suppress", "malformed"),
    "empty-input": Case("empty.eml", "suppress", "malformed"),
    # system-sender
    "mailer-daemon-at-domain": Case(
        "personal.eml", "suppress", "system-sender", sender="MAILER-DAEMON@example.org"
    ),
    "owner-prefix": Case(
        "list-manager-sender.eml", "suppress", "system-sender", sender="owner-team@example.org"
    ),
    "request-suffix": Case(
        "list-manager-sender.eml", "suppress", "system-sender", sender="team-request@example.org"
    ),
    "bounces-verp": Case(
        "list-manager-sender.eml",
        "suppress",
        "system-sender",
        sender="team-bounces+alice=example.com@example.org",
    ),
    "listserv": Case("list-manager-sender.eml", "suppress", "system-sender", sender="LISTSERV@example.org"),
    "majordomo": Case("list-manager-sender.eml", "suppress", "system-sender", sender="majordomo@example.org"),
    "noreply": Case("list-manager-sender.eml", "suppress", "system-sender", sender="no-reply@example.org"),
    "donotreply": Case(
        "list-manager-sender.eml", "suppress", "system-sender", sender="DoNotReply@example.org"
    ),
    "noreply-batv": Case(
        "list-manager-sender.eml", "suppress", "system-sender", sender="prvs=1234abcdef=noreply@example.org"
    ),
    "noreply-through-srs": Case(
        "list-manager-sender.eml",
        "suppress",
        "system-sender",
        sender="SRS0=HHH=TT=example.net=no-reply@forwarder.example",
    ),
    "owner-in-middle-is-human": Case("personal.eml", "reply", None, sender="homeowner@example.org"),
    "postmaster": Case("personal.eml", "suppress", "system-sender", sender="Postmaster@example.org"),
    "list-plus-owner": Case(
        "list-manager-sender.eml", "suppress", "system-sender", sender="team+owner@example.org"
    ),
    "list-plus-bounces": Case(
        "list-manager-sender.eml",
        "suppress",
        "system-sender",
        sender="team+bounces-4711-alice=example.com@example.org",
    ),
    # auto-submitted
    "auto-replied": Case("auto-submitted-auto-replied.eml", "suppress", "auto-submitted"),
    "auto-generated-with-comment": Case(
        "auto-submitted-auto-generated-comment.eml", "suppress", "auto-submitted"
    ),
    "auto-submitted-unknown-value": Case("auto-submitted-x-custom.eml", "suppress", "auto-submitted"),
    "auto-submitted-no": Case("auto-submitted-no.eml", "reply", None),
    # precedence
    "precedence-bulk": Case("precedence-bulk.eml", "suppress", "precedence"),
    "precedence-junk": Case("precedence-junk.eml", "suppress", "precedence"),
    "precedence-list": Case("precedence-list.eml", "suppress", "precedence"),
    "precedence-first-class": Case("precedence-first-class.eml", "reply", None),
    "precedence-auto-reply": Case("precedence-auto-reply.eml", "suppress", "precedence"),
    # autoreply-header
    "x-autoreply": Case("x-autoreply-yes.eml", "suppress", "autoreply-header"),
    "x-autorespond": Case("x-autorespond.eml", "suppress", "autoreply-header"),
    "x-autoreply-no": Case("x-autoreply-no.eml", "reply", None),
    # list-header
    "list-id": Case("list-id.eml", "suppress", "list-header"),
    "list-unsubscribe": Case("list-unsubscribe.eml", "suppress", "list-header"),
    "mailing-list": Case("mailing-list.eml", "suppress", "list-header"),
    "obsolete-syntax-list-id": Case("obsolete-list-id.eml", "suppress", "list-header"),
    # auto-response-suppress
    "xars-all": Case("x-auto-response-suppress-all.eml", "suppress", "auto-response-suppress"),
    "xars-oof": Case("x-auto-response-suppress-oof.eml", "suppress", "auto-response-suppress"),
    "xars-autoreply-ndr-still-replies": Case("x-auto-response-suppress-autoreply.eml", "reply", None),
    # report
    "dsn": Case("dsn-report.eml", "suppress", "report"),
    "mdn": Case("mdn-report.eml", "suppress", "report", sender="carol@example.org"),
    "delivery-status-in-mixed": Case("report-part-in-mixed.eml", "suppress", "report"),
    "feedback-report-in-mixed": Case("feedback-report-in-mixed.eml", "suppress", "report"),
    "report-type-on-mixed": Case("report-type-on-mixed.eml", "suppress", "report"),
    # bounce-heuristic: a bounce's words need a robot sender or the returned message
    "bounce-from-sysadmin": Case(
        "bounce-from-sysadmin.eml", "suppress", "bounce-heuristic", sender="sysadmin@example.org"
    ),
    "bounce-text-with-returned-header": Case(
        "bounce-text-with-returned-header.eml", "suppress", "bounce-heuristic"
    ),
    "person-writes-undeliverable": Case("person-writes-undeliverable.eml", "reply", None),
    "reply-to-a-bounce": Case("reply-to-a-bounce.eml", "reply", None),
    # loop
    "51-received": Case("loop-many-received.eml", "suppress", "loop"),
    "50-received": Case("fifty-received.eml", "reply", None),
    "loop-marker": Case("loop-marker.eml", "suppress", "loop"),
    "x-loop-names-recipient": Case("x-loop-recipient.eml", "suppress", "loop"),
    "x-loop-names-someone-else": Case("x-loop-other-address.eml", "reply", None),
    "exchange-inbox-rules-loop": Case("exchange-inbox-rules-loop.eml", "suppress", "loop"),
    # no-vacation, and the edges of a schedule
    "no-vacation": Case("schedule-recipients.eml", "suppress", "no-vacation", recipient="nobody@example.com"),
    "vacation-off": Case("schedule-recipients.eml", "suppress", "no-vacation", recipient="off@example.com"),
    "starts-in-an-hour": Case(
        "schedule-recipients.eml", "suppress", "no-vacation", recipient="scheduled@example.com"
    ),
    "starts-now": Case("schedule-recipients.eml", "reply", None, recipient="starts-now@example.com"),
    "ends-now": Case("schedule-recipients.eml", "suppress", "no-vacation", recipient="ends-now@example.com"),
    "ends-in-a-second": Case("schedule-recipients.eml", "reply", None, recipient="ends-soon@example.com"),
    "original-recipient-has-vacation": Case(
        "personal.eml", "reply", None, recipient="alice@mailbox.internal", original_recipient=ALICE
    ),
    # own-address
    "sender-is-recipient": Case("personal.eml", "suppress", "own-address", sender="Alice@Example.COM"),
    "sender-is-alias": Case("personal.eml", "suppress", "own-address", sender="alice.alias@example.com"),
    # not-addressed
    "bcc-via-list": Case("bcc-via-list.eml", "suppress", "not-addressed"),
    # A group alias expanded to a vacationing member: the alias is no address of the member's.
    "to-group-alias": Case(
        "group-alias-to-all.eml", "suppress", "not-addressed", original_recipient="all@example.com"
    ),
    "cc-alias-mixed-case": Case("cc-alias.eml", "reply", None),
    "encoded-display-name": Case("to-encoded-display-name.eml", "reply", None),
    "resent-to": Case("resent-to.eml", "reply", None),
    # odd but personal messages still get their reply
    "8bit-subject": Case("subject-non-ascii-8bit.eml", "reply", None),
    "subject-injection": Case("subject-injection.eml", "reply", None),
    "no-subject-no-message-id": Case("no-subject-no-message-id.eml", "reply", None),
    "broken-mime": Case("broken-mime.eml", "reply", None),
    "headers-only-crlf": Case("header-only.eml", "reply", None),
    # routed-sender: every spelling that MTAs route on to victim@victim.example, and the one that is not
    "routed-quoted-at": Case(
        "personal.eml", "suppress", "routed-sender", sender='"victim@victim.example"@mx.example.net'
    ),
    "routed-escaped-at": Case(
        "personal.eml", "suppress", "routed-sender", sender='"victim\\@victim.example"@mx.example.net'
    ),
    "routed-unquoted-at": Case(
        "personal.eml", "suppress", "malformed", sender="victim@victim.example@mx.example.net"
    ),
    "routed-percent": Case(
        "personal.eml", "suppress", "routed-sender", sender="victim%victim.example@mx.example.net"
    ),
    "routed-quoted-percent": Case(
        "personal.eml", "suppress", "routed-sender", sender='"victim%victim.example"@mx.example.net'
    ),
    "routed-bang": Case(
        "personal.eml", "suppress", "routed-sender", sender="victim.example!victim@mx.example.net"
    ),
    "routed-source-route": Case(
        "personal.eml", "suppress", "malformed", sender="<@mx.example.net:victim@victim.example>"
    ),
    "routed-through-srs": Case(
        "personal.eml",
        "suppress",
        "routed-sender",
        sender="SRS0=HH=TT=mx.example.net=victim%victim.example@fwd.example",
    ),
    "quoted-but-plain-sender": Case("personal.eml", "reply", None, sender='"bob"@example.org'),
    # crafted input that once ended in internal-error: each is an ordinary decision
    "subject-utf16-lone-surrogate": Case("subject-utf16-lone-surrogate.eml", "reply", None),
    "subject-raw-unicode-escape": Case("subject-raw-unicode-escape.eml", "reply", None),
    "display-name-lone-surrogate": Case("display-name-lone-surrogate.eml", "reply", None),
    "display-name-10000-characters": Case("display-name-10000.eml", "reply", None),
    "sender-domain-trailing-dot": Case("personal.eml", "reply", None, sender="bob@example.org."),
    "sender-invalid-utf8": Case("personal.eml", "suppress", "malformed", sender="b\udcffob@example.org"),
    "sender-quoted-invalid-utf8": Case(
        "personal.eml", "suppress", "malformed", sender='"b\udcffob"@example.org'
    ),
    "recipient-invalid-utf8": Case(
        "personal.eml", "suppress", "malformed", recipient="alice\udcff@example.com"
    ),
}


# Real bounces and auto-replies (tests/messages/SOURCES.md), each with the reason that suppresses it
# when it arrives with the envelope sender its From names, as broken or forwarding systems send them.
AUTOMATED: dict[str, str] = {
    "activehunter-failure-notice.eml": "system-sender",
    "amavis-undeliverable-mta-blocked.eml": "system-sender",
    "apachejames-reply-subject-bounce.eml": "system-sender",
    "aol-automatic-response.eml": "auto-submitted",
    "bigfoot-returned-mail-partial.eml": "system-sender",
    "domino-delivery-failure.eml": "system-sender",
    "e500-returned-mail.eml": "bounce-heuristic",
    "earthlink-failure-notice.eml": "system-sender",
    "exchange-cdo-non-delivery-report.eml": "bounce-heuristic",
    "exchange-oof-return-path-null.eml": "null-return-path",
    "exchange-smtpsvc-dsn-failure.eml": "system-sender",
    "exchange2003-return-path-null.eml": "system-sender",
    "exchange55-ims-undeliverable.eml": "system-sender",
    "exim-auto-generated-bounce.eml": "system-sender",
    "exim-delay-warning.eml": "system-sender",
    "exim-failed-recipients.eml": "system-sender",
    "googlemail-dsn-failure.eml": "system-sender",
    "hotpop-undelivered-mail-returned.eml": "system-sender",
    "interscan-imss-could-not-be-delivered.eml": "bounce-heuristic",
    "interscan-mail-could-not-be-delivered.eml": "bounce-heuristic",
    "kundenserver-mail-delivery-failed.eml": "system-sender",
    "kundenserver-precedence-bulk-bounce.eml": "system-sender",
    "llnl-failed-mail.eml": "system-sender",
    "lotus-smtp-undeliverable-message.eml": "system-sender",
    "lsmtp-undelivered-mail.eml": "system-sender",
    "mail-delivery-system-dsn.eml": "null-return-path",
    "mailsweeper-undeliverable-mail.eml": "system-sender",
    "mdaemon-permanent-delivery-failure.eml": "bounce-heuristic",
    "netscape-mail-system-error.eml": "system-sender",
    "newmailru-failure-notice.eml": "system-sender",
    "prodigy-returned-mail.eml": "system-sender",
    "qmail-failure-notice.eml": "system-sender",
    "postfix-undelivered-mail-returned.eml": "system-sender",
    "qmail-multipart-failure-notice.eml": "system-sender",
    "sbcglobal-delivery-failure.eml": "system-sender",
    "sendmail-too-many-hops.eml": "system-sender",
    "sina-8bit-failure.eml": "system-sender",
    "smail-mail-failed.eml": "system-sender",
    "smtp32-undeliverable-mail.eml": "system-sender",
    "usanet-processing-error.eml": "system-sender",
    "yahoo-qmail-failure-delivery.eml": "system-sender",
    "zimbra-vacation-reply.eml": "auto-submitted",
}
# Real personal messages: every one is answered, whatever it quotes, forwards or attaches.
PERSONAL = sorted(path.name for path in (MESSAGES / "personal").glob("*.eml"))


def _from_address(raw: bytes) -> str:
    from email.utils import parseaddr

    inbound = Inbound(Envelope("", ALICE), raw)
    return parseaddr(inbound.first("From") or "")[1]


def test_every_real_sample_has_a_row() -> None:
    assert sorted(AUTOMATED) == sorted(path.name for path in (MESSAGES / "automated").glob("*.eml"))
    assert len(PERSONAL) >= 15
    sources = (MESSAGES / "SOURCES.md").read_text(encoding="utf-8")
    for name in [*AUTOMATED, *PERSONAL]:
        assert f"| {name} |" in sources, f"{name} has no row in SOURCES.md"


@pytest.mark.parametrize(("name", "reason"), AUTOMATED.items(), ids=AUTOMATED.keys())
def test_real_automated_mail_is_suppressed_even_with_a_real_sender(
    name: str, reason: str, services: Services, sink: SmtpSink
) -> None:
    raw = (MESSAGES / "automated" / name).read_bytes()
    sender = _from_address(raw)
    assert sender, "the sample names its sender in From"
    decision = respond(Inbound(Envelope(sender, ALICE, queue_id="Q1"), raw), services)
    assert (decision.action, decision.reason) == ("suppress", reason), decision.detail
    # The sink records a message before it answers 250: nothing there now means nothing was sent.
    assert sink.received() == []


@pytest.mark.parametrize("name", PERSONAL)
def test_real_personal_mail_is_answered(name: str, services: Services, sink: SmtpSink) -> None:
    raw = (MESSAGES / "personal" / name).read_bytes()
    decision = respond(Inbound(Envelope(_from_address(raw), ALICE, queue_id="Q1"), raw), services)
    assert (decision.action, decision.reason) == ("reply", None), decision.detail
    assert len(sink.wait_for(1, timeout=5)) == 1


def _settings(db_url: str, sink: SmtpSink) -> Settings:
    return settings_from_mapping(
        {
            "database": {"url": db_url},
            "smtp": {"port": sink.port, "hostname": "mx.example.net"},
            "verify": {"require": "off"},
        }
    )


def _vacations(store: Store, now: dt.datetime) -> None:
    hour, second = dt.timedelta(hours=1), dt.timedelta(seconds=1)

    def put(address: str, aliases: list[str] | None = None, **changes: Unpack[VacationChanges]) -> None:
        values: VacationChanges = {"enabled": True, "message": "I am away.", "timezone": "UTC"}
        values.update(changes)
        store.put_vacation(address, now, aliases, **values)

    put(ALICE, ["alice.alias@example.com"])
    put("starts-now@example.com", starts_at=now)
    put("ends-now@example.com", starts_at=now - hour, ends_at=now)
    put("scheduled@example.com", starts_at=now + hour)
    put("ends-soon@example.com", ends_at=now + second)
    put("off@example.com", enabled=False)


@pytest.fixture
def services(store: Store, db_url: str, sink: SmtpSink, clock: FakeClock) -> Iterator[Services]:
    settings = _settings(db_url, sink)
    _vacations(store, clock())
    yield Services(settings, clock=clock, store=store, transport=SmtpTransport(settings.smtp))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_corpus(case: Case, services: Services, sink: SmtpSink) -> None:
    envelope = Envelope(case.sender, case.recipient, case.original_recipient, queue_id="Q1")
    decision = respond(Inbound(envelope, sample(case.sample)), services)
    assert (decision.action, decision.reason) == (case.action, case.reason), decision.detail
    sent = sink.received()
    assert len(sent) == (1 if case.action == "reply" else 0)
    [row] = services.store.decisions()
    assert (row.action, row.reason, row.queue_id) == (case.action, case.reason, "Q1")


def test_every_rule_has_a_case() -> None:
    from responder.decide.rules import RULES
    from tests.test_content_corpus import ROWS

    covered = {case.reason for case in CASES.values()} | set(AUTOMATED.values())
    covered |= {row.reason for row in ROWS.values()}
    # Covered elsewhere: interval needs two messages (tests/test_interval.py), unverified a DNS server
    # (tests/test_verify_deliver.py), rate-limit counters (tests/test_limits.py).
    stateful = {"interval", "unverified", "rate-limit"}
    assert {rule.reason for rule in RULES} - stateful <= covered


def test_readme_documents_the_rule_table_in_order() -> None:
    import re

    from responder.decide.rules import EXTRA_REASONS, RULES
    from tests.helpers import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| `([a-z-]+)` \| (\w+) \|", readme, re.MULTILINE)
    assert [(int(n), reason, action) for n, reason, action in rows] == [
        (i, rule.reason, rule.action) for i, rule in enumerate(RULES, start=1)
    ]
    for reason in EXTRA_REASONS:
        assert f"`{reason}`" in readme
