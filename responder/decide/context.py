"""What the rules may ask about one delivery; heavy services are opened only when first asked for."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol

from responder.cached import cached_property
from responder.errors import TransientError
from responder.mail.addresses import sender_key
from responder.mail.message import Inbound, normalize_address

if TYPE_CHECKING:
    # Not at run time: the pipe hook runs the header rules before it loads the configuration.
    import dns.resolver

    from responder.config.settings import Settings
    from responder.decide.audience import AudienceChoice
    from responder.decide.content import Content
    from responder.decide.records import DecisionRecord, Retirement, Vacation
    from responder.decide.templates import Renderer
    from responder.mail.signing import Signer
    from responder.smtp.transport import Transport
    from responder.store.database import ClaimKind, ClaimRequest, Store
    from responder.store.outbox import Lease, OutboxRow


# The two kinds of response; also the action recorded when one goes out.
REPLY = "reply"
BOUNCE = "bounce"
RESPONSES = frozenset({REPLY, BOUNCE})

# A pending claim is taken over as stale only when its delivery has certainly ended: a hook ends
# within deliver.deadline plus a few seconds of margin whatever it is doing, and the service's worker
# never sends after its deadline. This margin is well beyond that, with room for the clocks of hosts
# sharing one database; the MTA retries a killed hook later still (Postfix: 300 s at the earliest).
CLAIM_STALE_MARGIN = 120.0
# A delivery waits for another's pending claim for at most this share of deliver.deadline, keeping the
# rest for its own verification and send; then it defers, and the MTA's retry decides again.
CLAIM_WAIT_SHARE = 0.5
# Polling a pending claim: the first pause, doubled up to the longest.
CLAIM_POLL_FIRST = 0.02
CLAIM_POLL_MAX = 0.25


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Claim(Protocol):
    """A reservation taken while deciding: kept when the response went out, given back otherwise."""

    def confirm(self) -> None: ...

    def release(self) -> None: ...


# A NamedTuple, not a dataclass: the pipe hook's header phase imports this module (see message.py).
class IntervalClaim(NamedTuple):
    """The right to send one reply or DSN to a sender within its interval."""

    store: Store
    kind: ClaimKind
    owner_id: int
    sender_key: str
    token: str
    # Whose message a reply claim is for (internal, external): each has its own interval.
    audience: str = "internal"

    def confirm(self) -> None:
        self.store.confirm_claim(self.kind, self.owner_id, self.sender_key, self.token)

    def release(self) -> None:
        self.store.release_claim(self.kind, self.owner_id, self.sender_key, self.token, self.audience)


class CommitClaim(NamedTuple):
    """An interval found free while deciding and taken by the service's outbox commit, as sent.

    Nothing is written before the commit, so there is nothing to confirm or give back: of two
    deliveries that both found the interval free, the first commit takes it and the second is
    suppressed then (engine._queue), with ``detail``.
    """

    request: ClaimRequest
    detail: str

    def confirm(self) -> None:
        """Taken by the commit that queues the response."""

    def release(self) -> None:
        """Nothing was written."""


class NeedsFullPath(Exception):
    """A header view was asked for what only the full context has (the database): the full path decides."""


class HeaderView(Protocol):
    """What the rules of the HEADERS phase may read: the message, its envelope, and the header settings.

    The pipe hook runs these rules on a HeaderFacts before the configuration or the database is
    loaded; mypy holds every HEADERS rule (annotated with this) to it. ``kind`` is the one question
    that may need the database: a HeaderFacts raises NeedsFullPath for it.
    """

    @property
    def inbound(self) -> Inbound: ...
    @property
    def recipients(self) -> tuple[str, ...]: ...
    @property
    def sender_key(self) -> str: ...
    @property
    def max_received(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def notes(self) -> list[str]: ...


class HeaderFacts:
    """The facts of one delivery that need neither the configuration file nor the database."""

    def __init__(self, inbound: Inbound, max_received: int) -> None:
        self.inbound = inbound
        self.max_received = max_received
        # Findings of the stateful rules (verification results, limits), for the audit detail.
        self.notes: list[str] = []

    @cached_property
    def recipients(self) -> tuple[str, ...]:
        """The normalized envelope recipient, then the original recipient when it differs."""
        env = self.inbound.envelope
        found = (normalize_address(env.recipient), normalize_address(env.original_recipient))
        return tuple(dict.fromkeys(a for a in found if a))

    @cached_property
    def sender_key(self) -> str:
        return sender_key(self.inbound.sender_address or "")

    @property
    def kind(self) -> str:
        raise NeedsFullPath("the kind of response is a database lookup")


class Services:
    """Collaborators shared by every delivery of a process; each is built on first use.

    Tests hand in real ones (a migrated SQLite file, a loopback relay) and replace only the clock.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], dt.datetime] = utcnow,
        on_settled: Callable[[str, str | None], None] | None = None,
        store: Store | None = None,
        transport: Transport | None = None,
        deadline: float | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        # Told when the decision is made and nothing it owes is left undone (the hook's deadline).
        self._on_settled = on_settled
        self._store = store
        self._transport = transport
        # The hook's whole-run deadline as a time.monotonic() instant; the relay steps end before it.
        self.deadline = deadline
        self._renderer: Renderer | None = None
        self._signer: Signer | None = None
        # One DNS resolver for every sender verification (the service builds one per generation).
        self.resolver: dns.resolver.Resolver | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            from responder.store.database import Store, limit_statements

            database = self.settings.database
            store = Store.open(database.url, database.busy_timeout)
            limit_statements(store.engine, database.busy_timeout)
            store.check_schema()
            self._store = store
        return self._store

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            from responder.smtp.transport import SmtpTransport

            self._transport = SmtpTransport(self.settings.smtp, self.deadline)
        return self._transport

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            from responder.decide.templates import Renderer

            self._renderer = Renderer(self.settings.reply.templates_dir)
        return self._renderer

    def claim_token(self) -> str:
        """A fresh token for an interval claim (32 characters); a service worker prefixes its key."""
        import secrets

        return secrets.token_hex(16)

    # The LMTP service queues responses in the outbox instead of sending them (see engine.respond).
    queues_responses = False

    @property
    def claims_at_commit(self) -> bool:
        """Whether interval claims are taken by the outbox commit rather than written before
        composing: where responses are queued and the backend can take one inside that transaction."""
        if not self.queues_responses:
            return False
        from responder.store.claims import takes_in_one_statement

        return takes_in_one_statement(self.store.engine.dialect.name)

    def before_queue(self) -> None:
        """Right before the outbox commit; raise TransientError when it is too late to promise."""

    def record(self, row: DecisionRecord) -> None:
        """Write one audit row (the service shares transactions among its threads)."""
        self.store.record(row)

    def outbox_lease(self, now: dt.datetime) -> Lease | None:
        """The lease a response is queued under when this process sends it itself (None: any sender)."""
        return None

    def queued(self, row: OutboxRow) -> None:
        """After the outbox commit of ``row``: a sender may take the response now."""

    @property
    def signer(self) -> Signer:
        """The DKIM signer; its keys are read when a response from their domain is first signed."""
        if self._signer is None:
            from responder.mail.signing import Signer

            self._signer = Signer(self.settings.dkim)
        return self._signer

    def settle(self, action: str, reason: str | None) -> None:
        """The decision is made and nothing it owes is left undone (the pipe hook may now end with 0)."""
        if self._on_settled is not None:
            self._on_settled(action, reason)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


