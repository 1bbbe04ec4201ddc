"""The life cycle both daemons share: signals, the connection cap, draining at stop, the schema check."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from responder.errors import SchemaMismatch, StoreUnavailable

if TYPE_CHECKING:
    from responder.store.database import Store

log = logging.getLogger("responder")


class Signals:
    """SIGTERM and SIGINT stop; SIGHUP reloads, or (``reload`` None) is logged and ignored.

    A HUP must never kill a daemon: service managers send it to ask for a reload.
    """

    def __init__(self, stop: Callable[[], None], reload: Callable[[], None] | None, name: str) -> None:
        self.loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, stop)
        if reload is None:
            message = f"{name}: SIGHUP: nothing to reload (restart to apply configuration changes)"
            self.loop.add_signal_handler(signal.SIGHUP, log.info, message)
        else:
            self.loop.add_signal_handler(signal.SIGHUP, reload)

    def stop_reloading(self) -> None:
        """Once stopping: no reload starts any more; SIGHUP is ignored."""
        self.loop.remove_signal_handler(signal.SIGHUP)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: None)

    def remove(self) -> None:
        """After draining: SIGTERM and SIGINT stay caught until then, so a second one cuts nothing short."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.remove_signal_handler(signum)


async def drain(
    pending: set[asyncio.Task[None]], timeout: float, before_cancel: Callable[[], None] | None = None
) -> int:
    """Wait up to ``timeout`` for ``pending``; cancel those still running (after ``before_cancel``).

    Returns how many were cut off.
    """
    if not pending:
        return 0
    _done, late = await asyncio.wait(pending, timeout=timeout)
    if not late:
        return 0
    if before_cancel is not None:
        before_cancel()
    for task in late:
        task.cancel()
    await asyncio.wait(late, timeout=1)
    return len(late)


class Slot(Protocol):
    """What the connection cap needs of one connection."""

    @property
    def idle(self) -> bool: ...

    @property
    def idle_since(self) -> float: ...

    def evict(self) -> None: ...


class Connections:
    """The open connections of a daemon, each with its client (a TCP peer's address; None on UNIX).

    Idle connections (a client that connected and says nothing) must not lock the MTA out: at the cap
    the longest idle one is sent away, and one TCP peer holds at most half of the connections, making
    room among its own.
    """

    def __init__(self) -> None:
        # A slot of None: the connection is being set up and cannot be sent away.
        self.open: dict[asyncio.Task[None], tuple[str | None, Slot | None]] = {}

    def __len__(self) -> int:
        return len(self.open)

    def add(self, task: asyncio.Task[None], client: str | None, slot: Slot | None = None) -> None:
        self.open[task] = (client, slot)

    def remove(self, task: asyncio.Task[None]) -> None:
        self.open.pop(task, None)

    def make_room(self, client: str | None, limit: int) -> bool:
        """Room for one more connection of ``client``; False when every candidate is busy."""
        if client is not None:
            mine = [task for task, (peer, _slot) in self.open.items() if peer == client]
            if len(mine) >= max(1, limit // 2):
                return self._evict(mine)
        if len(self.open) < limit:
            return True
        return self._evict(list(self.open))

    def _evict(self, candidates: list[asyncio.Task[None]]) -> bool:
        idle = [
            (slot.idle_since, task)
            for task in candidates
            for slot in [self.open[task][1]]
            if slot is not None and slot.idle and not task.done()
        ]
        if not idle:
            return False
        _since, oldest = min(idle, key=lambda entry: entry[0])
        slot = self.open.pop(oldest)[1]
        assert slot is not None
        slot.evict()
        return True


def check_schema(store: Store, name: str, until: str) -> bool:
    """At start: False (logged) for a database of another schema; one that is down is only logged."""
    try:
        store.check_schema()
    except SchemaMismatch as exc:
        log.error("%s: %s", name, exc)
        return False
    except StoreUnavailable as exc:
        log.warning("%s: %s; %s", name, exc, until)
    return True
