"""Spellings of one return path: one sender for intervals, the reply to its plain form, no routing."""

from __future__ import annotations

import pytest

from responder.config.load import settings_from_mapping
from responder.decide.context import Services
from responder.decide.engine import respond
from responder.mail.message import Envelope, Inbound
from responder.smtp.transport import SmtpTransport
from responder.store.database import Store
from tests.helpers import FakeClock, sample
from tests.sink import SmtpSink

ALICE = "alice@example.com"


@pytest.fixture
def services(store: Store, db_url: str, sink: SmtpSink, clock: FakeClock) -> Services:
    settings = settings_from_mapping(
        {"database": {"url": db_url}, "smtp": {"port": sink.port}, "verify": {"require": "off"}}
    )
    store.put_vacation(ALICE, clock(), None, enabled=True, message="away", timezone="UTC")
    return Services(settings, clock=clock, store=store, transport=SmtpTransport(settings.smtp))


def _decide(services: Services, sender: str, number: int) -> tuple[str, str | None]:
    raw = sample("personal.eml").replace(b"<abc123@", f"<spelling{number}@".encode())
    decision = respond(Inbound(Envelope(sender, ALICE), raw), services)
    return decision.action, decision.reason


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ('"bob"@example.org', "bob@example.org"),
        ('"B\\ob"@Example.org', "Bob@Example.org"),
        ("<bob@example.org.>", "bob@example.org"),
    ],
)
def test_a_needless_spelling_is_answered_at_the_plain_address(
    services: Services, sink: SmtpSink, spelling: str, canonical: str
) -> None:
    assert _decide(services, spelling, 1) == ("reply", None)
    [sent] = sink.wait_for(1)
    assert sent.rcpt_tos == [canonical]
    assert sent.message["To"].addresses[0].addr_spec == canonical


def test_quoted_and_plain_spellings_share_one_interval(services: Services, sink: SmtpSink) -> None:
    assert _decide(services, '"bob"@example.org', 1) == ("reply", None)
    assert _decide(services, "bob@example.org", 2) == ("suppress", "interval")
    assert _decide(services, '"Bob"@EXAMPLE.org.', 3) == ("suppress", "interval")
    assert len(sink.wait_for(1)) == 1


def test_four_routed_spellings_send_nothing(services: Services, sink: SmtpSink) -> None:
    spellings = [
        '"victim@victim.example"@mx.example.net',
        "victim%victim.example@mx.example.net",
        "victim.example!victim@mx.example.net",
        "victim@victim.example@mx.example.net",
    ]
    decisions = [_decide(services, sender, n)[0] for n, sender in enumerate(spellings)]
    assert decisions == ["suppress"] * 4
    assert sink.messages == []
