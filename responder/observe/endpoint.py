"""The HTTP endpoint of the metrics: ``/metrics`` (Prometheus text) and ``/healthz``, served by uvicorn.

uvicorn runs in a thread with its own event loop, so that a slow scrape never holds up LMTP and the
service's signal handlers stay the service's (uvicorn installs none outside the main thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, make_asgi_app

from responder.config.values import SocketSpec
from responder.daemons.sockets import clear_stale_socket
from responder.observe.health import Verdict

log = logging.getLogger("responder")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Health = Callable[[], dict[str, Verdict]]

_STOP_WAIT = 5.0


def health_text(verdicts: dict[str, Verdict]) -> tuple[int, bytes]:
    """The status and body of ``/healthz``: 200 when every dependency is healthy, else 503."""
    lines = []
    for name, verdict in sorted(verdicts.items()):
        if verdict.failing_for is None:
            lines.append(f"{name} ok")
        else:
            state = "ok, failing" if verdict.healthy else "unusable"
            lines.append(f"{name} {state} for {verdict.failing_for:.0f}s")
    healthy = all(verdict.healthy for verdict in verdicts.values())
    return (200 if healthy else 503), ("\n".join(lines) + "\n").encode()


App = Callable[[Scope, Receive, Send], Awaitable[None]]


def make_app(registry: CollectorRegistry, health: Health) -> App:
    """The ASGI application: ``/healthz``, ``/metrics`` (and ``/``), 404 for anything else."""
    metrics = make_asgi_app(registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in ("/", "/metrics"):
            await metrics(scope, receive, send)
            return
        if path == "/healthz":
            # The verdict reads the values files of every process: off the loop, as the scrape is.
            status, body = health_text(await asyncio.to_thread(health))
        else:
            status, body = 404, b"not found: try /metrics or /healthz\n"
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def bind(spec: SocketSpec, mode: int) -> socket.socket:
    """The listening socket of ``spec``: TCP (port 0 lets the system choose), or UNIX with ``mode``."""
    if not spec.path:
        return socket.create_server((spec.host, spec.port), family=spec.family)
    clear_stale_socket(spec.path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o077)
    try:
        sock.bind(spec.path)
    finally:
        os.umask(previous)
    os.chmod(spec.path, mode)
    sock.listen(64)
    return sock


def address(sock: socket.socket, spec: SocketSpec) -> str:
    """Where ``sock`` listens, with the port the system chose."""
    if spec.path:
        return str(spec)
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Endpoint:
    """uvicorn serving ``app`` on one socket in a thread of its own."""

    def __init__(self, app: App, sock: socket.socket) -> None:
        self.sock = sock
        # No log configuration (the service's own logging stays), no lifespan, no access log.
        config = uvicorn.Config(app, loop="asyncio", lifespan="off", log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="responder-metrics", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(_STOP_WAIT)
        with contextlib.suppress(OSError):
            self.sock.close()
