"""The outbox sender of one service process: takes due responses, sends them over pooled relay connections.

Each response is leased: born leased to the sender of the process that committed it, which is handed
the row and sends it at once, or leased later by whichever sender finds it due (store.outbox.take_due:
retries, and rows of a process that stopped). It is marked ``sending`` just before its final dot and
``sent`` once the relay answers 250. A relay that is down or answers 4xx leaves the response in the
outbox for another attempt after an exponential backoff (outbox.backoff_min doubling up to
backoff_max) until outbox.max_age, when it is given up and audited ``relay-gave-up``; a 5xx is final
and audited ``relay-refused``. Both give back the interval claims and rate counts the response held.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

from responder.daemons.batched import Batched
from responder.decide.context import utcnow
from responder.decide.records import DecisionRecord
from responder.errors import RelayRefused, RelayUnavailable, RelayUnconfirmed, StoreUnavailable
from responder.logsetup import printable
from responder.observe import events
from responder.smtp.faults import relay_fault_kind
from responder.smtp.transport import Handover
from responder.store.outbox import Mark

if TYPE_CHECKING:
    from responder.daemons.lmtp_service import Generation
    from responder.store.database import Store
    from responder.store.outbox import OutboxRow

log = logging.getLogger("responder")

# The longest pause between two looks at the outbox when nobody wakes the sender: responses of other
# processes and hosts, retries falling due.
POLL = 1.0
# Threads for the sender's database calls; a send waits for two of them (sending, then sent).
DB_THREADS = 4
# At stop, how long giving the leases back may take before they are left to expire.
RELEASE_WAIT = 2.0
T = TypeVar("T")
Ts = TypeVarTuple("Ts")
GAVE_UP = "relay-gave-up"
REFUSED = "relay-refused"


def _open_store(generation: Generation) -> Store:
    return generation.services.store


class LeaseLost(Exception):
    """Another sender holds the response now (our lease expired): this one must not send it."""


class Queued:
    """A response from the outbox, as the relay conversation wants it."""

    def __init__(self, row: OutboxRow) -> None:
        self.mail_from = row.mail_from
        self.rcpt_to = row.rcpt_to
        self.data = row.message

    def as_bytes(self) -> bytes:
        return self.data


def backoff(attempts: int, low: float, high: float) -> float:
    """The pause after ``attempts`` failed attempts: ``low`` doubled each time, at most ``high``."""
    return float(min(high, low * 2 ** min(max(attempts - 1, 0), 60)))


class OutboxSender:
    """Runs on a worker's event loop; ``current`` gives the configuration generation to send with."""

    def __init__(self, current: Callable[[], Generation], key: str) -> None:
        self.current = current
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self.sending = False
        # Responses this process committed and sends at once, without looking them up (see _hand).
        self.handed: set[asyncio.Task[None]] = set()
        self.refused_while_stopping = False
        self.gate: tuple[int, asyncio.Semaphore] | None = None
        # Its own threads: one stuck on a locked database must not hold up the loop's shutdown, and
        # their names mark them as the service's workers (see lmtp_service.run_worker).
        self.executor = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="responder-worker-outbox")
        # The sends of the moment share their writes, "sending" and "sent" alike: one thread call
        # and one transaction for all of them.
        self.mark = Batched(_mark, self._db)

    def _db(self, call: Callable[..., T], *args: object) -> asyncio.Future[T]:
        return self.loop.run_in_executor(self.executor, call, *args)

    def start(self) -> None:
        self.task = self.loop.create_task(self.run())

    def nudge(self, row: OutboxRow | None = None) -> None:
        """From any thread: a response was queued; ``row``, leased to this sender, is sent at once."""
        if row is None:
            self.loop.call_soon_threadsafe(self.wake.set)
        else:
            self.loop.call_soon_threadsafe(self._hand, row)

    def _hand(self, row: OutboxRow) -> None:
        if self.stopping:
            # Not sent here: stop() gives its lease back (or it expires) for the next process.
            self.refused_while_stopping = True
            return
        task = self.loop.create_task(self._guarded(self._gate(self.current()), self.current(), row))
        self.handed.add(task)
        task.add_done_callback(self.handed.discard)

    def _gate(self, generation: Generation) -> asyncio.Semaphore:
        # One bound on sends at a time for the rows taken from the outbox and those handed over: as
        # many as the relay pool keeps connections (a new bound from a reload that changes it).
        size = generation.settings.server.workers
        if self.gate is None or self.gate[0] != size:
            self.gate = (size, asyncio.Semaphore(size))
        return self.gate[1]

    async def stop(self, timeout: float) -> None:
        """Finish the sends under way (up to ``timeout``); those cut short give their leases back.

        Leases are held only while sending: a sender between batches holds none.
        """
        self.stopping = True
        self.wake.set()
        cut = False
        deadline = self.loop.time() + timeout
        if self.task is not None:
            # Sends under way get up to ``timeout``; a look at the outbox is not worth waiting for.
            busy = self.sending or bool(self.handed)
            done, _ = await asyncio.wait({self.task}, timeout=timeout if busy else 0.1)
            if not done:
                cut = self.sending
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self.task
        if self.handed:
            _, late = await asyncio.wait(set(self.handed), timeout=max(0.0, deadline - self.loop.time()))
            for task in late:
                cut = True
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        try:
            # Rows handed over while stopping were never sent: free them for the next process now.
            cut = cut or self.refused_while_stopping
            if cut:
                # Responses not yet handed over are free for another sender at once; one whose final
                # dot was being written is counted as sent.
                store = self.current().services.store
                await asyncio.wait_for(self._db(store.release_leases, self.key, utcnow()), RELEASE_WAIT)
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("outbox: leases not given back (they expire): %s", exc or "database too slow")
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)

    async def run(self) -> None:
        next_recovery = 0.0
        while not self.stopping:
            generation = self.current()
            settings = generation.settings.outbox
            try:
                # Opened in a thread: a database that is down must not hold up the loop.
                store = await self._db(_open_store, generation)
                if time.monotonic() >= next_recovery:
                    recovered = await self._db(store.recover_unconfirmed, utcnow())
                    if recovered:
                        log.warning("outbox: %d responses of a stopped sender counted as sent", recovered)
                    next_recovery = time.monotonic() + min(settings.lease, 30.0)
                rows = await self._db(store.take_due, self.key, utcnow(), settings.batch_size, settings.lease)
            except StoreUnavailable as exc:
                log.warning("outbox: %s", exc)
                rows = []
            except Exception:
                log.exception("outbox: taking responses failed")
                rows = []
            if rows:
                gate = self._gate(generation)
                self.sending = True
                try:
                    await asyncio.gather(*(self._guarded(gate, generation, row) for row in rows))
                finally:
                    self.sending = False
                continue
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), min(POLL, settings.backoff_min))

    async def _guarded(self, gate: asyncio.Semaphore, generation: Generation, row: OutboxRow) -> None:
        async with gate:
            try:
                await self.send(generation, row)
            except Exception:
                # The lease expires and another attempt follows; nothing is lost.
                log.exception("outbox: sending response %d failed", row.id)

    async def send(self, generation: Generation, row: OutboxRow) -> None:
        """One attempt at one leased response; its row says how it went."""
        store = generation.services.store
        token = row.lease_token
        assert token is not None

        async def before_final_dot() -> None:
            if not await self.mark((store, Mark(row.id, token))):
                raise LeaseLost(f"response {row.id} was taken over by another sender")

        handover = Handover(before_final_dot)
        rcpt = printable(row.rcpt_to)
        try:
            await generation.services.relay.send_pooled(Queued(row), handover)
        except LeaseLost as exc:
            log.warning("outbox: %s", exc)
            return
        except RelayUnconfirmed as exc:
            # The relay may have queued it: sending again could mail the sender twice.
            _relay_fault(exc, usable=False)
            events.observer.response_sent(row.action)
            note = f"relay's answer to the data lost, counted as sent: {exc}"
            log.warning("outbox: response %d to <%s>: %s", row.id, rcpt, printable(note))
            await self._sent(store, row, token, note)
            return
        except RelayRefused as exc:
            # A refusal is an answer: the relay works, the response is final.
            _relay_fault(exc, usable=True)
            await self._refused(store, row, token, exc)
            return
        except RelayUnavailable as exc:
            _relay_fault(exc, usable=False)
            await self._later(generation, row, token, str(exc))
            return
        events.observer.response_sent(row.action)
        events.observer.dependency_ok(events.RELAY)
        await self._sent(store, row, token, "")
        log.info("outbox: response %d (%s) to <%s> sent", row.id, row.action, rcpt)

    async def _sent(self, store: Store, row: OutboxRow, token: str, note: str) -> None:
        try:
            await self.mark((store, Mark(row.id, token, utcnow(), note)))
        except StoreUnavailable as exc:
            # It stays "sending": whoever finds it so after its lease counts it as sent, never resends.
            log.warning("outbox: response %d sent but not marked (counted as sent later): %s", row.id, exc)

    async def _later(self, generation: Generation, row: OutboxRow, token: str, error: str) -> None:
        settings = generation.settings.outbox
        store = generation.services.store
        now = utcnow()
        attempts = row.attempts + 1
        if now >= row.expires_at:
            age = (now - row.created_at).total_seconds()
            detail = (
                f"relay did not take the {row.action} in {attempts} attempts over {age:.0f}s "
                f"(outbox.max_age): {error}; nothing was sent"
            )
            if await self._db(
                store.finish_unsent, row.id, token, "gave-up", detail, self._audit(row, GAVE_UP, detail, now)
            ):
                events.observer.decision("drop", GAVE_UP)
                log.error(
                    "outbox: response %d to <%s> given up, reason=%s: %s",
                    row.id,
                    printable(row.rcpt_to),
                    GAVE_UP,
                    printable(detail),
                )
            return
        pause = backoff(attempts, settings.backoff_min, settings.backoff_max)
        at = min(now + dt.timedelta(seconds=pause), row.expires_at)
        await self._db(store.retry_later, row.id, token, error, at)
        log.warning(
            "outbox: response %d to <%s> not sent (attempt %d, next in %.0fs): %s",
            row.id,
            printable(row.rcpt_to),
            attempts,
            (at - now).total_seconds(),
            printable(error),
        )

    async def _refused(self, store: Store, row: OutboxRow, token: str, exc: RelayRefused) -> None:
        from responder.decide.engine import refused_detail

        detail, level = refused_detail(exc, row.action)
        now = utcnow()
        if await self._db(
            store.finish_unsent, row.id, token, "failed", detail, self._audit(row, REFUSED, detail, now)
        ):
            events.observer.decision("drop", REFUSED)
        log.log(
            level,
            "outbox: response %d to <%s>, reason=%s: %s",
            row.id,
            printable(row.rcpt_to),
            REFUSED,
            printable(detail),
        )

    @staticmethod
    def _audit(row: OutboxRow, reason: str, detail: str, now: dt.datetime) -> DecisionRecord:
        return DecisionRecord(
            at=now,
            queue_id=row.queue_id,
            message_id=row.message_id,
            sender=row.sender,
            recipient=row.recipient,
            action="drop",
            reason=reason,
            detail=printable(detail),
        )


def _per_store(
    items: Sequence[tuple[Store, *Ts]], run: Callable[[Store, list[tuple[*Ts]]], Sequence[T]]
) -> list[T]:
    """``run(store, rows)`` for the items of each store (there are two only across a reload), in order."""
    results: list[T | None] = [None] * len(items)
    stores: dict[int, tuple[Store, list[int]]] = {}
    for number, item in enumerate(items):
        stores.setdefault(id(item[0]), (item[0], []))[1].append(number)
    for store, numbers in stores.values():
        for number, result in zip(numbers, run(store, [items[n][1:] for n in numbers]), strict=True):
            results[number] = result
    return results  # type: ignore[return-value]  # every place was filled


def _mark(items: Sequence[tuple[Store, Mark]]) -> list[bool]:
    return _per_store(items, lambda store, rows: store.mark_many([mark for (mark,) in rows]))


def _relay_fault(exc: BaseException, usable: bool) -> None:
    """Count an attempt the relay did not take, as the engine counts its own sends."""
    events.observer.relay_failed(relay_fault_kind(exc))
    if usable:
        events.observer.dependency_ok(events.RELAY)
    else:
        events.observer.dependency_failed(events.RELAY)
