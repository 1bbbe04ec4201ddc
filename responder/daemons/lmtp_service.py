"""``responder serve``: the engine kept warm behind an LMTP socket, for Postfix and the thin client.

One asyncio loop speaks LMTP (responder.lmtp.session); each recipient is decided by engine.respond in a worker
thread, at most ``server.workers`` at a time, with the database pool, templates and relay settings of
one configuration "generation". The header rules run first in threads of their own, so that list mail
and robots are never queued behind slow decisions. A decision the service has given up on at
``deliver.deadline`` (and answered 451) never hands its response to the relay afterwards. SIGHUP loads
the configuration again into a new generation: messages already in flight finish on the old one, which
is closed when its last message is done. SIGTERM (and SIGINT) stop accepting, finish the messages in
flight for up to ``server.stop_timeout``, and exit 0.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import ipaddress
import logging
import os
import socket as socketlib
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

import aiosmtplib
import uvloop

from responder.config.load import ConfigError, load
from responder.config.settings import Settings, SmtpSettings
from responder.daemons import runtime, sockets
from responder.daemons.outbox_sender import OutboxSender
from responder.decide.context import Context, HeaderFacts, Services
from responder.decide.engine import Decision, log_decision, record, respond_safely
from responder.decide.records import DecisionRecord
from responder.decide.rules import AFTER_HEADERS, ALL_PHASES, HEADER_PHASE, Firing, first_firing
from responder.errors import DeadlineExceeded, RelayUnavailable, StoreUnavailable
from responder.lmtp.session import Session, SessionClosed, Transaction
from responder.logsetup import printable, setup_logging
from responder.mail.message import Envelope, Inbound
from responder.observe import events
from responder.outcome import DECIDED, Outcome
from responder.smtp.transport import Handover, Sendable, SmtpTransport
from responder.store.group_commit import GroupCommit
from responder.store.outbox import Lease, OutboxRow, lease_token

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    import dns.resolver

    from responder.daemons.balance import Seat
    from responder.decide.templates import Renderer
    from responder.mail.reply import Outgoing
    from responder.mail.signing import Signer
    from responder.store.database import Store

log = logging.getLogger("responder")

# Threads that run the header rules; they never wait for DNS, the relay or a template.
HEADER_THREADS = 2
# Messages up to this size have their header rules run on the loop, where they cost less than the
# hop to a header thread; the header of a larger message could hold the loop (and every session).
INLINE_HEADERS = 64 * 1024
_WORKER_PREFIX = "responder-worker"
_HEADER_PREFIX = "responder-headers"


class ServeError(Exception):
    """The service cannot start: no socket configured, or the socket cannot be bound."""


class Job:
    """One recipient's decision in a worker thread; the loop gives up on it at its deadline.

    Once given up (the client was answered 451), the worker must not hand a response to the relay:
    the MTA's retry will. A response already with the relay is waited for instead, since its outcome
    is what decides between 250 and 451.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # time.monotonic()
        self.lock = threading.Lock()
        self.abandoned = False
        self.sending = False

    def start_sending(self) -> bool:
        """In the worker, right before the send: False when it is too late to send."""
        with self.lock:
            if self.abandoned or time.monotonic() >= self.deadline:
                self.abandoned = True
                return False
            self.sending = True
            return True

    def abandon(self) -> bool:
        """On the loop: give up; False when the response is already with the relay."""
        with self.lock:
            if self.sending:
                return False
            self.abandoned = True
            return True


# The job of the decision running in this worker thread, for the transport to check.
_running = threading.local()


