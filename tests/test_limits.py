"""Rate limits in the engine, on SQLite, PostgreSQL and MariaDB: counted only when sent, fixed windows."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping, Sequence

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.pool import NullPool

from responder.config.load import ConfigError, settings_from_mapping
from responder.config.values import Limit
from responder.decide.context import Services
from responder.decide.engine import Decision, respond
from responder.decide.limits import window
from responder.errors import RelayUnavailable, StoreUnavailable
from responder.mail.message import Envelope, Inbound
from responder.smtp.transport import SmtpTransport
from responder.store.database import CounterWindow, Store
from responder.store.schema import rate_counters, reply_claims
from tests.helpers import LIMITS_OFF, FakeClock
from tests.sink import SmtpSink


@pytest.fixture
def db_url(backend_url: str) -> str:
    """Every test here runs on each backend (the shared `store` fixture opens this URL)."""
    return backend_url


def _services(store: Store, db_url: str, sink: SmtpSink, clock: FakeClock, **limits: str) -> Services:
    settings = settings_from_mapping(
        {
            "database": {"url": db_url, "busy_timeout": 1},
            "smtp": {"port": sink.port},
            "verify": {"require": "off"},
            "reply": {"min_interval": "0s"},
            "limits": {**LIMITS_OFF, **limits},
        }
    )
    return Services(settings, clock=clock, store=store, transport=SmtpTransport(settings.smtp))


def _vacations(store: Store, clock: FakeClock, *addresses: str) -> None:
    for address in addresses:
        store.put_vacation(address, clock(), None, enabled=True, message="away", timezone="UTC")


_numbers = iter(range(1, 1_000_000))


def _deliver(services: Services, sender: str, recipient: str, dry_run: bool = False) -> Decision:
    number = next(_numbers)
    raw = (
        f"From: {sender}\nTo: {recipient}\nSubject: note {number}\n"
        f"Message-ID: <m{number}@example.org>\n\nhello\n"
    ).encode()
    return respond(Inbound(Envelope(sender, recipient), raw), services, dry_run=dry_run)


def _limit_detail(detail: str) -> str:
    """The rule's own detail, without the notes of earlier rules (e.g. verify=off) joined to it."""
    return detail.split("; ", maxsplit=1)[0]


def _outcome(decision: Decision) -> tuple[str, str | None]:
    return decision.action, decision.reason


def _counts(store: Store) -> dict[tuple[str, str], int]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(rate_counters.c.scope, rate_counters.c.counter_key, rate_counters.c["count"])
        )
        return {(scope, key): count for scope, key, count in rows}


RCPTS = [f"rcpt{i}@example.com" for i in range(8)]


def test_per_sender_limit(store: Store, db_url: str, sink: SmtpSink, clock: FakeClock) -> None:
    services = _services(store, db_url, sink, clock, per_sender="3/1d")
    _vacations(store, clock, *RCPTS)
    outcomes = [_outcome(_deliver(services, "bob@example.org", rcpt)) for rcpt in RCPTS[:5]]
    assert outcomes == [("reply", None)] * 3 + [("drop", "rate-limit")] * 2
    assert len(sink.wait_for(3)) == 3
    # Another sender is not affected.
    assert _outcome(_deliver(services, "carol@example.org", RCPTS[5])) == ("reply", None)
    [last, *_rest] = store.decisions()
    assert (last.action, last.reason) == ("reply", None)
    dropped = store.decisions(sender="bob@example.org")[0]
    assert (dropped.action, dropped.reason) == ("drop", "rate-limit")
    assert (
        _limit_detail(dropped.detail)
        == "per_sender 3/1d reached for bob@example.org until 2026-11-28T00:00:00Z"
    )
    assert _counts(store) == {("sender", "bob@example.org"): 3, ("sender", "carol@example.org"): 1}


