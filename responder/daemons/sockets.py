"""The daemons' listening sockets: a UNIX socket bound owner-only and then chmod-ed, or a TCP port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Awaitable, Callable

from responder.config.values import SocketSpec

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# Until the chmod after bind, only the socket's owner may connect.
_UMASK = 0o077


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


async def serve_on(sock: socket.socket, handler: Handler, unix: bool) -> asyncio.Server:
    """Accept on a socket bound by the supervisor (shared with the other workers)."""
    if unix:
        return await asyncio.start_unix_server(handler, sock=sock)
    return await asyncio.start_server(handler, sock=sock)


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
