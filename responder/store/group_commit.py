"""Audit rows of many threads written in one transaction: a group commit for the service's decisions.

Each caller waits until its row is committed (or the write failed), as with one transaction per row,
but the threads that arrive while a write is under way share the next one: one lock, one INSERT and
one commit for all of them. The first caller to find nobody writing leads: it writes every row
waiting, then hands the lead to the first caller that arrived meanwhile, so that no caller writes
for others longer than one round.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence

from responder.decide.records import DecisionRecord


class _Waiter:
    __slots__ = ("done", "error", "lead")

    def __init__(self, lead: bool) -> None:
        self.done = threading.Event()
        self.lead = lead
        self.error: BaseException | None = None


class GroupCommit:
    """``record`` from any thread; ``write`` commits a batch of rows in one transaction or raises."""

    def __init__(self, write: Callable[[Sequence[DecisionRecord]], None]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._waiting: list[tuple[DecisionRecord, _Waiter]] = []
        self._writing = False

    def record(self, row: DecisionRecord) -> None:
        """Return once ``row`` is committed; raise what the write raised."""
        with self._lock:
            me = _Waiter(lead=not self._writing)
            self._writing = True
            self._waiting.append((row, me))
        if not me.lead:
            me.done.wait()
        if me.lead:  # from the start, or handed over by the last leader
            self._lead()
        if me.error is not None:
            raise me.error

    def _lead(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting, []
        error: BaseException | None = None
        try:
            self._write([row for row, _ in batch])
        except Exception as exc:
            error = exc
        with self._lock:
            successor = self._waiting[0][1] if self._waiting else None
            if successor is None:
                self._writing = False
            else:
                successor.lead = True
        for number, (_, waiter) in enumerate(batch):
            # Each thread raises an exception of its own: one object raised in several threads
            # would collect all their tracebacks.
            waiter.error = error if error is None or number == 0 else copy.copy(error)
            waiter.lead = False
            waiter.done.set()
        if successor is not None:
            successor.done.set()
