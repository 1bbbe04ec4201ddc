"""What the rules may ask about one delivery; heavy services are opened only when first asked for."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from responder.addresses import sender_key
from responder.config import Settings
from responder.message import Inbound, normalize_address

if TYPE_CHECKING:
    from responder.render import Renderer
    from responder.store import Store, Vacation
    from responder.transport import Transport


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Claim(Protocol):
    """A reservation taken while deciding: kept when the response went out, given back otherwise."""

    def confirm(self) -> None: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class ReplyClaim:
    store: Store
    vacation_id: int
    sender_key: str
    token: str

    def confirm(self) -> None:
        self.store.confirm_reply(self.vacation_id, self.sender_key, self.token)

    def release(self) -> None:
        self.store.release_reply(self.vacation_id, self.sender_key, self.token)


class Services:
    """Collaborators shared by every delivery of a process; each is built on first use.

    Tests hand in real ones (a migrated SQLite file, a loopback relay) and replace only the clock.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], dt.datetime] = utcnow,
        store: Store | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._store = store
        self._transport = transport
        self._renderer: Renderer | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            from responder.store import Store

            store = Store.open(self.settings.database.url, self.settings.database.busy_timeout)
            store.check_schema()
            self._store = store
        return self._store

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            from responder.transport import SmtpTransport

            self._transport = SmtpTransport(self.settings.smtp)
        return self._transport

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            from responder.render import Renderer

            self._renderer = Renderer(self.settings.reply.templates_dir)
        return self._renderer

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


class Context:
    """One delivery being decided. ``dry_run`` (explain) reads the store but never writes to it."""

    def __init__(self, inbound: Inbound, services: Services, dry_run: bool = False) -> None:
        self.inbound = inbound
        self.services = services
        self.settings = services.settings
        self.dry_run = dry_run
        self.now = services.clock()
        self.claims: list[Claim] = []
        # Findings of the stateful rules (verification results, limits), for the audit detail.
        self.notes: list[str] = []

    @cached_property
    def recipients(self) -> tuple[str, ...]:
        """The normalized envelope recipient, then the original recipient when it differs."""
        env = self.inbound.envelope
        found = (normalize_address(env.recipient), normalize_address(env.original_recipient))
        return tuple(dict.fromkeys(a for a in found if a))

    @cached_property
    def vacation(self) -> Vacation | None:
        return self.services.store.vacation_for(self.recipients)

    @cached_property
    def own_addresses(self) -> frozenset[str]:
        mine = set(self.recipients)
        if self.vacation is not None:
            mine |= self.vacation.own_addresses()
        return frozenset(mine)

    @cached_property
    def sender_key(self) -> str:
        return sender_key(self.inbound.sender_address or "")

    @cached_property
    def interval(self) -> dt.timedelta:
        reply = self.settings.reply
        configured = self.vacation.interval_seconds if self.vacation else None
        seconds = reply.default_interval if configured is None else configured
        return dt.timedelta(seconds=min(max(seconds, reply.min_interval), reply.max_interval))

    def claim_interval(self) -> str | None:
        """Take (or, in a dry run, look at) the right to reply; the detail when it is not free."""
        assert self.vacation is not None
        store = self.services.store
        stale = dt.timedelta(seconds=self.settings.deliver.deadline)
        key, message = self.sender_key, self.inbound.message_key
        if self.dry_run:
            last = store.last_reply(self.vacation.id, key)
            if last is None:
                return None
            free = (last.replied_at <= self.now - self.interval and last.message_key != message) or (
                last.state == "pending"
                and last.replied_at <= self.now - stale
                and last.message_key == message
            )
            return None if free else f"last reply {last.replied_at.isoformat(timespec='seconds')}"
        token = store.claim_reply(self.vacation.id, key, message, self.now, self.interval, stale)
        if token is None:
            return f"already answered within {self.interval}"
        self.claims.append(ReplyClaim(store, self.vacation.id, key, token))
        return None
