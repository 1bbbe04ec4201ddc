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
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from responder.config.settings import PolicySettings, Settings
from responder.config.values import SocketSpec
from responder.daemons import runtime, sockets
from responder.daemons.lines import Lines
from responder.decide.context import utcnow
from responder.decide.records import Retirement
from responder.mail.message import normalize_address

log = logging.getLogger("responder")

DUNNO = "DUNNO"
DEFER_TEXT = "DEFER_IF_PERMIT 4.3.0 Temporary lookup failure"
# Postfix's longest attributes (certificate subjects, SASL names) stay far below these.
MAX_LINE = 4096
MAX_REQUEST = 64 * 1024
# An oversized request is read to its end, so that the connection stays in step; up to this much.
MAX_DRAIN = 1024 * 1024
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


class _Reader:
    """The request lines of one connection."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.lines = Lines(MAX_LINE, give_up=MAX_DRAIN)

    async def fill(self, dropping: bool = False) -> bool:
        chunk = await self.reader.read(65536)
        self.lines.buffer += chunk
        return bool(chunk)

    async def wait(self) -> bool:
        """Wait until there is something to read; False at the end of the stream."""
        return bool(self.lines.buffer) or await self.fill()

    async def readline(self) -> bytes | int:
        return await self.lines.readline(self.fill)


class _Slot:
    """One connection as the connection cap sees it."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self.task = task
        self.idle = True
        self.idle_since = time.monotonic()

    def evict(self) -> None:
        self.task.cancel()


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
        self.executor = ThreadPoolExecutor(settings.lookup_threads, thread_name_prefix="policy-lookup")
        self.throttle = _Throttle()
        self.server: asyncio.Server | None = None
        self.listen: SocketSpec | None = None
        self.connections = runtime.Connections()
        self.slots: dict[asyncio.Task[None], _Slot] = {}
        self.stopping = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self, listen: SocketSpec) -> str:
        """Bind ``listen``; return where it listens (with the port the system chose for port 0)."""
        self.listen = listen
        self.server = await sockets.listen(listen, self._connection, self.settings.socket_mode)
        return sockets.bound_address(self.server, listen)

    def stop(self) -> None:
        self.stopping.set()

    async def serve(self) -> None:
        """Run until ``stop()``; then stop listening, let requests in flight finish, and close."""
        assert self.server is not None
        await self.stopping.wait()
        self.server.close()
        if self.listen is not None:
            sockets.unlink(self.listen)
        for slot in list(self.slots.values()):
            if slot.idle:
                slot.evict()
        await runtime.drain(set(self.slots), STOP_GRACE)
        await self.server.wait_closed()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- one connection -------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else None
        if self.stopping.is_set() or not self.connections.make_room(client, self.settings.max_connections):
            self.throttle.warn(
                "connections", "policy: %d connections open, refusing another", len(self.connections)
            )
            writer.close()
            return
        slot = self.slots[task] = _Slot(task)
        self.connections.add(task, client, slot)
        lines = _Reader(reader)
        try:
            while not self.stopping.is_set():
                request = await self._read(lines, slot)
                if request is None:
                    break
                action = await self._answer(request)
                writer.write(f"action={action}\n\n".encode("ascii"))
                async with asyncio.timeout(self.settings.request_timeout):
                    await writer.drain()
                slot.idle, slot.idle_since = True, time.monotonic()
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
            self.connections.remove(task)
            self.slots.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _read(self, lines: _Reader, slot: _Slot) -> Request | None:
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
        slot.idle = False
        async with asyncio.timeout(self.settings.request_timeout):
            return await self._read_request(lines)

    @staticmethod
    async def _read_request(lines: _Reader) -> Request:
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


async def _serve(server: PolicyServer, listen: SocketSpec) -> None:
    where = await server.start(listen)
    # The lookups read the database each time: there is nothing to reload.
    signals = runtime.Signals(server.stop, None, "policy")
    log.info("policy: listening on %s (on database errors: %s)", where, server.settings.on_error)
    try:
        await server.serve()
    finally:
        signals.remove()
    log.info("policy: stopped")


def run_policy(args: argparse.Namespace, settings: Settings) -> int:
    """``responder policy``: serve until SIGTERM; 0 after a clean stop, 1 when it cannot start."""
    from responder.errors import ExitCode
    from responder.logsetup import setup_logging
    from responder.store.database import Store

    setup_logging(settings.log)
    policy = settings.policy
    listen: SocketSpec = args.listen or policy.listen
    store = Store.open(settings.database.url, settings.database.busy_timeout, pooled=True)
    try:
        if not runtime.check_schema(store, "policy", f"answering {policy.on_error.upper()} until it is back"):
            return ExitCode.EX_FAILURE

        def lookup(address: str) -> Retirement | None:
            return store.retirement_for([address])

        try:
            asyncio.run(_serve(PolicyServer(policy, lookup), listen))
        except OSError as exc:
            log.error("policy: cannot listen on %s: %s", listen, exc)
            return ExitCode.EX_FAILURE
        return ExitCode.EX_OK
    finally:
        store.close()
