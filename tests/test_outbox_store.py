"""The outbox table on SQLite, PostgreSQL and MariaDB: one commit, exclusive leases, the end states."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event, select

from responder.decide.records import DecisionRecord
from responder.store.claims import takes_in_one_statement
from responder.store.database import REPLIES, ClaimRequest, CounterWindow, Store
from responder.store.outbox import UNCONFIRMED, ClaimLost, ClaimTaken, HeldClaim, Mark, Owed
from responder.store.schema import rate_counters, reply_claims

ALICE = "alice@example.com"
BOB = "bob@example.org"
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
KEY = "abcd1234"


@pytest.fixture
def store(backend_url: str) -> Iterator[Store]:
    opened = Store.open(backend_url, busy_timeout=5)
    opened.put_vacation(ALICE, NOW, None, enabled=True, message="Away.", timezone="UTC")
    yield opened
    opened.close()


def _claim(store: Store, sender: str = BOB, token: str = KEY + "0" * 24) -> HeldClaim:
    vacation_id = store.list_vacations()[0].id
    week, stale = dt.timedelta(days=7), dt.timedelta(days=1)
    request = ClaimRequest(REPLIES, vacation_id, sender, f"<m@{sender}>", NOW, week, stale, token)
    assert store.claim(request) == "won"
    return HeldClaim(REPLIES, vacation_id, sender, token)


def _audit(sender: str = BOB) -> DecisionRecord:
    return DecisionRecord(
        at=NOW,
        queue_id="Q1",
        message_id="<m@x>",
        sender=sender,
        recipient=ALICE,
        action="reply",
        reason=None,
        detail="",
    )


def _queue(store: Store, sender: str = BOB, counters: tuple[CounterWindow, ...] = ()) -> int:
    owed = Owed("", sender, b"Subject: away\r\n\r\nAway.\r\n", "reply", NOW + dt.timedelta(hours=1))
    return store.queue_response(
        owed, [_claim(store, sender, KEY + sender[:2].encode().hex() + "0" * 20)], counters, _audit(sender)
    ).id


def _claim_state(store: Store, sender: str = BOB) -> str | None:
    with store.engine.connect() as conn:
        return conn.execute(select(reply_claims.c.state).where(reply_claims.c.sender_key == sender)).scalar()


def test_the_decision_its_claim_and_the_response_are_one_commit(store: Store) -> None:
    row_id = _queue(store)
    [row] = store.outbox_rows()
    assert (row.id, row.state, row.rcpt_to, row.attempts) == (row_id, "pending", BOB, 0)
    assert row.message.endswith(b"Away.\r\n")
    assert _claim_state(store) == "sent"
    assert [(d.action, d.sender) for d in store.decisions()] == [("reply", BOB)]
    assert store.outbox_stats(NOW + dt.timedelta(seconds=30)) == (1, 30.0)


def test_a_claim_taken_over_before_the_commit_writes_nothing(store: Store) -> None:
    held = _claim(store)
    store.release_claim(REPLIES, held.owner_id, BOB, held.token)
    owed = Owed("", BOB, b"x\r\n", "reply", NOW)
    with pytest.raises(ClaimLost):
        store.queue_response(owed, [held], [], _audit())
    assert store.outbox_rows() == [] and store.decisions() == []


def test_only_one_of_many_senders_leases_a_response(store: Store, backend_url: str) -> None:
    for number in range(6):
        _queue(store, f"s{number}@example.org")
    others = [Store.open(backend_url, busy_timeout=5) for _ in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            taken = list(pool.map(lambda s: s[1].take_due(f"{s[0]:08x}", NOW, 3, 60), enumerate(others)))
    finally:
        for other in others:
            other.close()
    ids = [row.id for rows in taken for row in rows]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 6
    # Leased: nobody takes them again until the lease expires.
    assert store.take_due("ffffffff", NOW, 10, 60) == []
    assert len(store.take_due("ffffffff", NOW + dt.timedelta(seconds=61), 10, 60)) == 6


def test_sending_needs_the_lease_and_sent_is_final(store: Store) -> None:
    _queue(store)
    [row] = store.take_due(KEY, NOW, 10, 60)
    assert row.lease_token is not None and row.lease_token.startswith(KEY)
    # Another sender that took it after the lease expired owns it now; the first must not send.
    [again] = store.take_due("99999999", NOW + dt.timedelta(seconds=61), 10, 60)
    assert again.lease_token is not None
    assert not store.mark_sending(row.id, row.lease_token)
    assert store.mark_sending(again.id, again.lease_token)
    store.mark_sent(again.id, again.lease_token, NOW)
    [done] = store.outbox_rows()
    assert (done.state, done.attempts) == ("sent", 1)
    assert store.outbox_stats(NOW) == (0, 0.0)
    assert store.take_due(KEY, NOW + dt.timedelta(days=1), 10, 60) == []


def test_the_marks_of_one_moment_share_a_transaction_and_each_sending_checks_its_lease(store: Store) -> None:
    for number in range(3):
        _queue(store, f"s{number}@example.org")
    rows = store.take_due(KEY, NOW, 10, 60)
    tokens = [row.lease_token or "" for row in rows]
    # The second row's lease is another sender's by now: it alone is refused.
    sending = [Mark(rows[0].id, tokens[0]), Mark(rows[1].id, "9" * 32), Mark(rows[2].id, tokens[2])]
    assert store.mark_many(sending) == [True, False, True]
    # A later send's "sending" goes with the "sent" of those before it, in the same transaction.
    _queue(store, "s3@example.org")
    [later] = store.take_due(KEY, NOW, 10, 60)
    assert later.lease_token is not None
    marks = [
        Mark(rows[0].id, tokens[0], NOW),
        Mark(later.id, later.lease_token),
        Mark(rows[2].id, tokens[2], NOW, "answer lost"),
    ]
    assert store.mark_many(marks) == [True, True, True]
    states = {row.id: (row.state, row.last_error) for row in store.outbox_rows()}
    assert states == {
        rows[0].id: ("sent", ""),
        rows[1].id: ("pending", ""),
        rows[2].id: ("sent", "answer lost"),
        later.id: ("sending", ""),
    }


def test_a_transient_fault_schedules_a_retry(store: Store) -> None:
    _queue(store)
    [row] = store.take_due(KEY, NOW, 10, 60)
    assert row.lease_token is not None
    assert store.mark_sending(row.id, row.lease_token)  # the relay answered 4xx to the data
    store.retry_later(row.id, row.lease_token, "relay answered 451", NOW + dt.timedelta(seconds=5))
    [waiting] = store.outbox_rows()
    assert (waiting.state, waiting.attempts, waiting.last_error) == ("pending", 1, "relay answered 451")
    assert store.take_due(KEY, NOW + dt.timedelta(seconds=4), 10, 60) == []
    assert len(store.take_due(KEY, NOW + dt.timedelta(seconds=5), 10, 60)) == 1


def test_given_up_gives_back_the_claim_and_the_counts_and_is_audited(store: Store) -> None:
    counter = CounterWindow("sender", BOB, NOW, NOW + dt.timedelta(days=1))
    assert store.take_counts([(counter, 10)]) is None
    _queue(store, counters=(counter,))
    [row] = store.take_due(KEY, NOW, 10, 60)
    assert row.lease_token is not None
    audit = DecisionRecord(NOW, "Q1", "<m@x>", BOB, ALICE, "drop", "relay-gave-up", "relay down")
    assert store.finish_unsent(row.id, row.lease_token, "gave-up", "relay down", audit)
    assert store.outbox_rows()[0].state == "gave-up"
    assert _claim_state(store) is None
    assert store.counts([counter]) == [0]
    assert [d.reason for d in store.decisions()] == ["relay-gave-up", None]
    # Sent anyway at the admin's word, then purged.
    assert store.outbox_retry(NOW, 3600, row.id) == 1
    [again] = store.take_due(KEY, NOW, 10, 60)
    assert again.lease_token is not None
    store.mark_sent(again.id, again.lease_token, NOW)
    assert store.outbox_purge(sent_before=NOW) == 0
    assert store.outbox_purge(sent_before=NOW + dt.timedelta(seconds=1)) == 1
    assert store.outbox_rows() == []


def test_a_dead_senders_leases_and_claims_are_freed(store: Store) -> None:
    _queue(store, "a@example.org")
    _queue(store, "b@example.org")
    rows = store.take_due(KEY, NOW, 10, 600)
    assert len(rows) == 2 and rows[1].lease_token is not None
    assert store.mark_sending(rows[1].id, rows[1].lease_token)
    # A decision of the dead worker that never committed.
    _claim(store, "c@example.org", KEY + "c" * 24)
    assert store.release_leases(KEY, NOW) == 2
    states = {row.rcpt_to: (row.state, row.last_error) for row in store.outbox_rows()}
    assert states == {"a@example.org": ("pending", ""), "b@example.org": ("sent", UNCONFIRMED)}
    assert _claim_state(store, "c@example.org") is None
    assert len(store.take_due("99999999", NOW, 10, 60)) == 1


def test_a_sending_row_past_its_lease_is_counted_as_sent_never_resent(store: Store) -> None:
    _queue(store)
    [row] = store.take_due(KEY, NOW, 10, 60)
    assert row.lease_token is not None and store.mark_sending(row.id, row.lease_token)
    assert store.recover_unconfirmed(NOW + dt.timedelta(seconds=30)) == 0
    assert store.recover_unconfirmed(NOW + dt.timedelta(seconds=61)) == 1
    assert store.outbox_rows()[0].state == "sent"
    assert store.take_due(KEY, NOW + dt.timedelta(days=1), 10, 60) == []
    with store.engine.connect() as conn:
        assert conn.execute(select(rate_counters)).first() is None


def _request(store: Store, message_key: str, token: str, now: dt.datetime = NOW) -> ClaimRequest:
    vacation_id = store.list_vacations()[0].id
    week, stale = dt.timedelta(days=7), dt.timedelta(days=1)
    return ClaimRequest(REPLIES, vacation_id, BOB, message_key, now, week, stale, token)


def _needs_one_statement_takes(store: Store) -> None:
    if not takes_in_one_statement(store.engine.dialect.name):
        pytest.skip("this backend's claims are taken before composing, in transactions of their own")


def test_a_claim_taken_by_the_commit_goes_to_the_first_and_nothing_is_written_for_later(store: Store) -> None:
    _needs_one_statement_takes(store)
    owed = Owed("", BOB, b"x\r\n", "reply", NOW + dt.timedelta(hours=1))
    first = _request(store, "<m1@x>", KEY + "1" * 24)
    row = store.queue_response(owed, [], [], _audit(), taking=[first])
    assert _claim_state(store) == "sent"
    # Giving the response up must free the interval: the row lists the claim it took.
    assert json.loads(row.claims)["claims"] == [["reply", first.owner_id, BOB, first.token]]
    # Another message of the sender, decided at the same time, and the retry of the first one.
    for other in (_request(store, "<m2@x>", KEY + "2" * 24), _request(store, "<m1@x>", KEY + "3" * 24)):
        with pytest.raises(ClaimTaken) as taken:
            store.queue_response(owed, [], [], _audit(), taking=[other])
        assert taken.value.index == 0
    assert len(store.outbox_rows()) == 1 and len(store.decisions()) == 1
    later = _request(store, "<m4@x>", KEY + "4" * 24, NOW + dt.timedelta(days=7))
    store.queue_response(owed, [], [], _audit(), taking=[later])
    assert len(store.outbox_rows()) == 2


def test_a_pending_claim_of_another_delivery_at_the_commit_writes_nothing(store: Store) -> None:
    _needs_one_statement_takes(store)
    _claim(store)  # a pipe hook's claim, neither confirmed nor released yet
    owed = Owed("", BOB, b"x\r\n", "reply", NOW + dt.timedelta(hours=1))
    with pytest.raises(ClaimLost):
        store.queue_response(owed, [], [], _audit(), taking=[_request(store, "<m2@x>", KEY + "2" * 24)])
    assert store.outbox_rows() == [] and store.decisions() == []
    assert _claim_state(store) == "pending"


def test_of_many_commits_taking_one_claim_at_once_exactly_one_queues(store: Store, backend_url: str) -> None:
    _needs_one_statement_takes(store)
    owed = Owed("", BOB, b"x\r\n", "reply", NOW + dt.timedelta(hours=1))
    others = [Store.open(backend_url, busy_timeout=5) for _ in range(6)]

    def commit(number: int) -> str:
        request = _request(store, f"<m{number}@x>", KEY + f"{number:024d}")
        try:
            others[number].queue_response(owed, [], [], _audit(), taking=[request])
        except ClaimTaken:
            return "taken"
        except ClaimLost:
            return "lost"  # the retry decides again (451 to the MTA)
        return "queued"

    try:
        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(commit, range(6)))
    finally:
        for other in others:
            other.close()
    assert outcomes.count("queued") == 1, outcomes
    assert len(store.outbox_rows()) == 1 and len(store.decisions()) == 1
    assert _claim_state(store) == "sent"


def test_on_sqlite_the_commit_before_250_reaches_the_disk_and_the_marks_need_not(db_url: str) -> None:
    # WAL with synchronous=NORMAL keeps a commit through a crash of the process, not of the system:
    # the commit the MTA's 250 rests on is written through (FULL), the bookkeeping after it is not.
    opened = Store.open(db_url, busy_timeout=5)
    statements: list[str] = []
    event.listen(opened.engine, "connect", lambda raw, _record: raw.set_trace_callback(statements.append))
    try:
        opened.put_vacation(ALICE, NOW, None, enabled=True, message="Away.", timezone="UTC")
        row_id = _queue(opened)
        queued = statements[:]
        [row] = opened.take_due(KEY, NOW, 10, 60)
        opened.mark_sent(row_id, row.lease_token or "", NOW)
        after = statements[len(queued) :]
    finally:
        opened.close()

    def position(text: str, within: list[str], start: int = 0) -> int:
        return next(i for i, s in enumerate(within) if i >= start and text in s.upper())

    insert = position("INSERT INTO OUTBOX", queued)
    full = max(i for i, s in enumerate(queued[:insert]) if "PRAGMA SYNCHRONOUS" in s.upper())
    assert "FULL" in queued[full].upper()
    commit = position("COMMIT", queued, insert)
    assert "NORMAL" in queued[position("PRAGMA SYNCHRONOUS", queued, commit)].upper()
    assert not any("PRAGMA SYNCHRONOUS = FULL" in s.upper() for s in after)
    assert any("UPDATE OUTBOX" in s.upper() for s in after)
