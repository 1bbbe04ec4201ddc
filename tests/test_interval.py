"""One reply per sender per interval, claimed atomically and given back when sending fails."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from responder.config.load import settings_from_mapping
from responder.decide.context import Services
from responder.decide.engine import respond
from responder.errors import RelayUnavailable
from responder.mail.message import Envelope, Inbound
from responder.smtp.transport import SmtpTransport
from responder.store.database import PENDING, REPLIES, TAKEN, WON, ClaimRequest, Store
from tests.helpers import FakeClock
from tests.sink import SmtpSink

ALICE = "alice@example.com"


def _message(number: int, sender: str = "bob@example.org") -> bytes:
    return (
        f"From: {sender}\nTo: {ALICE}\nSubject: note {number}\nMessage-ID: <m{number}@example.org>\n\nhello\n"
    ).encode()


def _services(store: Store, db_url: str, sink: SmtpSink, clock: FakeClock, **reply: object) -> Services:
    settings = settings_from_mapping(
        {
            "database": {"url": db_url},
            "smtp": {"port": sink.port},
            "reply": reply,
            "verify": {"require": "off"},
        }
    )
    return Services(settings, clock=clock, store=store, transport=SmtpTransport(settings.smtp))


def _decide(services: Services, number: int, sender: str = "bob@example.org") -> tuple[str, str | None]:
    decision = respond(Inbound(Envelope(sender, ALICE), _message(number, sender)), services)
    return decision.action, decision.reason


def _vacation(store: Store, clock: FakeClock, interval: int | None = None) -> None:
    store.put_vacation(
        ALICE, clock(), None, enabled=True, message="away", timezone="UTC", interval_seconds=interval
    )


def test_default_interval_is_seven_days(store: Store, db_url: str, sink: SmtpSink, clock: FakeClock) -> None:
    services = _services(store, db_url, sink, clock)
    _vacation(store, clock)
    assert _decide(services, 1) == ("reply", None)
    clock.advance(days=6, hours=23, minutes=59)
    assert _decide(services, 2) == ("suppress", "interval")
    clock.advance(minutes=1)
    assert _decide(services, 3) == ("reply", None)
    assert len(sink.wait_for(2)) == 2


def test_interval_is_per_sender_and_ignores_case(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    services = _services(store, db_url, sink, clock)
    _vacation(store, clock)
    assert _decide(services, 1, "bob@example.org") == ("reply", None)
    assert _decide(services, 2, "Bob@EXAMPLE.org") == ("suppress", "interval")
    assert _decide(services, 3, "carol@example.org") == ("reply", None)


@pytest.mark.parametrize(
    ("configured", "minimum", "maximum", "effective"),
    [
        (3600, "1d", "60d", dt.timedelta(days=1)),  # below the minimum: clamped up
        (90 * 86400, "1d", "60d", dt.timedelta(days=60)),  # above the maximum: clamped down
        (2 * 86400, "1d", "60d", dt.timedelta(days=2)),
        (None, "1d", "60d", dt.timedelta(days=7)),
    ],
)
def test_interval_is_clamped(
    configured: int | None,
    minimum: str,
    maximum: str,
    effective: dt.timedelta,
    store: Store,
    db_url: str,
    sink: SmtpSink,
    clock: FakeClock,
) -> None:
    services = _services(store, db_url, sink, clock, min_interval=minimum, max_interval=maximum)
    _vacation(store, clock, configured)
    assert _decide(services, 1) == ("reply", None)
    clock.advance(seconds=effective.total_seconds() - 1)
    assert _decide(services, 2) == ("suppress", "interval")
    clock.advance(seconds=1)
    assert _decide(services, 3) == ("reply", None)


def test_zero_interval_answers_every_message_but_never_a_retry(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    services = _services(store, db_url, sink, clock, min_interval="0s")
    _vacation(store, clock, 0)
    assert _decide(services, 1) == ("reply", None)
    assert _decide(services, 1) == ("suppress", "interval")  # the MTA retried the same message
    assert _decide(services, 2) == ("reply", None)
    assert len(sink.wait_for(2)) == 2


def test_transient_failure_gives_the_claim_back(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    services = _services(store, db_url, sink, clock)
    _vacation(store, clock)
    sink.rcpt_reply = "451 4.3.0 try again later"
    with pytest.raises(RelayUnavailable):
        _decide(services, 1)
    assert store.last_claim(REPLIES, store.list_vacations()[0].id, "bob@example.org") is None
    sink.rcpt_reply = ""
    clock.advance(minutes=5)
    assert _decide(services, 1) == ("reply", None)  # the MTA's retry still answers
    assert _decide(services, 1) == ("suppress", "interval")


@pytest.mark.parametrize(
    "rcpt_reply",
    ["554 5.7.1 <bob@example.org>: Relay access denied", "550 5.1.1 <bob@example.org>: no such user"],
    ids=["setup-fault", "recipient-refused"],
)
def test_permanent_refusal_gives_the_claim_back(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock, rcpt_reply: str
) -> None:
    """Nothing went out, so nothing is used up: neither the interval nor the rate-limit counts."""
    services = _services(store, db_url, sink, clock)
    _vacation(store, clock)
    sink.rcpt_reply = rcpt_reply
    assert _decide(services, 1) == ("drop", "relay-refused")
    assert store.last_claim(REPLIES, store.list_vacations()[0].id, "bob@example.org") is None
    sink.rcpt_reply = ""
    assert _decide(services, 2) == ("reply", None)
    assert len(sink.wait_for(1)) == 1


def test_dead_attempt_of_the_same_message_can_be_taken_over(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    """A hook killed between claim and send leaves a pending claim; the MTA's retry may answer."""
    _vacation(store, clock)
    vacation_id = store.list_vacations()[0].id
    interval, stale = dt.timedelta(days=7), dt.timedelta(seconds=180)
    key = "bob@example.org"

    def claim(message: str, token: str) -> str:
        return store.claim(ClaimRequest(REPLIES, vacation_id, key, message, clock(), interval, stale, token))

    assert claim("<m1@example.org>", "a" * 32) == WON
    assert claim("<m1@example.org>", "b" * 32) == PENDING
    clock.advance(seconds=181)
    assert claim("<m1@example.org>", "c" * 32) == WON
    store.confirm_claim(REPLIES, vacation_id, key, "a" * 32)  # the dead attempt's token: no effect
    assert claim("<m2@example.org>", "d" * 32) == PENDING
    store.confirm_claim(REPLIES, vacation_id, key, "c" * 32)
    assert claim("<m2@example.org>", "d" * 32) == TAKEN