class Context(HeaderFacts):
    """One delivery being decided. ``dry_run`` (explain) reads the store but never writes to it."""

    def __init__(self, inbound: Inbound, services: Services, dry_run: bool = False) -> None:
        super().__init__(inbound, services.settings.deliver.max_received)
        self.services = services
        self.settings = services.settings
        self.dry_run = dry_run
        self.now = services.clock()
        self.started = time.monotonic()
        self.claims: list[Claim] = []

    @cached_property
    def _records(self) -> tuple[Vacation | None, Retirement | None]:
        # Every decision past the header rules asks for both: one connection for the two.
        return self.services.store.recipient_records(self.recipients)

    @cached_property
    def vacation(self) -> Vacation | None:
        return self._records[0]

    @cached_property
    def retirement(self) -> Retirement | None:
        return self._records[1]

    @cached_property
    def kind(self) -> str:
        """BOUNCE when the recipient is retired right now, else REPLY (a vacation, or nothing at all).

        An address has a vacation or a retirement, never both; when the envelope and the original
        recipient have one each, the envelope recipient's wins, as for vacations.
        """
        retirement = self.retirement
        if retirement is None or not retirement.active(self.now):
            return REPLY
        vacation = self.vacation
        if vacation is not None and self.recipients.index(vacation.address) < self.recipients.index(
            retirement.address
        ):
            return REPLY
        return BOUNCE

    @cached_property
    def responder_address(self) -> str:
        """The address the response speaks for: the retired address, the vacation's, or the recipient."""
        if self.kind == BOUNCE and self.retirement is not None:
            return self.retirement.address
        if self.vacation is not None:
            return self.vacation.address
        return self.recipients[0] if self.recipients else ""

    @cached_property
    def own_addresses(self) -> frozenset[str]:
        mine = set(self.recipients)
        if self.vacation is not None:
            mine |= self.vacation.own_addresses()
        return frozenset(mine)

    @cached_property
    def audience(self) -> AudienceChoice:
        """Whose message the sender gets under the vacation (responder.decide.audience)."""
        from responder.decide.audience import choose_audience

        return choose_audience(self)

    @cached_property
    def content(self) -> Content:
        """The reply's subject and message for the sender's audience, in the sender's language."""
        from responder.decide.content import choose_content

        assert self.vacation is not None and self.audience.message is not None
        return choose_content(self.vacation, self.audience.message, self.inbound)

    @cached_property
    def interval(self) -> dt.timedelta:
        reply = self.settings.reply
        configured = self.vacation.interval_seconds if self.vacation else None
        seconds = reply.default_interval if configured is None else configured
        return dt.timedelta(seconds=min(max(seconds, reply.min_interval), reply.max_interval))

    def claim_bounce_interval(self) -> str | None:
        """``claim_interval`` for a DSN: at most one per sender and retired address per bounce.interval."""
        from responder.store.database import BOUNCES

        assert self.retirement is not None
        interval = dt.timedelta(seconds=self.settings.bounce.interval)
        return self._claim(BOUNCES, self.retirement.id, interval)

    def claim_interval(self) -> str | None:
        """Take (or, in a dry run, look at) the right to reply; the detail when it is not free."""
        from responder.store.database import REPLIES

        assert self.vacation is not None and self.audience.message is not None
        return self._claim(REPLIES, self.vacation.id, self.interval, self.audience.message)

    @property
    def claim_stale_after(self) -> dt.timedelta:
        """The age from which a pending claim belongs to a delivery that has certainly ended."""
        return dt.timedelta(seconds=self.settings.deliver.deadline + CLAIM_STALE_MARGIN)

    def _claim(
        self, kind: ClaimKind, owner_id: int, interval: dt.timedelta, audience: str = "internal"
    ) -> str | None:
        from dataclasses import replace

        from responder.store.database import PENDING, TAKEN, WON, ClaimRequest

        store = self.services.store
        stale = self.claim_stale_after
        key, message = self.sender_key, self.inbound.message_key
        if self.dry_run:
            last = store.last_claim(kind, owner_id, key, audience)
            verdict = WON if last is None else last.verdict(message, self.now, interval, stale)
            if verdict == PENDING:
                self.notes.append(f"another delivery's {kind.what} claim is pending: this one would wait")
            if last is None or verdict != TAKEN:
                return None
            return f"last {kind.what} {last.replied_at.isoformat(timespec='seconds')}"
        from responder.config.values import format_duration

        taken = f"already {kind.done} within {format_duration(interval.total_seconds())}"
        token = self.services.claim_token()
        request = ClaimRequest(kind, owner_id, key, message, self.now, interval, stale, token, audience)
        claim: Claim
        attempt: Callable[[ClaimRequest], str]
        if self.services.claims_at_commit:
            # Read only: the commit that queues the response takes it (engine._queue).
            claim, attempt = CommitClaim(request, taken), self._free_now
        else:
            claim, attempt = IntervalClaim(store, kind, owner_id, key, token, audience), store.claim
        # Listed before it is taken: a deadline striking once the claim is written still releases it.
        self.claims.append(claim)
        give_up = self.started + CLAIM_WAIT_SHARE * self.settings.deliver.deadline
        pause = CLAIM_POLL_FIRST
        while True:
            # The clock is read on every attempt: the claim records when it was taken, after any wait.
            verdict = attempt(replace(request, now=self.services.clock()))
            if verdict != PENDING:
                break
            if pause == CLAIM_POLL_FIRST:
                # Imported here: the pipe hook's header phase imports this module without logging.
                import logging

                logging.getLogger("responder").info(
                    "waiting for another delivery's pending %s claim for <%s>", kind.what, key
                )
            pause = self._await_decided(claim, request, give_up, pause)
        if verdict == WON:
            return None
        self.claims.remove(claim)
        return taken

    def _free_now(self, request: ClaimRequest) -> str:
        """What ``Store.claim`` would find for ``request``, read without writing."""
        from responder.store.database import WON

        store = self.services.store
        last = store.last_claim(request.kind, request.owner_id, request.sender_key, request.audience)
        if last is None:
            return WON
        return last.verdict(request.message_key, request.now, request.interval, request.stale_after)

    def _await_decided(self, claim: Claim, request: ClaimRequest, give_up: float, pause: float) -> float:
        """Wait, reading only, until the pending claim is confirmed, released or stale; the next pause.

        Raises TransientError when it is still pending at ``give_up``: the MTA keeps the message.
        """
        from dataclasses import replace

        from responder.store.database import PENDING

        while time.monotonic() + pause <= give_up:
            time.sleep(pause)
            pause = min(2 * pause, CLAIM_POLL_MAX)
            if self._free_now(replace(request, now=self.services.clock())) != PENDING:
                return pause
        self.claims.remove(claim)
        raise TransientError(
            f"another delivery's {request.kind.what} claim for <{request.sender_key}> is still pending"
        )
