"""``responder serve``: the engine kept warm behind an LMTP socket, for Postfix and the thin client.

One asyncio loop speaks LMTP (responder.lmtp); each recipient is decided by engine.respond in a worker
thread, at most ``server.workers`` at a time, with the database pool, templates and relay settings of
one configuration "generation". SIGHUP loads the configuration again into a new generation: messages
already in flight finish on the old one, which is closed when its last message is done. SIGTERM (and
SIGINT) stop accepting, finish the messages in flight, and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket as socketlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import aiosmtplib

from responder.config import ConfigError, Settings, SmtpSettings, load
from responder.context import Services
from responder.engine import respond
from responder.errors import RelayUnavailable, StoreUnavailable, TransientError
from responder.lmtp import Recipient, Session, Transaction
from responder.lmtpclient import parse_socket
from responder.logsetup import setup_logging
from responder.message import Envelope, Inbound
from responder.transport import SmtpTransport
from responder.unixsocket import clear_stale_socket

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from responder.compose import Outgoing
    from responder.store import Store

log = logging.getLogger("responder")

# The socket file is chmod-ed after bind; meanwhile only its owner may connect.
_UMASK = 0o077


class ServeError(Exception):
    """The service cannot start: no socket configured, or the socket cannot be bound."""


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
        # before_final_dot is not called: its database write would stall the loop; the engine then
        # keeps the claims after the answer, as it does for any transport that does not call it.
        asyncio.run_coroutine_threadsafe(self.send_pooled(outgoing), self.loop).result()

    async def send_pooled(self, outgoing: Outgoing) -> None:
        while self.idle:
            client = self.idle.pop()
            if not client.is_connected:
                continue
            try:
                await self._mapped(self._transaction(client, outgoing))
            except RelayUnavailable as exc:
                client.close()
                if isinstance(exc.__cause__, aiosmtplib.SMTPServerDisconnected):
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
            await self._mapped(self._transaction(client, outgoing))
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
    """Services for a long-running process: one pooled database engine shared by the worker threads."""

    def __init__(self, settings: Settings, transport: PooledSmtpTransport) -> None:
        super().__init__(settings, transport=transport)
        self.relay = transport
        self._lock = threading.Lock()

    @property
    def store(self) -> Store:
        # Opened (and its schema checked) on first use and again after a failure, so that a database
        # that was down at start or reload is picked up as soon as it is back.
        if self._store is None:
            with self._lock:
                if self._store is None:
                    from responder.store import Store

                    database = self.settings.database
                    store = Store.open(database.url, database.busy_timeout, pooled=True)
                    try:
                        store.check_schema()
                    except BaseException:
                        store.close()
                        raise
                    self._store = store
        return self._store


class Generation:
    """One loaded configuration with its services and worker threads."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        relay = PooledSmtpTransport(settings.smtp, loop, keep=settings.server.workers)
        self.services = WarmServices(settings, relay)
        self.executor = ThreadPoolExecutor(settings.server.workers, thread_name_prefix="responder")
        self.in_flight = 0
        self.retired = False

    def warm(self) -> None:
        """Open what the first message would otherwise wait for; a database fault is only logged."""
        # The engine imports these when a message first needs them (the pipe hook must not pay for
        # them up front); a service pays once, before it takes mail.
        for module in ("responder.verify", "responder.limits", "responder.dsn"):
            importlib.import_module(module)
        try:
            _ = self.services.store
        except StoreUnavailable as exc:
            log.warning("database not ready (messages get 451 until it is): %s", exc)
        _ = self.services.renderer

    def close(self) -> None:
        """From a thread other than the loop's: wait for the workers, then close what they used."""
        self.executor.shutdown(wait=True)
        self.services.close()
        self.loop.call_soon_threadsafe(self.services.relay.close)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def decide(services: Services, envelope: Envelope, raw: bytes) -> str:
    """Decide one recipient (in a worker thread); the LMTP reply line. Never a 5xx."""
    rcpt = envelope.recipient
    try:
        decision = respond(Inbound(envelope, raw), services)
    except TransientError as exc:
        log.error("deferring: %s", exc)
        return f"451 4.3.0 <{rcpt}> {_one_line(str(exc)) or 'try again later'}"
    except Exception:
        log.exception(
            "queue_id=%s sender=<%s> recipient=<%s> action=drop reason=internal-error",
            envelope.queue_id or "-",
            envelope.sender,
            rcpt,
        )
        return f"250 2.0.0 <{rcpt}> drop (internal-error)"
    reason = f" ({decision.reason})" if decision.reason else ""
    return f"250 2.0.0 <{rcpt}> {decision.action}{reason}"


