"""Postfix policy delegation server: refuse mail to retired addresses at RCPT, before it is queued.

The protocol (Postfix SMTPD_POLICY_README): the client sends ``name=value`` lines ended by an empty
line; the server answers ``action=...`` and an empty line; many requests share one connection. The
answers are only ever REJECT (a retired recipient), DUNNO (no opinion: every other restriction still
applies) or, on a database fault when so configured, DEFER_IF_PERMIT. Never OK or PERMIT: nothing this
server says can make Postfix accept mail that another restriction would refuse.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from responder.config.settings import Listen, PolicySettings, Settings
from responder.daemons.sockets import clear_stale_socket
from responder.decide.context import utcnow
from responder.decide.records import Retirement
from responder.mail.message import normalize_address

log = logging.getLogger("responder")

EX_OK = 0
EX_FAILURE = 1

DUNNO = "DUNNO"
DEFER_TEXT = "DEFER_IF_PERMIT 4.3.0 Temporary lookup failure"
# Postfix's longest attributes (certificate subjects, SASL names) stay far below these.
MAX_LINE = 4096
MAX_REQUEST = 64 * 1024
# An oversized request is read to its end, so that the connection stays in step; up to this much.
MAX_DRAIN = 1024 * 1024
LOOKUP_THREADS = 4
# In-flight requests get this long to finish on SIGTERM before their connections are cut.
STOP_GRACE = 5.0
_NAME = re.compile(rb"^[a-z_][a-z0-9_]*$")

Lookup = Callable[[str], Retirement | None]


class _Closed(Exception):
    """The client went away, or must be dropped: the connection ends without an answer."""


@dataclass
class Request:
    attributes: dict[str, str] = field(default_factory=dict)
    # Why the request cannot be used; it is then answered DUNNO.
    problem: str = ""


class _Lines:
    """Lines from a client, each at most MAX_LINE bytes; what a client pipelines stays buffered."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buffer = bytearray()

    async def wait(self) -> bool:
        """Wait until there is something to read; False at the end of the stream."""
        if not self.buffer:
            self.buffer += await self.reader.read(65536)
        return bool(self.buffer)

    async def readline(self) -> bytes | int:
        """The next line with its LF; the length of a line over MAX_LINE, which is dropped; or at the
        end of the stream, what is left (no LF)."""
        dropped = 0
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                if dropped or len(line) > MAX_LINE:
                    return dropped + len(line)
                return line
            if len(self.buffer) > MAX_LINE:
                dropped += len(self.buffer)
                self.buffer.clear()
                if dropped > MAX_DRAIN:
                    return dropped
            chunk = await self.reader.read(65536)
            if not chunk:
                rest = bytes(self.buffer)
                self.buffer.clear()
                return rest
            self.buffer += chunk


