"""One outcome per delivery, mapped once to the hook's 0/75 and to the service's 250/451; faults audited."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from responder.config.load import settings_from_mapping
from responder.decide import engine
from responder.decide.context import Context, Services
from responder.decide.engine import Decision, respond_safely
from responder.errors import StoreUnavailable
from responder.mail.message import Envelope, Inbound
from responder.outcome import DECIDED, DEFER, INTERNAL_ERROR, Outcome
from responder.smtp.transport import SmtpTransport
from responder.store.database import Store
from tests.helpers import FakeClock, sample
from tests.sink import SmtpSink

ALICE = "alice@example.com"
BOB = "bob@example.org"


@pytest.fixture
def services(store: Store, db_url: str, sink: SmtpSink, clock: FakeClock) -> Iterator[Services]:
    settings = settings_from_mapping(
        {"database": {"url": db_url}, "smtp": {"port": sink.port}, "verify": {"require": "off"}}
    )
    yield Services(settings, clock=clock, store=store, transport=SmtpTransport(settings.smtp))


def _inbound(name: str = "personal.eml") -> Inbound:
    return Inbound(Envelope(BOB, ALICE, queue_id="4Q1"), sample(name))


def test_a_fault_in_the_code_is_a_logged_and_audited_drop(
    services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(ctx: Context, *phases: object) -> Decision:
        raise KeyError("no such thing")

    monkeypatch.setattr(engine, "decide", broken)
    outcome = respond_safely(_inbound(), services)
    assert (outcome.kind, outcome.action, outcome.reason) == (INTERNAL_ERROR, "drop", "internal-error")
    assert outcome.exit_status == 0
    assert outcome.lmtp_reply(ALICE) == f"250 2.0.0 <{ALICE}> drop (internal-error)"
    [row] = services.store.decisions()
    assert (row.action, row.reason, row.recipient) == ("drop", "internal-error", ALICE)
    assert "KeyError" in row.detail
    [line] = [r for r in caplog.records if "reason=internal-error" in r.getMessage()]
    assert "queue_id=4Q1" in line.getMessage() and line.exc_info is not None


def test_a_transient_fault_defers(
    services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def down(ctx: Context, *phases: object) -> Decision:
        raise StoreUnavailable("database is locked\r\n(after 10s)")

    monkeypatch.setattr(engine, "decide", down)
    outcome = respond_safely(_inbound(), services)
    assert (outcome.kind, outcome.reason) == (DEFER, "tempfail")
    assert outcome.exit_status == 75
    assert outcome.lmtp_reply(ALICE) == f"451 4.3.0 <{ALICE}> database is locked (after 10s)"
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("deferring")] == [
        "deferring: database is locked\\x0d\\x0a(after 10s)"
    ]


def test_a_decision(services: Services) -> None:
    outcome = respond_safely(_inbound("precedence-bulk.eml"), services)
    assert (outcome.kind, outcome.action, outcome.reason) == (DECIDED, "suppress", "precedence")
    assert outcome.exit_status == 0
    assert outcome.lmtp_reply(ALICE) == f"250 2.0.0 <{ALICE}> suppress (precedence)"
    [row] = services.store.decisions()
    assert row.reason == "precedence"


@pytest.mark.parametrize(
    ("outcome", "status", "reply"),
    [
        (Outcome(DECIDED, "reply", None), 0, "250 2.0.0 <a@example.com> reply"),
        (Outcome(DECIDED, "drop", "no-vacation"), 0, "250 2.0.0 <a@example.com> drop (no-vacation)"),
        (
            Outcome(INTERNAL_ERROR, "drop", "internal-error"),
            0,
            "250 2.0.0 <a@example.com> drop (internal-error)",
        ),
        (Outcome(DEFER, DEFER, "tempfail", ""), 75, "451 4.3.0 <a@example.com> try again later"),
        (Outcome(DEFER, DEFER, "tempfail", "x" * 500), 75, "451 4.3.0 <a@example.com> " + "x" * 300),
    ],
)
def test_the_two_mappings(outcome: Outcome, status: int, reply: str) -> None:
    assert outcome.exit_status == status
    assert outcome.lmtp_reply("a@example.com") == reply
    assert not reply.startswith("5")
