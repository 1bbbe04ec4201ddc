"""The daemons' listening sockets: a UNIX socket bound owner-only and then chmod-ed, or a TCP port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import stat
from collections.abc import Awaitable, Callable

from responder.config.values import SocketSpec
from responder.daemons.balance import Seat

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# Until the chmod after bind, only the socket's owner may connect.
_UMASK = 0o077

log = logging.getLogger(__name__)


def clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody answers on; OSError for a live server or any other kind of file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"another server is listening on {path}")


async def bind_unix(path: str, handler: Handler, mode: int) -> asyncio.Server:
    """Listen on ``path`` (taking over a stale socket) with file mode ``mode``, never briefly wider."""
    clear_stale_socket(path)
    previous = os.umask(_UMASK)
    try:
        server = await asyncio.start_unix_server(handler, path=path)
    finally:
        os.umask(previous)
    try:
        os.chmod(path, mode)
    except OSError:
        server.close()
        unlink(SocketSpec(path=path))
        raise
    return server


async def listen(spec: SocketSpec, handler: Handler, mode: int) -> asyncio.Server:
    """Listen on ``spec``; ``mode`` applies to a UNIX socket. OSError when it cannot be bound."""
    if spec.path:
        return await bind_unix(spec.path, handler, mode)
    return await asyncio.start_server(handler, spec.host, spec.port, reuse_address=True)


def bind_for_workers(spec: SocketSpec, mode: int) -> list[socket.socket]:
    """Bind and listen before forking, so that every worker accepts on the same socket(s)."""
    if spec.path:
        clear_stale_socket(spec.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        previous = os.umask(_UMASK)
        try:
            sock.bind(spec.path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(previous)
        try:
            os.chmod(spec.path, mode)
            sock.listen(socket.SOMAXCONN)
        except OSError:
            sock.close()
            unlink(spec)
            raise
        sock.setblocking(False)
        return [sock]
    found = socket.getaddrinfo(spec.host or None, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys((f[0], f[1], f[2], "", f[4]) for f in found):
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound


class SharedListener:
    """Accepts on the workers' shared socket one connection at a time, leaving it to the least busy.

    asyncio's server accepts every connection queued when the socket becomes ready, so the worker
    that wakes first takes a whole burst: an MTA opens its LMTP connections together and keeps them,
    and one worker would hold most sessions while another idles. Here a worker with more open
    connections than another (``seat``, on the board the supervisor shares) leaves a new one queued
    for a moment, and takes it after all when nobody else has. Built in the worker's running loop.
    """

    # Seconds a crowded worker leaves a connection to the others at most: long enough for a worker
    # the scheduler has not run for a while on a loaded machine, short beside an MTA's connect
    # timeout. It looks at the board again every _RECHECK: once the others have taken connections
    # of the same burst, it may be the least busy itself, and it takes the next one at once.
    _YIELD = 0.1
    _RECHECK = 0.005
    _PAUSE = 1.0  # seconds without accepting after running out of descriptors, as asyncio does

    def __init__(self, sock: socket.socket, handler: Handler, seat: Seat | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._fd = sock.fileno()
        self._handler = handler
        self._seat = seat
        self._starting: set[asyncio.Task[object]] = set()
        self._closed = False
        self._yielding: asyncio.TimerHandle | None = None
        self._yield_until = 0.0
        if seat is not None:
            seat.on_closed.append(self._fewer)
        self._loop.add_reader(self._fd, self._ready)

    def _ready(self) -> None:
        if self._seat is not None and self._seat.crowded():
            self._loop.remove_reader(self._fd)
            self._yield_until = self._loop.time() + self._YIELD
            self._yielding = self._loop.call_later(self._RECHECK, self._still_crowded)
            return
        self._take()

    def _still_crowded(self) -> None:
        # close() cancels this timer, so the listener is still open here.
        assert self._seat is not None
        if self._seat.crowded() and self._loop.time() < self._yield_until:
            self._yielding = self._loop.call_later(self._RECHECK, self._still_crowded)
        else:
            self._after_yielding()

    def _fewer(self) -> None:
        # Both workers may be leaving connections to each other, their counts having changed in
        # between: the one whose connection closed listens again now, not at its next look.
        if self._yielding is not None and self._seat is not None and not self._seat.crowded():
            self._yielding.cancel()
            self._after_yielding()

    def _after_yielding(self) -> None:
        self._yielding = None
        if self._closed:
            return
        probe = select.poll()  # not select.select, which refuses descriptors from 1024 on
        probe.register(self._fd, select.POLLIN)
        still_queued = bool(probe.poll(0))
        if not still_queued or self._take():
            self._loop.add_reader(self._fd, self._ready)

    def _take(self) -> bool:
        """Accept one connection if one is queued; False when accepting pauses."""
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return True  # another worker took it, or its client gave up
        except OSError as exc:
            # Out of descriptors or memory: the connection stays queued for another worker.
            log.warning("cannot accept a connection (%s); pausing for %gs", exc, self._PAUSE)
            self._loop.remove_reader(self._fd)
            self._loop.call_later(self._PAUSE, self._resume)
            return False
        conn.setblocking(False)
        if self._seat is not None:
            self._seat.opened()  # at once: the next connection's choice must count this one
        task = self._loop.create_task(self._loop.connect_accepted_socket(self._protocol, conn))
        self._starting.add(task)
        task.add_done_callback(self._started)
        return True

    def _started(self, task: asyncio.Task[object]) -> None:
        self._starting.discard(task)
        if task.cancelled() or task.exception() is not None:
            self._ended()  # the session never started
            if not task.cancelled():
                log.info("an accepted connection was lost at once: %s", task.exception())

    def _protocol(self) -> asyncio.StreamReaderProtocol:
        # As asyncio.start_server builds it: the session runs in a task of its own.
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), self._session)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handler(reader, writer)
        finally:
            self._ended()

    def _ended(self) -> None:
        if self._seat is not None:
            self._seat.closed()

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._fd, self._ready)

    def close(self) -> None:
        """Accept no more, and close this process's copy of the socket (the others keep theirs)."""
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._fd)
            if self._yielding is not None:
                self._yielding.cancel()
                self._yielding = None
            if self._seat is not None:
                self._seat.leave()
                self._seat.on_closed.remove(self._fewer)
            # Once every copy is closed (the supervisor killed, the workers draining), a client is
            # refused at once instead of waiting in a queue that nobody takes from.
            self._sock.close()


def bound_address(server: asyncio.Server, spec: SocketSpec) -> str:
    """Where ``server`` listens, with the port the system chose for port 0."""
    if spec.path:
        return str(spec)
    bound = [sock.getsockname() for sock in server.sockets]
    return ", ".join(f"[{b[0]}]:{b[1]}" if ":" in b[0] else f"{b[0]}:{b[1]}" for b in bound)


def unlink(spec: SocketSpec) -> None:
    """Remove the socket file of a UNIX ``spec`` a stopping server leaves behind; nothing for TCP."""
    if spec.path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spec.path)