class _Throttle:
    """At most one log line per kind of trouble per minute, with a count of those left out."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self.last: dict[str, float] = {}
        self.skipped: dict[str, int] = {}

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -self.every) < self.every:
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
            return
        skipped = self.skipped.pop(kind, 0)
        self.last[kind] = now
        suffix = f" ({skipped} more since the last such line)" if skipped else ""
        log.warning(message + suffix, *args)


class PolicyServer:
    """Serves one listening socket until ``stop()``; ``lookup`` runs in worker threads."""

    def __init__(
        self,
        settings: PolicySettings,
        lookup: Lookup,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.lookup = lookup
        self.clock = clock
        self.executor = ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="policy-lookup")
        self.throttle = _Throttle()
        self.server: asyncio.Server | None = None
        self.listen: Listen | None = None
        self.connections: dict[asyncio.Task[None], bool] = {}  # task -> busy with a request
        # When each connection last finished a request (or opened): the longest idle makes room.
        self.idle_since: dict[asyncio.Task[None], float] = {}
        self.peers: dict[asyncio.Task[None], str | None] = {}
        self.stopping = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self, listen: Listen) -> str:
        """Bind ``listen``; return where it listens (with the port the system chose for port 0)."""
        self.listen = listen
        if listen.path:
            clear_stale_socket(listen.path)
            # Until the chmod below, only the owner may connect.
            previous = os.umask(0o077)
            try:
                self.server = await asyncio.start_unix_server(self._connection, path=listen.path)
            finally:
                os.umask(previous)
            os.chmod(listen.path, self.settings.socket_mode)
            return f"unix:{listen.path}"
        self.server = await asyncio.start_server(
            self._connection, host=listen.host, port=listen.port, reuse_address=True
        )
        bound = [sock.getsockname() for sock in self.server.sockets]
        return ", ".join(f"[{b[0]}]:{b[1]}" if ":" in b[0] else f"{b[0]}:{b[1]}" for b in bound)

    def stop(self) -> None:
        self.stopping.set()

    async def serve(self) -> None:
        """Run until ``stop()``; then stop listening, let requests in flight finish, and close."""
        assert self.server is not None
        await self.stopping.wait()
        self.server.close()
        if self.listen is not None and self.listen.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.listen.path)
        for task, busy in list(self.connections.items()):
            if not busy:
                task.cancel()
        pending = list(self.connections)
        if pending:
            _done, still = await asyncio.wait(pending, timeout=STOP_GRACE)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still)
        await self.server.wait_closed()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- one connection -------------------------------------------------------------------------------

    def _make_room(self, client: str | None) -> bool:
        """Room for one more connection of ``client`` (a TCP peer's address; None on a UNIX socket).

        Idle connections (a client that connected and sends nothing) must not lock smtpd out: at
        max_connections the longest idle one is closed, and one TCP peer holds at most half of
        them, making room among its own. False when every candidate is busy.
        """
        limit = self.settings.max_connections
        if client is not None:
            mine = [task for task, peer in self.peers.items() if peer == client]
            if len(mine) >= max(1, limit // 2):
                return self._close_idle(mine)
        if len(self.connections) < limit:
            return True
        return self._close_idle(list(self.connections))

    def _close_idle(self, candidates: list[asyncio.Task[None]]) -> bool:
        idle = [task for task in candidates if not self.connections.get(task, True) and not task.done()]
        if not idle:
            return False
        oldest = min(idle, key=lambda task: self.idle_since.get(task, 0.0))
        self.connections.pop(oldest, None)
        self.peers.pop(oldest, None)
        oldest.cancel()
        return True

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else None
        if self.stopping.is_set() or not self._make_room(client):
            self.throttle.warn(
                "connections", "policy: %d connections open, refusing another", len(self.connections)
            )
            writer.close()
            return
        self.connections[task] = False
        self.peers[task] = client
        self.idle_since[task] = time.monotonic()
        lines = _Lines(reader)
        try:
            while not self.stopping.is_set():
                request = await self._read(lines, task)
                if request is None:
                    break
                action = await self._answer(request)
                writer.write(f"action={action}\n\n".encode("ascii"))
                async with asyncio.timeout(self.settings.request_timeout):
                    await writer.drain()
                self.connections[task] = False
                self.idle_since[task] = time.monotonic()
        except _Closed as exc:
            if str(exc):
                self.throttle.warn("closed", "policy: dropping a connection: %s", exc)
        except TimeoutError:
            self.throttle.warn("timeout", "policy: a client was too slow; connection closed")
        except (ConnectionError, OSError) as exc:
            log.debug("policy: connection lost: %s", exc)
        except asyncio.CancelledError:
            if self.stopping.is_set():
                raise
            log.debug("policy: idle connection closed to make room")
        finally:
            self.connections.pop(task, None)
            self.idle_since.pop(task, None)
            self.peers.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _read(self, lines: _Lines, task: asyncio.Task[None]) -> Request | None:
        """The next request, or None when the client closed the connection between requests."""
        # Idle between requests: Postfix keeps connections open for up to smtpd_policy_service_max_idle.
        try:
            async with asyncio.timeout(self.settings.idle_timeout):
                more = await lines.wait()
        except TimeoutError:
            log.debug("policy: idle connection closed")
            return None
        if not more:
            return None
        self.connections[task] = True
        async with asyncio.timeout(self.settings.request_timeout):
            return await self._read_request(lines)

    @staticmethod
    async def _read_request(lines: _Lines) -> Request:
        request = Request()
        size = 0
        while True:
            line = await lines.readline()
            if isinstance(line, int):
                # Longer than MAX_LINE and dropped; read on to the empty line to stay in step.
                size += line
                request.problem = request.problem or f"a line longer than {MAX_LINE} bytes"
            elif not line.endswith(b"\n"):
                raise _Closed("client closed the connection mid-request")
            else:
                size += len(line)
                if line in (b"\n", b"\r\n"):
                    if not request.attributes and not request.problem:
                        request.problem = "an empty request"
                    return request
            if size > MAX_DRAIN:
                raise _Closed(f"request longer than {MAX_DRAIN} bytes")
            if size > MAX_REQUEST:
                request.problem = request.problem or f"request longer than {MAX_REQUEST} bytes"
            if request.problem or isinstance(line, int):
                continue
            name, equals, value = line.rstrip(b"\r\n").partition(b"=")
            if not equals or not _NAME.match(name):
                request.problem = "a line that is not name=value"
                continue
            key = name.decode("ascii")
            if key in request.attributes:
                request.problem = f"attribute {key} given twice"
                continue
            request.attributes[key] = value.decode("utf-8", "replace")

    # -- the decision ---------------------------------------------------------------------------------

    async def _answer(self, request: Request) -> str:
        attributes = request.attributes
        if request.problem:
            self.throttle.warn(
                "malformed", "policy: malformed request (%s); answering DUNNO", request.problem
            )
            return DUNNO
        if attributes.get("request") != "smtpd_access_policy":
            self.throttle.warn(
                "malformed", "policy: unknown request type %r; answering DUNNO", attributes.get("request")
            )
            return DUNNO
        if attributes.get("protocol_state", "").upper() != "RCPT":
            return DUNNO
        # normalize_address makes "carol"@example.com carol@example.com: one mailbox (RFC 5321 4.1.2).
        recipient = normalize_address(attributes.get("recipient", ""))
        if recipient is None:
            return DUNNO
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.lookup_timeout):
                retirement = await loop.run_in_executor(self.executor, self.lookup, recipient)
        except Exception as exc:
            answer = DUNNO if self.settings.on_error == "dunno" else DEFER_TEXT
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            self.throttle.warn(
                "database", "policy: lookup failed (%s); answering %s", reason, answer.split()[0]
            )
            return answer
        if retirement is None or not retirement.active(self.clock()):
            return DUNNO
        action = f"REJECT {retirement.reject_text()}"
        log.info(
            "policy: queue_id=%s sender=<%s> recipient=<%s> client=%s action=reject status=%s",
            attributes.get("queue_id") or "-",
            _loggable(attributes.get("sender", "")),
            recipient,
            _loggable(attributes.get("client_address", "")) or "-",
            action.split()[1],
        )
        return action


def _loggable(value: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in value)[:320]


# -- the command --------------------------------------------------------------------------------------


async def _serve(server: PolicyServer, listen: Listen) -> None:
    where = await server.start(listen)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.stop)
    # Sent by service managers to reload; the lookups read the database, so there is nothing to reload.
    loop.add_signal_handler(
        signal.SIGHUP, log.info, "policy: SIGHUP: nothing to reload (restart to apply configuration changes)"
    )
    log.info("policy: listening on %s (on database errors: %s)", where, server.settings.on_error)
    await server.serve()
    log.info("policy: stopped")


def run_policy(args: argparse.Namespace, settings: Settings) -> int:
    """``responder policy``: serve until SIGTERM; 0 after a clean stop, 1 when it cannot start."""
    from responder.errors import StoreUnavailable
    from responder.logsetup import setup_logging
    from responder.store.database import Store
    from responder.store.schema import SCHEMA_REVISION

    setup_logging(settings.log)
    policy = settings.policy
    listen: Listen = args.listen or policy.listen
    store = Store.open(settings.database.url, settings.database.busy_timeout, pooled=True)
    try:
        try:
            revision = store.current_revision()
        except StoreUnavailable as exc:
            log.warning("policy: %s; answering %s until it is back", exc, policy.on_error.upper())
        else:
            if revision != SCHEMA_REVISION:
                log.error(
                    "policy: database schema is %s, this responder needs %s: run `responder db upgrade`",
                    revision or "empty",
                    SCHEMA_REVISION,
                )
                return EX_FAILURE

        def lookup(address: str) -> Retirement | None:
            return store.retirement_for([address])

        try:
            asyncio.run(_serve(PolicyServer(policy, lookup), listen))
        except OSError as exc:
            log.error("policy: cannot listen on %s: %s", listen, exc)
            return EX_FAILURE
        return EX_OK
    finally:
        store.close()