def test_sender_spellings_share_one_counter_and_replies_go_as_given(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    services = _services(store, db_url, sink, clock, per_sender="3/1h")
    _vacations(store, clock, *RCPTS)
    senders = [
        "Bob+news@Example.org",
        "prvs=1234abcdef=bob@example.org",
        "SRS0=HHH=TT=example.org=bob@forwarder.example",
        "SRS1=HHH=forwarder.example==HHH=TT=example.org=bob@second.example",
    ]
    outcomes = [_outcome(_deliver(services, s, r)) for s, r in zip(senders, RCPTS, strict=False)]
    assert outcomes == [("reply", None)] * 3 + [("drop", "rate-limit")]
    received = sink.wait_for(3)
    # The key is only for counting: each reply went to the envelope sender exactly as given.
    assert sorted(r.rcpt_tos[0] for r in received) == sorted(senders[:3])
    assert _counts(store) == {("sender", "bob@example.org"): 3}


@pytest.mark.parametrize(
    ("setting", "senders", "recipients", "detail"),
    [
        (
            "per_sender_domain",
            ["a@example.org", "b@example.org", "c@example.org"],
            RCPTS[:3],
            "per_sender_domain 2/1h reached for example.org until 2026-11-27T13:00:00Z",
        ),
        (
            "per_recipient",
            ["a@one.example", "b@two.example", "c@three.example"],
            [RCPTS[0]] * 3,
            "per_recipient 2/1h reached for rcpt0@example.com until 2026-11-27T13:00:00Z",
        ),
        (
            "global",
            ["a@one.example", "b@two.example", "c@three.example"],
            RCPTS[:3],
            "global 2/1h reached until 2026-11-27T13:00:00Z",
        ),
    ],
)
def test_each_limit(
    store: Store,
    db_url: str,
    sink: SmtpSink,
    clock: FakeClock,
    setting: str,
    senders: list[str],
    recipients: list[str],
    detail: str,
) -> None:
    services = _services(store, db_url, sink, clock, **{setting: "2/1h"})
    _vacations(store, clock, *RCPTS)
    decisions = [_deliver(services, s, r) for s, r in zip(senders, recipients, strict=True)]
    assert [_outcome(d) for d in decisions] == [("reply", None)] * 2 + [("drop", "rate-limit")]
    assert _limit_detail(decisions[-1].detail) == detail


def test_counts_expire_with_the_window(store: Store, db_url: str, sink: SmtpSink, clock: FakeClock) -> None:
    services = _services(store, db_url, sink, clock, per_sender="2/1h")
    _vacations(store, clock, *RCPTS)
    clock.now = dt.datetime(2026, 11, 27, 12, 59, 59, 900_000, tzinfo=dt.UTC)
    assert _outcome(_deliver(services, "bob@example.org", RCPTS[0])) == ("reply", None)
    assert _outcome(_deliver(services, "bob@example.org", RCPTS[1])) == ("reply", None)
    assert _outcome(_deliver(services, "bob@example.org", RCPTS[2])) == ("drop", "rate-limit")
    clock.advance(seconds=0.1)  # 13:00:00, a new fixed window
    assert _outcome(_deliver(services, "bob@example.org", RCPTS[2])) == ("reply", None)
    assert _outcome(_deliver(services, "bob@example.org", RCPTS[3])) == ("reply", None)
    assert _outcome(_deliver(services, "bob@example.org", RCPTS[4])) == ("drop", "rate-limit")


def test_windows_are_fixed_and_aligned_to_utc() -> None:
    now = dt.datetime(2026, 11, 27, 14, 37, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert window(Limit(10, 86400), now) == (
        dt.datetime(2026, 11, 27, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 28, tzinfo=dt.UTC),
    )
    assert window(Limit(10, 900), now) == (
        dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 27, 12, 45, tzinfo=dt.UTC),
    )


def test_transient_send_failure_gives_the_counts_back(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    services = _services(
        store,
        db_url,
        sink,
        clock,
        per_sender="1/1h",
        per_sender_domain="5/1h",
        per_recipient="5/1h",
        **{"global": "5/1h"},
    )
    _vacations(store, clock, *RCPTS)
    sink.rcpt_reply = "451 4.3.0 try again later"
    with pytest.raises(RelayUnavailable):
        _deliver(services, "bob@example.org", RCPTS[0])
    assert set(_counts(store).values()) == {0}
    sink.rcpt_reply = ""
    assert _outcome(_deliver(services, "bob@example.org", RCPTS[0])) == ("reply", None)
    assert _outcome(_deliver(services, "bob@example.org", RCPTS[1])) == ("drop", "rate-limit")
    assert _counts(store) == {
        ("sender", "bob@example.org"): 1,
        ("sender-domain", "example.org"): 1,
        ("recipient", "rcpt0@example.com"): 1,
        ("global", "*"): 1,
    }


class _RacedStore(Store):
    """A store whose every counter read is followed at once by another host taking a recipient slot."""

    def counts(self, counters: Sequence[CounterWindow]) -> list[int]:
        seen = super().counts(counters)
        for counter in counters:
            if counter.scope == "recipient":
                other = Store.open(self.engine.url.render_as_string(hide_password=False))
                other.take_counts([(counter, 2)])
                other.close()
        return seen


def test_a_limit_reached_meanwhile_counts_nothing_and_gives_back_the_interval(
    db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    store = _RacedStore(Store.open(db_url).engine)
    services = _services(store, db_url, sink, clock, per_sender="5/1h", per_recipient="2/1h")
    _vacations(store, clock, *RCPTS)
    # The read sees 0 of 2; another host then takes 1, this delivery the 2nd.
    assert _outcome(_deliver(services, "bob@example.org", RCPTS[0])) == ("reply", None)
    # The read sees 2 of 2 already: refused without a write.
    assert _outcome(_deliver(services, "carol@example.org", RCPTS[0])) == ("drop", "rate-limit")
    store.reset_counters([("recipient", RCPTS[0])])
    store.take_counts([(CounterWindow("recipient", RCPTS[0], *window(Limit(2, 3600), clock())), 2)])
    # The read sees 1 of 2, then the other host takes the last slot: carol's counts, taken together,
    # are rolled back together, and her interval claim is given back.
    decision = _deliver(services, "carol@example.org", RCPTS[0])
    assert _outcome(decision) == ("drop", "rate-limit")
    assert decision.detail.startswith("per_recipient 2/1h reached for rcpt0@example.com")
    assert _counts(store) == {("sender", "bob@example.org"): 1, ("recipient", "rcpt0@example.com"): 2}
    with store.engine.connect() as conn:
        holders = conn.execute(select(reply_claims.c.sender_key)).scalars().all()
    assert holders == ["bob@example.org"]
    store.close()


def test_interval_suppression_is_not_counted(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    services = _services(store, db_url, sink, clock, per_sender="2/1h")
    store.put_vacation(
        RCPTS[0], clock(), None, enabled=True, message="away", timezone="UTC", interval_seconds=86400
    )
    assert _outcome(_deliver(services, "bob@example.org", RCPTS[0])) == ("reply", None)
    for _ in range(3):
        assert _outcome(_deliver(services, "bob@example.org", RCPTS[0])) == ("suppress", "interval")
    assert _counts(store) == {("sender", "bob@example.org"): 1}


def test_dry_run_reads_the_counters_and_never_writes(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    services = _services(store, db_url, sink, clock, per_sender="1/1h", **{"global": "10/1h"})
    _vacations(store, clock, *RCPTS)
    assert _outcome(_deliver(services, "bob@example.org", RCPTS[0], dry_run=True)) == ("reply", None)
    assert _counts(store) == {}
    assert _outcome(_deliver(services, "bob@example.org", RCPTS[0])) == ("reply", None)
    before = _counts(store)
    explained = _deliver(services, "bob@example.org", RCPTS[1], dry_run=True)
    assert _outcome(explained) == ("drop", "rate-limit")
    assert (
        _limit_detail(explained.detail)
        == "per_sender 1/1h reached for bob@example.org until 2026-11-27T13:00:00Z"
    )
    assert _counts(store) == before
    assert len(store.decisions()) == 1


def test_off_means_no_limit(store: Store, db_url: str, sink: SmtpSink, clock: FakeClock) -> None:
    services = _services(store, db_url, sink, clock)
    _vacations(store, clock, *RCPTS)
    assert all(_deliver(services, "bob@example.org", rcpt).action == "reply" for rcpt in RCPTS)
    assert _counts(store) == {}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    handler = _Lines()
    logger = logging.getLogger("responder")
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def test_global_circuit_breaker_warns_once_per_window(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock, warnings_logged: list[str]
) -> None:
    services = _services(store, db_url, sink, clock, **{"global": "2/1h"})
    _vacations(store, clock, *RCPTS)
    senders = [f"s{i}@site{i}.example" for i in range(6)]
    outcomes = [_deliver(services, s, RCPTS[0]).action for s in senders]
    assert outcomes == ["reply"] * 2 + ["drop"] * 4
    assert [line for line in warnings_logged if "circuit breaker" in line] == [
        "circuit breaker: global 2/1h reached until 2026-11-27T13:00:00Z; "
        "no automatic responses are sent until then"
    ]
    # explain shows it without logging again
    assert _deliver(services, "x@y.example", RCPTS[1], dry_run=True).reason == "rate-limit"
    clock.advance(hours=1)
    outcomes = [_deliver(services, s, RCPTS[1]).action for s in senders]
    assert outcomes == ["reply"] * 2 + ["drop"] * 4
    assert len([line for line in warnings_logged if "circuit breaker" in line]) == 2


def _hold_counter_row(db_url: str) -> tuple[object, object]:
    """Another session holding a write lock on every counter row, as a stuck host would."""
    engine = create_engine(db_url, poolclass=NullPool)
    conn = engine.connect()
    if engine.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    conn.execute(text("UPDATE rate_counters SET count = count"))
    return engine, conn


def test_database_fault_in_the_limits_defers_and_keeps_nothing(
    db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    store = Store.open(db_url, busy_timeout=1)
    services = _services(store, db_url, sink, clock, per_sender="5/1h")
    _vacations(store, clock, *RCPTS)
    assert _outcome(_deliver(services, "bob@example.org", RCPTS[0])) == ("reply", None)
    engine, conn = _hold_counter_row(db_url)
    try:
        with pytest.raises(StoreUnavailable):
            _deliver(services, "bob@example.org", RCPTS[1])
    finally:
        conn.rollback()  # type: ignore[attr-defined]
        conn.close()  # type: ignore[attr-defined]
        engine.dispose()  # type: ignore[attr-defined]
    assert _counts(store) == {("sender", "bob@example.org"): 1}
    with store.engine.connect() as c:
        assert c.execute(select(reply_claims.c.vacation_id)).scalars().all() == [
            store.vacation_for([RCPTS[0]]).id  # type: ignore[union-attr]
        ]
    # The retry gets through.
    assert _outcome(_deliver(services, "bob@example.org", RCPTS[1])) == ("reply", None)
    assert len(sink.wait_for(2)) == 2
    store.close()


def _limits(**values: object) -> Mapping[str, object]:
    return {"limits": values}


def test_limit_settings() -> None:
    defaults = settings_from_mapping({}).limits
    assert (str(defaults.per_sender), str(defaults.per_sender_domain)) == ("10/1d", "50/1h")
    assert (str(defaults.per_recipient), str(defaults.global_)) == ("200/1h", "1000/1h")
    chosen = settings_from_mapping(_limits(per_sender="5/30m", **{"global": "off"})).limits
    assert chosen.per_sender == Limit(5, 1800)
    assert chosen.global_ is None
    assert settings_from_mapping({"store": {"audit_retention": "30d"}}).store.audit_retention == 30 * 86400
    assert settings_from_mapping({}).store.audit_retention == 90 * 86400


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("per_sender", "ten/1d", "bad value for limits.per_sender: expected COUNT/WINDOW"),
        ("per_sender_domain", "0/1h", "bad value for limits.per_sender_domain: the count must be at least 1"),
        ("per_recipient", "5/0s", "bad value for limits.per_recipient: the window must be"),
        ("global", "5/fortnight", "bad value for limits.global: not a duration"),
        ("global", 5, "bad value for limits.global: expected a string"),
        ("per_domain", "5/1h", "unknown key limits.per_domain"),
    ],
)
def test_bad_limits_name_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.")):
        settings_from_mapping(_limits(**{key: value}))