class Service:
    """The listening socket, the sessions on it, and the current generation."""

    def __init__(self, config_path: Path, settings: Settings) -> None:
        self.config_path = config_path
        self.settings = settings
        self.generation: Generation
        self.listen = settings.server.socket
        self.hostname = settings.smtp.hostname or socketlib.gethostname()
        self.sessions: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        self.slots = asyncio.Semaphore(settings.server.max_connections)
        self.background: set[asyncio.Task[None]] = set()

    # -- life cycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.generation = Generation(self.settings, loop)
        await asyncio.to_thread(self.generation.warm)
        server = await self._bind()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        settings = self.generation.settings.server
        log.info("listening for LMTP on %s (workers=%d)", self.listen, settings.workers)
        try:
            await self.stopping.wait()
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            server.close()
            self._unlink_socket()
        # SIGTERM and SIGINT stay caught while draining: a second one must not cut messages short.
        await self._drain(self.generation.settings.server.stop_timeout)
        await asyncio.to_thread(self.generation.close)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        log.info("stopped")

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stopping: finishing the messages in flight")
            self.stopping.set()

    async def _drain(self, timeout: float) -> None:
        pending = set(self.sessions) | set(self.background)
        if not pending:
            return
        _done, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            log.warning("%d sessions still busy after %gs; closed", len(late), timeout)
            await asyncio.wait(late, timeout=5)

    async def _bind(self) -> asyncio.AbstractServer:
        spec = parse_socket(self.listen)
        if spec is None:
            raise ServeError("server.socket is not set: nothing to listen on")
        family, address = spec
        try:
            if family == socketlib.AF_UNIX:
                assert isinstance(address, str)
                clear_stale_socket(address)
                previous = os.umask(_UMASK)
                try:
                    server = await asyncio.start_unix_server(self._session, path=address)
                finally:
                    os.umask(previous)
                os.chmod(address, self.generation.settings.server.socket_mode)
                return server
            assert isinstance(address, tuple)
            return await asyncio.start_server(self._session, address[0], address[1], reuse_address=True)
        except OSError as exc:
            raise ServeError(f"cannot listen on {self.listen}: {exc.strerror or exc}") from None

    def _unlink_socket(self) -> None:
        spec = parse_socket(self.listen)
        if spec is not None and spec[0] == socketlib.AF_UNIX:
            assert isinstance(spec[1], str)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spec[1])

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
        fresh = Generation(settings, asyncio.get_running_loop())
        await asyncio.to_thread(fresh.warm)
        old, self.generation = self.generation, fresh
        old.retired = True
        if old.in_flight == 0:
            await asyncio.to_thread(old.close)
        log.info("configuration reloaded from %s", self.config_path)

    # -- sessions -------------------------------------------------------------------------------

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.sessions.add(task)
        try:
            async with self.slots:
                if self.stopping.is_set():
                    writer.write(b"421 4.3.2 Service shutting down\r\n")
                    writer.close()
                    return
                settings = self.generation.settings.server
                session = Session(
                    reader,
                    writer,
                    self.deliver,
                    hostname=self.hostname,
                    max_message_size=settings.max_message_size,
                    idle_timeout=settings.idle_timeout,
                    stopping=self.stopping,
                )
                await session.run()
        except Exception:
            log.exception("LMTP session failed")
            writer.close()
        finally:
            self.sessions.discard(task)

    async def deliver(self, transaction: Transaction, data: bytes) -> list[str]:
        """One status per recipient, decided concurrently on the generation current at DATA."""
        generation = self.generation
        generation.in_flight += 1
        try:
            # Line ends as pipe(8) gives them to the hook, so both paths see the same bytes.
            raw = data.replace(b"\r\n", b"\n")
            replies = await asyncio.gather(
                *(self._decide(generation, transaction, rcpt, raw) for rcpt in transaction.recipients)
            )
            return list(replies)
        finally:
            generation.in_flight -= 1
            if generation.retired and generation.in_flight == 0:
                await asyncio.to_thread(generation.close)

    async def _decide(
        self, generation: Generation, transaction: Transaction, rcpt: Recipient, raw: bytes
    ) -> str:
        envelope = Envelope(
            sender=transaction.sender,
            recipient=rcpt.address,
            original_recipient=rcpt.original,
            client_address=transaction.client_address,
            helo=transaction.helo,
            queue_id=transaction.queue_id,
        )
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(generation.executor, decide, generation.services, envelope, raw)
        deadline = generation.settings.deliver.deadline
        try:
            return await asyncio.wait_for(job, deadline)
        except TimeoutError:
            log.error("deferring: deadline of %gs passed for <%s>", deadline, rcpt.address)
            return f"451 4.4.7 <{rcpt.address}> deadline passed, try again later"


def serve(config_path: Path, settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; ServeError when the service cannot start."""
    setup_logging(settings.log)
    if not settings.server.socket:
        raise ServeError("server.socket is not set: nothing to listen on")
    asyncio.run(Service(config_path, settings).run())
