"""Audiences and languages as corpus rows: one message per behaviour, real store, DNS, verifier and relay."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from responder.config.load import settings_from_mapping
from responder.decide.context import Services
from responder.decide.engine import respond
from responder.decide.records import EXTERNAL, INTERNAL, Translation
from responder.mail.message import Envelope, Inbound
from responder.smtp.transport import SmtpTransport
from responder.store.database import Store
from tests.dnsserver import DNSServer
from tests.helpers import MESSAGES, FakeClock
from tests.sink import SmtpSink

CONTENT = MESSAGES / "content"
GOOD_IP = "192.0.2.10"
FORGED_IP = "203.0.113.66"
CAROL = "carol@example.com"
BOB = "bob@partner.example"


@dataclass(frozen=True)
class Row:
    """A sample, its envelope, and the decision: action, reason, audience, language, reply subject."""

    sample: str
    sender: str
    action: str
    reason: str | None
    audience: str | None = None
    language: str | None = None
    subject: str | None = None
    client: str = ""
    recipient: str = "alice@example.com"


ROWS: dict[str, Row] = {
    # Audiences: the internal message only to a verified sender of an internal domain.
    "internal-verified-by-trusted-authres": Row(
        "internal-authres-pass.eml", CAROL, "reply", None, "internal", "en", "Away (internal)"
    ),
    "internal-verified-by-spf": Row(
        "internal-no-authres.eml", CAROL, "reply", None, "internal", "en", "Away (internal)", GOOD_IP
    ),
    "internal-forged-spf-fail": Row(
        "internal-no-authres.eml", CAROL, "reply", None, "external", "en", "Out of office", FORGED_IP
    ),
    "internal-untrusted-authres": Row(
        "internal-authres-untrusted.eml", CAROL, "reply", None, "external", "en", "Out of office", FORGED_IP
    ),
    "external-sender": Row("external-plain.eml", BOB, "reply", None, "external", "en", "Out of office"),
    "subdomain-of-dot-entry": Row(
        "subdomain-dot-entry.eml", "dan@lab.corp.example", "reply", None, "internal", "en", "Away (internal)"
    ),
    "subdomain-not-listed": Row(
        "subdomain-not-listed.eml", "erin@lab.example.com", "reply", None, "external", "en", "Out of office"
    ),
    # external audience none
    "closed-external-sender": Row(
        "external-plain.eml", BOB, "suppress", "external-audience", recipient="closed@example.com"
    ),
    "closed-forged-internal": Row(
        "internal-no-authres.eml",
        CAROL,
        "suppress",
        "external-audience",
        client=FORGED_IP,
        recipient="closed@example.com",
    ),
    "closed-verified-internal": Row(
        "internal-authres-pass.eml",
        CAROL,
        "reply",
        None,
        "internal",
        "default",
        "Closed (internal)",
        recipient="closed@example.com",
    ),
    # No external message: everyone gets the one message, and no DNS question is asked for it.
    "no-external-message": Row(
        "internal-no-authres.eml",
        CAROL,
        "reply",
        None,
        "internal",
        "default",
        "Plain away",
        FORGED_IP,
        recipient="plain@example.com",
    ),
    # Languages: Accept-Language, then Content-Language, then the default, by RFC 4647 lookup.
    "accept-language-truncated": Row(
        "accept-language-de-ch.eml", BOB, "reply", None, "external", "de", "Abwesend"
    ),
    "accept-language-q-values": Row(
        "accept-language-q-order.eml", BOB, "reply", None, "external", "fr", "Absent"
    ),
    "accept-language-none-available": Row(
        "accept-language-unavailable.eml", BOB, "reply", None, "external", "en", "Out of office"
    ),
    "accept-language-q-zero-excluded": Row(
        "accept-language-q-zero.eml", BOB, "reply", None, "external", "fr", "Absent"
    ),
    "accept-language-malformed-entries-skipped": Row(
        "accept-language-malformed.eml", BOB, "reply", None, "external", "fr", "Absent"
    ),
    "content-language": Row("content-language-fr.eml", BOB, "reply", None, "external", "fr", "Absent"),
    "accept-before-content-language": Row(
        "accept-over-content-language.eml", BOB, "reply", None, "external", "de", "Abwesend"
    ),
    "internal-in-german": Row(
        "internal-authres-accept-de.eml", CAROL, "reply", None, "internal", "de", "Abwesend (intern)"
    ),
    # The internal message has no French: the internal default, never the external French text.
    "internal-language-missing": Row(
        "internal-authres-accept-fr.eml", CAROL, "reply", None, "internal", "en", "Away (internal)"
    ),
}

TEXTS = {
    ("internal", "en"): "Internal: call Bob on 1234.",
    ("internal", "de"): "Intern: Bob unter 1234 anrufen.",
    ("external", "en"): "I am out of the office.",
    ("external", "de"): "Ich bin nicht im Büro.",
    ("external", "fr"): "Je suis absente.",
}


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add_txt("example.com", f"v=spf1 ip4:{GOOD_IP} -all")
        yield server


def put_vacations(store: Store, now: dt.datetime) -> None:
    store.put_vacation(
        "alice@example.com",
        now,
        None,
        [
            Translation(INTERNAL, "de", "Abwesend (intern)", TEXTS[("internal", "de")], None),
            Translation(EXTERNAL, "de", "Abwesend", TEXTS[("external", "de")], None),
            Translation(EXTERNAL, "fr", "Absent", TEXTS[("external", "fr")], None),
        ],
        enabled=True,
        message=TEXTS[("internal", "en")],
        subject="Away (internal)",
        external_subject="Out of office",
        external_message=TEXTS[("external", "en")],
        default_language="en",
        timezone="UTC",
    )
    store.put_vacation(
        "closed@example.com",
        now,
        None,
        enabled=True,
        message="Closed.",
        subject="Closed (internal)",
        external_audience="none",
        timezone="UTC",
    )
    store.put_vacation(
        "plain@example.com", now, None, enabled=True, message="Away.", subject="Plain away", timezone="UTC"
    )


@pytest.fixture
def services(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock, dns_server: DNSServer
) -> Iterator[Services]:
    settings = settings_from_mapping(
        {
            "database": {"url": db_url},
            "smtp": {"port": sink.port, "hostname": "mx.example.net"},
            "verify": {
                "require": "off",
                "dns_servers": [dns_server.address],
                "dns_timeout": "1s",
                "budget": "3s",
                "trusted_authserv_ids": ["mx.example.com"],
            },
            "reply": {"internal_domains": ["example.com", ".corp.example"]},
        }
    )
    put_vacations(store, clock())
    yield Services(settings, clock=clock, store=store, transport=SmtpTransport(settings.smtp))


def deliver(
    services: Services, row: Row, sample: str | None = None, number: int = 1
) -> tuple[str, str | None, str]:
    raw = (
        (CONTENT / (sample or row.sample))
        .read_bytes()
        .replace(b"@example.net>", f"-{number}@example.net>".encode())
    )
    # The samples are written to Alice; the other vacations get them addressed to themselves.
    raw = raw.replace(b"To: Alice <alice@example.com>", f"To: <{row.recipient}>".encode())
    envelope = Envelope(
        row.sender, row.recipient, queue_id="Q1", client_address=row.client, helo="mail.example"
    )
    decision = respond(Inbound(envelope, raw), services)
    return decision.action, decision.reason, decision.detail


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_content_corpus(row: Row, services: Services, sink: SmtpSink, dns_server: DNSServer) -> None:
    action, reason, detail = deliver(services, row)
    assert (action, reason) == (row.action, row.reason), detail
    [audited] = services.store.decisions()
    assert (audited.action, audited.reason) == (row.action, row.reason)
    if row.action != "reply":
        assert sink.received() == []
        return
    assert f"audience={row.audience}(" in audited.detail
    assert f"language={row.language}(" in audited.detail
    [sent] = sink.wait_for(1, timeout=5)
    reply = parsed(sent.data)
    assert reply["Subject"] == row.subject
    assert reply.get("Content-Language") == (None if row.language == "default" else row.language)
    body = reply.get_body(("plain",))
    assert body is not None
    if (str(row.audience), str(row.language)) in TEXTS and row.recipient == "alice@example.com":
        assert TEXTS[(str(row.audience), str(row.language))] in body.get_content()
    if row.sample == "external-plain.eml" or row.recipient == "plain@example.com":
        assert dns_server.queries == []  # no internal sender, or nothing to choose: no verification


def test_every_sample_has_a_row() -> None:
    used = {row.sample for row in ROWS.values()}
    assert used == {path.name for path in CONTENT.glob("*.eml")}


def test_the_interval_counts_per_audience(services: Services, sink: SmtpSink) -> None:
    forged = Row("internal-no-authres.eml", CAROL, "reply", None, client=FORGED_IP)
    verified = Row("internal-no-authres.eml", CAROL, "reply", None, client=GOOD_IP)
    outcomes = [
        deliver(services, forged, number=1)[:2],  # external reply
        deliver(services, verified, number=2)[:2],  # internal reply: its own interval
        deliver(services, verified, number=3)[:2],
        deliver(services, forged, number=4)[:2],
    ]
    assert outcomes == [("reply", None), ("reply", None), ("suppress", "interval"), ("suppress", "interval")]
    subjects = [parsed(m.data)["Subject"] for m in sink.wait_for(2, timeout=5)]
    assert subjects == ["Out of office", "Away (internal)"]
    details = [row.detail for row in services.store.decisions()]
    assert any("audience=internal(" in d and "already answered" in d for d in details)
    assert any("audience=external(" in d and "already answered" in d for d in details)


def test_internal_domains_and_their_subdomains() -> None:
    from responder.decide.audience import internal_domain

    listed = settings_from_mapping({"reply": {"internal_domains": ["Example.COM.", ".corp.example"]}}).reply
    assert listed.internal_domains == ("example.com", ".corp.example")
    found = {
        d: internal_domain(d, listed)
        for d in ("example.com", "a.example.com", "corp.example", "x.corp.example")
    }
    assert found == {
        "example.com": True,
        "a.example.com": False,
        "corp.example": False,
        "x.corp.example": True,
    }
    wide = settings_from_mapping(
        {"reply": {"internal_domains": ["example.com"], "internal_subdomains": True}}
    ).reply
    assert internal_domain("a.b.example.com", wide) and not internal_domain("badexample.com", wide)


@pytest.mark.parametrize("value", [["alice@example.com"], ["exa..mple.com"], [""], "example.com"])
def test_bad_internal_domains_are_a_config_error(value: object) -> None:
    from responder.config.load import ConfigError

    with pytest.raises(ConfigError, match="internal_domains"):
        settings_from_mapping({"reply": {"internal_domains": value}})
