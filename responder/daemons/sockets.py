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
