"""The service's audit group commit: every row written once, shared transactions, faults to every waiter."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from responder.decide.records import DecisionRecord
from responder.errors import StoreUnavailable
from responder.store.database import Store
from responder.store.group_commit import GroupCommit

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
THREADS = 8


def _row(number: int) -> DecisionRecord:
    return DecisionRecord(
        at=NOW,
        queue_id=f"Q{number}",
        message_id=f"<{number}@example.org>",
        sender=f"s{number}@example.org",
        recipient="alice@example.com",
        action="drop",
        reason="precedence",
        detail="",
    )


class HeldWrite:
    """A write that holds its first batch until released, so that the other callers queue up."""

    def __init__(self, write: object = None, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = fail
        self.write = write

    def __call__(self, rows: Sequence[DecisionRecord]) -> None:
        self.batches.append([row.queue_id for row in rows])
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if self.fail:
            raise StoreUnavailable("database unavailable while writing the audit: disk full")
        if callable(self.write):
            self.write(rows)


def _queued(group: GroupCommit) -> int:
    with group._lock:  # the test looks at the line of waiting callers, as the leader does
        return len(group._waiting)


def _run_all(group: GroupCommit, held: HeldWrite) -> list[BaseException | None]:
    """Record one row, then THREADS - 1 more while the first write is held; each caller's outcome."""

    def call(number: int) -> BaseException | None:
        try:
            group.record(_row(number))
        except StoreUnavailable as exc:
            return exc
        return None

    with ThreadPoolExecutor(THREADS) as pool:
        first = pool.submit(call, 0)
        assert held.entered.wait(10)
        rest = [pool.submit(call, number) for number in range(1, THREADS)]
        while _queued(group) < THREADS - 1:
            time.sleep(0.001)
        held.release.set()
        return [first.result(10)] + [future.result(10) for future in rest]


def test_callers_arriving_during_a_write_share_the_next_transaction(db_url: str) -> None:
    store = Store.open(db_url)
    try:
        held = HeldWrite(store.record_many)
        outcomes = _run_all(GroupCommit(held), held)
        assert outcomes == [None] * THREADS
        # The first row alone, then the seven that waited for it in one transaction.
        assert [len(batch) for batch in held.batches] == [1, THREADS - 1]
        written = sorted(record.queue_id for record in store.decisions(limit=100))
        assert written == sorted(f"Q{number}" for number in range(THREADS))
    finally:
        store.close()


def test_a_failed_write_reaches_every_caller_of_its_batch() -> None:
    held = HeldWrite(fail=True)
    outcomes = _run_all(GroupCommit(held), held)
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes)
    # Each caller raises an exception object of its own.
    assert len({id(outcome) for outcome in outcomes}) == THREADS


def test_the_lead_passes_on_so_the_group_is_usable_after_a_fault() -> None:
    held = HeldWrite(fail=True)
    group = GroupCommit(held)
    _run_all(group, held)
    held.fail = False
    group.record(_row(99))  # nobody is left writing: this caller leads at once
    assert held.batches[-1] == ["Q99"]


@pytest.mark.parametrize("callers", [1, 50])
def test_every_row_is_written_exactly_once(db_url: str, callers: int) -> None:
    store = Store.open(db_url)
    try:
        group = GroupCommit(store.record_many)
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda number: group.record(_row(number)), range(callers)))
        written = [record.queue_id for record in store.decisions(limit=1000)]
        assert sorted(written) == sorted(f"Q{number}" for number in range(callers))
    finally:
        store.close()
