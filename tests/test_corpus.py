"""The sample corpus: one message per behaviour, one table of expected decisions, real store and relay."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from responder.config import Settings, settings_from_mapping
from responder.context import Services
from responder.engine import respond
from responder.message import Envelope, Inbound
from responder.store import Store
from responder.transport import SmtpTransport
from tests.helpers import Case, FakeClock, sample
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
    # list-header
    "list-id": Case("list-id.eml", "suppress", "list-header"),
    "list-unsubscribe": Case("list-unsubscribe.eml", "suppress", "list-header"),
    "mailing-list": Case("mailing-list.eml", "suppress", "list-header"),
    # auto-response-suppress
    "xars-all": Case("x-auto-response-suppress-all.eml", "suppress", "auto-response-suppress"),
    "xars-oof": Case("x-auto-response-suppress-oof.eml", "suppress", "auto-response-suppress"),
    "xars-autoreply-ndr-still-replies": Case("x-auto-response-suppress-autoreply.eml", "reply", None),
    # report
    "dsn": Case("dsn-report.eml", "suppress", "report", sender="postmaster@example.org"),
    "mdn": Case("mdn-report.eml", "suppress", "report", sender="carol@example.org"),
    # loop
    "51-received": Case("loop-many-received.eml", "suppress", "loop"),
    "50-received": Case("fifty-received.eml", "reply", None),
    "loop-marker": Case("loop-marker.eml", "suppress", "loop"),
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
    common = {"enabled": True, "message": "I am away.", "timezone": "UTC"}
    store.put_vacation(ALICE, now, ["alice.alias@example.com"], **common)
    store.put_vacation("starts-now@example.com", now, None, starts_at=now, **common)
    store.put_vacation("ends-now@example.com", now, None, starts_at=now - hour, ends_at=now, **common)
    store.put_vacation("scheduled@example.com", now, None, starts_at=now + hour, **common)
    store.put_vacation("ends-soon@example.com", now, None, ends_at=now + second, **common)
    store.put_vacation("off@example.com", now, None, **{**common, "enabled": False})


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
    sent = sink.wait_for(1, timeout=2 if case.action == "reply" else 0.2)
    assert len(sent) == (1 if case.action == "reply" else 0)
    [row] = services.store.decisions()
    assert (row.action, row.reason, row.queue_id) == (case.action, case.reason, "Q1")


def test_every_rule_has_a_case() -> None:
    from responder.rules import RULES

    covered = {case.reason for case in CASES.values()}
    # Covered elsewhere: interval needs two messages (tests/test_interval.py), unverified a DNS server
    # (tests/test_verify_deliver.py), rate-limit counters (tests/test_limits.py).
    stateful = {"interval", "unverified", "rate-limit"}
    assert {rule.reason for rule in RULES} - stateful <= covered


def test_readme_documents_the_rule_table_in_order() -> None:
    import re

    from responder.rules import EXTRA_REASONS, RULES
    from tests.helpers import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| `([a-z-]+)` \| (\w+) \|", readme, re.MULTILINE)
    assert [(int(n), reason, action) for n, reason, action in rows] == [
        (i, rule.reason, rule.action) for i, rule in enumerate(RULES, start=1)
    ]
    for reason in EXTRA_REASONS:
        assert f"`{reason}`" in readme