class PooledSmtpTransport(SmtpTransport):
    """Relay connections kept open on the service's event loop and reused, one response after another.

    A lone hook opens a connection per response; a service sending a hundred a second saves the
    connect, greeting, EHLO and QUIT of each. Worker threads hand the response to the loop and wait.
    A connection the relay closed while idle is noticed on reuse and replaced, once.
    """

    def __init__(self, settings: SmtpSettings, loop: asyncio.AbstractEventLoop, keep: int) -> None:
        super().__init__(settings)
        self.loop = loop
        self.keep = keep
        self.idle: list[aiosmtplib.SMTP] = []

    def send(self, outgoing: Outgoing, before_final_dot: Callable[[], None] | None = None) -> None:
        # Used only where a response is sent during its decision (the service queues them instead);
        # before_final_dot is not called: its database write would stall the loop.
        job: Job | None = getattr(_running, "job", None)
        if job is not None and not job.start_sending():
            raise DeadlineExceeded("deadline passed before the response went to the relay")
        asyncio.run_coroutine_threadsafe(self.send_pooled(outgoing), self.loop).result()

    async def send_pooled(self, outgoing: Sendable, handover: Handover | None = None) -> None:
        """On the loop: one response over an idle connection, or a fresh one."""
        while self.idle:
            client = self.idle.pop()
            if not client.is_connected:
                continue
            try:
                await self._mapped(self._transaction(client, outgoing, handover))
            except RelayUnavailable as exc:
                client.close()
                started = handover is not None and handover.done
                if isinstance(exc.__cause__, aiosmtplib.SMTPServerDisconnected) and not started:
                    break  # gone while idle: try a fresh connection
                raise
            except BaseException:
                client.close()
                raise
            self._keep(client)
            return
        client = self._client()
        try:
            await self._mapped(client.connect())
            await self._mapped(self._transaction(client, outgoing, handover))
        except BaseException:
            client.close()
            raise
        self._keep(client)

    def _keep(self, client: aiosmtplib.SMTP) -> None:
        if len(self.idle) < self.keep:
            self.idle.append(client)
        else:
            client.close()

    def close(self) -> None:
        """Close the idle connections; call on the loop."""
        while self.idle:
            self.idle.pop().close()