def test_explain_reads_but_never_claims(store: Store, db_url: str, sink: SmtpSink, clock: FakeClock) -> None:
    services = _services(store, db_url, sink, clock)
    _vacation(store, clock)
    inbound = Inbound(Envelope("bob@example.org", ALICE), _message(1))
    assert respond(inbound, services, dry_run=True).action == "reply"
    assert respond(inbound, services, dry_run=True).action == "reply"
    assert store.decisions() == []
    assert sink.received() == []
    assert _decide(services, 1) == ("reply", None)
    decision = respond(Inbound(Envelope("bob@example.org", ALICE), _message(2)), services, dry_run=True)
    assert (decision.action, decision.reason) == ("suppress", "interval")


def test_explain_reports_a_pending_claim_without_waiting(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    services = _services(store, db_url, sink, clock)
    _vacation(store, clock)
    vacation_id = store.list_vacations()[0].id
    week, stale = dt.timedelta(days=7), dt.timedelta(seconds=180)
    token = "a" * 32
    assert (
        store.claim(
            ClaimRequest(
                REPLIES, vacation_id, "bob@example.org", "<m1@example.org>", clock(), week, stale, token
            )
        )
        == WON
    )
    decision = respond(Inbound(Envelope("bob@example.org", ALICE), _message(2)), services, dry_run=True)
    assert decision.action == "reply"
    assert "another delivery's reply claim is pending: this one would wait" in decision.detail
    store.confirm_claim(REPLIES, vacation_id, "bob@example.org", token)
    decision = respond(Inbound(Envelope("bob@example.org", ALICE), _message(2)), services, dry_run=True)
    assert (decision.action, decision.reason) == ("suppress", "interval")


class _Queueing(Services):
    """Responses committed to the outbox, as the service commits them; ``race`` runs once, right
    before the first commit."""

    queues_responses = True
    race: Callable[[], None] | None = None

    def before_queue(self) -> None:
        race, self.race = self.race, None
        if race is not None:
            race()


def test_with_an_outbox_the_first_commit_takes_the_interval_and_a_later_one_is_suppressed(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    settings = _services(store, db_url, sink, clock).settings
    services = _Queueing(settings, clock=clock, store=store)
    assert services.claims_at_commit
    _vacation(store, clock)
    raced: list[tuple[str, str | None]] = []
    # Message 2 is decided and committed while message 1 is being composed: both found the interval
    # free; the first commit takes it, and the other is suppressed at its own, nothing written.
    services.race = lambda: raced.append(_decide(services, 2))
    assert _decide(services, 1) == ("suppress", "interval")
    assert raced == [("reply", None)]
    [owed] = store.outbox_rows()
    assert b"In-Reply-To: <m2@example.org>" in owed.message
    decided = sorted((d.action, d.reason or "") for d in store.decisions())
    assert decided == [("reply", ""), ("suppress", "interval")]
    # The interval holds for the next message, and ends as it does for a claim taken before composing.
    assert _decide(services, 3) == ("suppress", "interval")
    clock.advance(days=7)
    assert _decide(services, 4) == ("reply", None)
    assert len(store.outbox_rows()) == 2
    assert sink.received() == []  # the outbox's sender sends them, not the decision
