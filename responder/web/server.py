"""``responder web``: the application served by uvicorn on ``[web] listen``, with TLS when configured."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator

import uvicorn

from responder.config.settings import Settings
from responder.config.values import SocketSpec
from responder.daemons.sockets import clear_stale_socket
from responder.errors import ExitCode

log = logging.getLogger("responder.web")


def bind(spec: SocketSpec, mode: int) -> socket.socket:
    """A listening socket for ``spec``; a UNIX socket is made owner-only and then given ``mode``."""
    if spec.path:
        clear_stale_socket(spec.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(spec.path)
        finally:
            os.umask(old)
        os.chmod(spec.path, mode)
    else:
        sock = socket.socket(spec.family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((spec.host, spec.port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


class Server(uvicorn.Server):
    """uvicorn's server, except that SIGTERM and SIGINT end it with status 0, like `responder serve`.

    uvicorn raises a caught signal again after its shutdown, so the process would die of it.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def uvicorn_config(settings: Settings, app: object) -> uvicorn.Config:
    web = settings.web
    # X-Forwarded-For/-Proto are believed only from the configured proxies, never from anyone; on a
    # UNIX socket from every peer, as server.xforward_hosts does: only the proxy can connect (mode).
    trusted: list[str] | str = "*" if web.listen.path else list(web.proxy_hosts)
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        ssl_certfile=web.tls_cert or None,
        ssl_keyfile=web.tls_key or None,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or [],
        server_header=False,
        date_header=True,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )


def run_web(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM: 0 then, 1 when the service cannot start."""
    from responder.web.app import create_app
    from responder.web.context import SecretError

    web = settings.web
    try:
        app = create_app(settings)
    except SecretError as exc:
        log.error("%s", exc)
        return ExitCode.EX_FAILURE
    try:
        sock = bind(web.listen, web.socket_mode)
    except OSError as exc:
        log.error("cannot listen on %s: %s", web.listen, exc.strerror or exc)
        return ExitCode.EX_FAILURE
    config = uvicorn_config(settings, app)
    server = Server(config)
    scheme = "https" if web.tls_cert else "http"
    log.info("web service on %s (%s)", web.listen, scheme)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if web.listen.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(web.listen.path)
    return ExitCode.EX_OK