class WarmServices(Services):
    """Services for a long-running process: one pooled database engine shared by the worker threads.

    Responses are queued in the outbox, never sent while deciding: the worker's outbox sender sends
    them. ``key`` starts every claim and lease token of this process, so that the supervisor can
    free them at once should the process die.
    """

    queues_responses = True

    def __init__(self, settings: Settings, transport: PooledSmtpTransport, key: str) -> None:
        super().__init__(settings, transport=transport)
        self.relay = transport
        self.key = key
        self._lock = threading.Lock()
        self._audit = GroupCommit(self._write_audit)
        # Set by the outbox sender: called (from a worker thread) once a response is committed.
        self.on_queued: Callable[[OutboxRow], None] | None = None

    def claim_token(self) -> str:
        import secrets

        return self.key + secrets.token_hex((32 - len(self.key)) // 2)

    def before_queue(self) -> None:
        # A decision given up at its deadline (its client was answered 451) must not promise anything.
        job: Job | None = getattr(_running, "job", None)
        if job is not None and not job.start_sending():
            raise DeadlineExceeded("deadline passed before the response was queued")

    def record(self, row: DecisionRecord) -> None:
        # Rows of the decisions finishing together share one transaction.
        self._audit.record(row)

    def _write_audit(self, rows: Sequence[DecisionRecord]) -> None:
        self.store.record_many(rows)  # the store of the moment: it is opened again after a fault

    def outbox_lease(self, now: dt.datetime) -> Lease | None:
        # Born leased to this process's sender, which is handed the row at once (see queued).
        if self.on_queued is None:
            return None
        return Lease(lease_token(self.key), now + dt.timedelta(seconds=self.settings.outbox.lease))

    def queued(self, row: OutboxRow) -> None:
        if self.on_queued is None:
            return
        try:
            self.on_queued(row)
        except RuntimeError:
            # The loop has closed (the process is stopping): the response is committed, and its
            # lease expires for whichever sender runs next.
            log.warning("outbox: response %d left to the next sender (stopping)", row.id)

    @property
    def store(self) -> Store:
        # Opened (and its schema checked) on first use and again after a failure, so that a database
        # that was down at start or reload is picked up as soon as it is back.
        if self._store is None:
            with self._lock:
                if self._store is None:
                    from responder.store.database import Store

                    database = self.settings.database
                    store = Store.open(database.url, database.busy_timeout, pooled=True)
                    try:
                        store.check_schema()
                    except BaseException:
                        store.close()
                        raise
                    self._store = store
        return self._store

    @property
    def renderer(self) -> Renderer:
        # Rendered in a child process: a template whose cost depends on the message can cost that
        # one render, never the memory or the workers of the service.
        if self._renderer is None:
            with self._lock:
                if self._renderer is None:
                    from responder.decide.templates import Renderer

                    self._renderer = Renderer(self.settings.reply.templates_dir, isolated=True)
        return self._renderer

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            with self._lock:
                if self._signer is None:
                    from responder.mail.signing import Signer, use_openssl_for_rsa

                    use_openssl_for_rsa()
                    self._signer = Signer(self.settings.dkim)
        return self._signer

    def close(self) -> None:
        super().close()
        if self._renderer is not None:
            self._renderer.close()


class Generation:
    """One loaded configuration with its services and worker threads."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop, key: str) -> None:
        self.settings = settings
        self.loop = loop
        relay = PooledSmtpTransport(settings.smtp, loop, keep=settings.server.workers)
        self.services = WarmServices(settings, relay, key)
        self.services.resolver = _resolver(settings)
        self.executor = ThreadPoolExecutor(settings.server.workers, thread_name_prefix=_WORKER_PREFIX)
        self.headers = ThreadPoolExecutor(HEADER_THREADS, thread_name_prefix=_HEADER_PREFIX)
        self.xforward_hosts = [ipaddress.ip_network(h, strict=False) for h in settings.server.xforward_hosts]
        self.jobs: set[Job] = set()
        self.in_flight = 0
        self.retired = False

    def xforward_allowed(self, peer: object) -> bool:
        """UNIX socket clients (protected by the socket's mode) and the configured TCP peers."""
        if not isinstance(peer, tuple):
            return True
        try:
            address = ipaddress.ip_address(peer[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.xforward_hosts)

    def warm(self) -> None:
        """Open what the first message would otherwise wait for; a database fault is only logged."""
        # The engine imports these when a message first needs them (the pipe hook must not pay for
        # them up front); a service pays once, before it takes mail.
        for module in ("responder.verify.sender", "responder.decide.limits", "responder.mail.dsn"):
            importlib.import_module(module)
        try:
            _ = self.services.store
        except StoreUnavailable as exc:
            log.warning("database not ready (messages get 451 until it is): %s", exc)
        self.services.renderer.warm()
        if self.settings.dkim.keys_dir:
            # Keys are read once per generation (SIGHUP reads them again); a refused key is said now.
            for problem in self.services.signer.warm():
                log.error("DKIM key refused: %s", printable(problem))
            if self.services.resolver is not None:
                # In the background: a slow DNS must not hold up the start.
                threading.Thread(
                    target=self._check_dkim_records, name="responder-dkim-check", daemon=True
                ).start()

    def _check_dkim_records(self) -> None:
        from responder.verify.dns import Dns

        resolver, verify = self.services.resolver, self.settings.verify
        assert resolver is not None

        def lookup(name: str) -> list[bytes]:
            return Dns(resolver, verify.dns_timeout, time.monotonic() + verify.budget).txt(name)

        for problem in self.services.signer.check_records(lookup):
            log.warning("DKIM record %s", printable(problem))

    def close(self, wait: bool = True) -> None:
        """From a thread other than the loop's: wait for the workers, then close what they used.

        ``wait`` False (stopping after server.stop_timeout): decisions still running are given up, so
        that none of them sends, and left behind.
        """
        if not wait:
            for job in list(self.jobs):
                job.abandon()
        self.headers.shutdown(wait=wait, cancel_futures=not wait)
        self.executor.shutdown(wait=wait, cancel_futures=not wait)
        self.services.close()
        self.loop.call_soon_threadsafe(self.services.relay.close)


def _resolver(settings: Settings) -> dns.resolver.Resolver | None:
    """The generation's DNS resolver (resolv.conf read once); None leaves each check to report the fault."""
    from responder.verify.dns import make_resolver

    try:
        return make_resolver(settings.verify)
    except Exception as exc:
        log.warning("no DNS resolver for sender verification: %s", printable(str(exc)))
        return None


# decide_on_headers: the header rules ran and none fired, so the full decision starts after them.
HEADERS_PASSED = ""


def decide_on_headers(services: Services, inbound: Inbound) -> str | None:
    """The header rules alone (in a header thread): the LMTP reply line; HEADERS_PASSED or None
    (a fault: every rule again) to go on deciding."""
    ctx = Context(inbound, services)
    try:
        found = first_firing(ctx, HEADER_PHASE)
    except Exception:  # a fault in a rule, or the database asked for: the full decision meets it again
        return None
    if found is None:
        return HEADERS_PASSED
    return _settle(ctx, found)


def settle_on_headers(services: Services, inbound: Inbound, found: Firing) -> str:
    """Log and audit what a header rule run on the loop decided (in a header thread): the reply line."""
    return _settle(Context(inbound, services), found)


def _settle(ctx: Context, found: Firing) -> str:
    decision = Decision(found.rule.action, found.rule.reason, found.detail)
    log_decision(ctx.inbound, decision)
    record(ctx, decision)
    return Outcome(DECIDED, decision.action, decision.reason).lmtp_reply(
        printable(ctx.inbound.envelope.recipient)
    )


def header_rules(
    services: Services, inbound: Inbound, headers: ThreadPoolExecutor
) -> str | asyncio.Future[str | None]:
    """HEADERS_PASSED when the header rules ran on the loop and none fired; else the future of the
    header thread's reply line (see decide_on_headers)."""
    loop = asyncio.get_running_loop()
    found = _header_rules_here(services, inbound)
    if found is None:
        return HEADERS_PASSED
    if found is False:
        return loop.run_in_executor(headers, decide_on_headers, services, inbound)
    return loop.run_in_executor(headers, settle_on_headers, services, inbound, found)


def _header_rules_here(services: Services, inbound: Inbound) -> Firing | Literal[False] | None:
    """The rule that fired, None when none did, False when the header thread is to run them."""
    if len(inbound.raw) > INLINE_HEADERS:
        return False
    try:
        return first_firing(HeaderFacts(inbound, services.settings.deliver.max_received), HEADER_PHASE)
    except Exception:  # NeedsFullPath (a rule for one kind), or a fault: the header thread meets it
        return False


def decide(
    services: Services, inbound: Inbound, job: Job | None = None, phases: frozenset[str] = ALL_PHASES
) -> str:
    """Decide one recipient (in a worker thread); the LMTP reply line. Never a 5xx."""
    envelope = inbound.envelope
    rcpt = printable(envelope.recipient)
    if job is not None and job.abandoned:
        return f"451 4.4.7 <{rcpt}> deadline passed, try again later"  # nobody reads it any more
    _running.job = job
    try:
        return respond_safely(inbound, services, phases).lmtp_reply(rcpt)
    finally:
        _running.job = None


class Service:
    """The listening socket, the sessions on it, and the current generation."""

    def __init__(
        self,
        config_path: Path,
        settings: Settings,
        listeners: list[socketlib.socket] | None = None,
        key: str | None = None,
        ready: Callable[[], None] | None = None,
        seat: Seat | None = None,
    ) -> None:
        """``listeners``: sockets a supervisor bound before forking this worker (which then neither
        binds nor removes the socket file, and stops when the supervisor is gone); None binds here.
        ``seat``: this worker's count of connections on the supervisor's board, shared by all."""
        if settings.server.socket is None:
            raise ServeError("server.socket is not set: nothing to listen on")
        import secrets

        self.config_path = config_path
        self.listeners = listeners
        self.key = key or secrets.token_hex(4)
        self.ready = ready
        self.seat = seat
        self.parent = os.getppid()
        self.sender: OutboxSender | None = None
        self.settings = settings
        self.generation: Generation
        self.listen = settings.server.socket
        self.hostname = settings.smtp.hostname or socketlib.gethostname()
        self.sessions = runtime.Connections()
        self.stopping = asyncio.Event()
        self.background: set[asyncio.Task[None]] = set()
        # Set once stopped: worker threads may still be running decisions that were given up.
        self.left_behind = False

    # -- life cycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.generation = Generation(self.settings, loop, self.key)
        await asyncio.to_thread(self.generation.warm)
        servers = await self._bind()
        signals = runtime.Signals(self.stop, self.reload, "LMTP")
        self.sender = OutboxSender(lambda: self.generation, self.key)
        self.generation.services.on_queued = self.sender.nudge
        self.sender.start()
        settings = self.generation.settings.server
        if self.listeners is None:
            log.info("listening for LMTP on %s (workers=%d)", self.listen, settings.workers)
        else:
            watch = loop.create_task(self._watch_parent())
            self.background.add(watch)
            watch.add_done_callback(self.background.discard)
        if self.ready is not None:
            self.ready()
        try:
            await self.stopping.wait()
        finally:
            signals.stop_reloading()
            for server in servers:
                server.close()
            if self.listeners is None:
                sockets.unlink(self.listen)
        # SIGTERM and SIGINT stay caught while draining: a second one must not cut messages short.
        await self._drain(self.generation.settings.server.stop_timeout)
        # What was committed is sent now if the relay takes it, else by whichever process runs next.
        current = self.generation.settings
        await self.sender.stop(min(current.smtp.timeout, current.server.stop_timeout))
        # Whatever still runs in a worker now was given up (its client was answered or cut off).
        self.left_behind = True
        await asyncio.to_thread(self.generation.close, False)
        signals.remove()
        log.info("stopped")

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stopping: finishing the messages in flight")
            self.stopping.set()

    async def _drain(self, timeout: float) -> None:
        """Wait for the sessions and reloads in flight; cut off those still busy at ``timeout``."""

        def abandon() -> None:
            # Their decisions are given up: none of them may send after its client lost the answer.
            for job in list(self.generation.jobs):
                job.abandon()

        late = await runtime.drain(set(self.sessions.open) | self.background, timeout, abandon)
        if late:
            log.warning("%d sessions still busy after %gs; closed", late, timeout)

    async def _bind(self) -> list[asyncio.AbstractServer | sockets.SharedListener]:
        if self.listeners is not None:
            return [sockets.SharedListener(sock, self._session, self.seat) for sock in self.listeners]
        mode = self.generation.settings.server.socket_mode
        try:
            return [await sockets.listen(self.listen, self._session, mode)]
        except OSError as exc:
            raise ServeError(f"cannot listen on {self.listen}: {exc.strerror or exc}") from None

    async def _watch_parent(self) -> None:
        """A worker whose supervisor is gone (killed) stops: finishes its messages and exits."""
        while not self.stopping.is_set():
            await asyncio.sleep(0.5)
            if os.getppid() != self.parent:
                log.warning("the supervisor is gone: stopping")
                self.stop()

    # -- reload ---------------------------------------------------------------------------------

    def reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _reload(self) -> None:
        try:
            settings = await asyncio.to_thread(load, self.config_path)
        except ConfigError as exc:
            log.error("reload failed, the running configuration stays: %s", exc)
            return
        if settings.server.socket != self.listen:
            log.warning(
                "server.socket changed to %s: restart the service to listen there", settings.server.socket
            )
        setup_logging(settings.log)
        fresh = Generation(settings, asyncio.get_running_loop(), self.key)
        await asyncio.to_thread(fresh.warm)
        if self.sender is not None:
            fresh.services.on_queued = self.sender.nudge
        old, self.generation = self.generation, fresh
        old.retired = True
        if old.in_flight == 0:
            await asyncio.to_thread(old.close)
        log.info("configuration reloaded from %s", self.config_path)

    # -- sessions -------------------------------------------------------------------------------

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else None
        try:
            limit = self.generation.settings.server.max_connections
            if self.stopping.is_set() or not self.sessions.make_room(client, limit):
                # Said at once, so that a client decides for itself or retries instead of waiting.
                busy = "shutting down" if self.stopping.is_set() else "too many connections"
                writer.write(f"421 4.3.2 Service {busy}, try again later\r\n".encode())
                writer.close()
                return
            self.sessions.add(task, client)
            settings = self.generation.settings.server
            session = Session(
                reader,
                writer,
                self.deliver,
                hostname=self.hostname,
                max_message_size=settings.max_message_size,
                idle_timeout=settings.idle_timeout,
                stopping=self.stopping,
                xforward=self.generation.xforward_allowed(peer),
            )
            self.sessions.add(task, client, session)
            await session.run()
        except (SessionClosed, ConnectionError) as exc:
            log.info("LMTP client went away: %s", printable(str(exc)) or type(exc).__name__)
            writer.close()
        except Exception:
            log.exception("LMTP session failed")
            writer.close()
        finally:
            self.sessions.remove(task)

    async def deliver(self, transaction: Transaction, data: bytes) -> list[str]:
        """One status per recipient, decided concurrently on the generation current at DATA."""
        generation = self.generation
        generation.in_flight += 1
        try:
            # One message for all its recipients: parsed once, its sender verified once.
            message = Inbound(
                Envelope(
                    sender=transaction.sender,
                    recipient="",
                    client_address=transaction.client_address,
                    helo=transaction.helo,
                    queue_id=transaction.queue_id,
                ),
                data,
            )
            recipients = transaction.recipients
            if len(recipients) == 1:  # most messages: no gather, no task
                only = recipients[0]
                return [await self._decide(generation, message.for_recipient(only.address, only.original))]
            replies = await asyncio.gather(
                *(self._decide(generation, message.for_recipient(r.address, r.original)) for r in recipients)
            )
            return list(replies)
        finally:
            generation.in_flight -= 1
            if generation.retired and generation.in_flight == 0:
                await asyncio.to_thread(generation.close)

    async def _decide(self, generation: Generation, inbound: Inbound) -> str:
        rcpt = inbound.envelope.recipient
        loop = asyncio.get_running_loop()
        deadline = generation.settings.deliver.deadline
        started = time.monotonic()
        job = Job(started + deadline)
        generation.jobs.add(job)
        try:
            early = header_rules(generation.services, inbound, generation.headers)
            if isinstance(early, str) or await _within(early, deadline):
                status = early if isinstance(early, str) else early.result()
                if status:
                    return status
                # The header rules are not run a second time once they ran through.
                phases = AFTER_HEADERS if status == HEADERS_PASSED else ALL_PHASES
                work = loop.run_in_executor(
                    generation.executor, decide, generation.services, inbound, job, phases
                )
                in_time = await _within(work, job.deadline - time.monotonic())
                if not in_time and not job.abandon():
                    # The response is with the relay: its answer decides, within the relay's timeout.
                    in_time = await _within(work, generation.settings.smtp.timeout)
                if in_time:
                    return work.result()
            job.abandon()
            log.error("deferring: deadline of %gs passed for <%s>", deadline, printable(rcpt))
            return f"451 4.4.7 <{printable(rcpt)}> deadline passed, try again later"
        finally:
            generation.jobs.discard(job)
            events.observer.decision_seconds(time.monotonic() - started)


async def _within(future: asyncio.Future[Any], timeout: float) -> bool:
    """Whether ``future`` is done within ``timeout`` seconds; it is never cancelled (a thread runs it).

    What asyncio.wait does for one future, without its sets, tasks and second future: this runs
    twice for every message.
    """
    if future.done():
        return True
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not woken.done():
            woken.set_result(None)

    timer = loop.call_later(max(0.0, timeout), wake)
    future.add_done_callback(wake)
    try:
        await woken
    finally:
        timer.cancel()
        future.remove_done_callback(wake)
    return future.done()


def run_worker(service: Service) -> None:
    """Run one service process's loop (uvloop's: about a tenth less CPU per message) to the end."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(service.run())
    if service.left_behind and _busy_workers():
        # Waiting for them would break server.stop_timeout; they were given up and cannot send.
        log.warning("exiting with decisions still running in worker threads")
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)


def _busy_workers() -> list[threading.Thread]:
    deadline = time.monotonic() + 0.5
    while True:
        busy = [
            thread
            for thread in threading.enumerate()
            if thread.name.startswith((_WORKER_PREFIX, _HEADER_PREFIX)) and thread.is_alive()
        ]
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(0.05)
