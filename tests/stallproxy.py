"""A loopback TCP proxy in front of a real database server that stops forwarding when told to.

It models a server that accepts connections and then never answers (a hung host behind a load
balancer, a frozen VM): the TCP connections stay up, so neither the client's connect nor the
kernel's timers ever fail. ``StallingProxy(None)`` accepts and never forwards anything; with an
upstream it forwards both ways until a client sends bytes containing ``stall_on`` (a statement's
text: neither server here speaks TLS) or ``stall()`` is called, and from then on forwards nothing on
any connection, old or new, while holding every socket open.
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress
from types import TracebackType


class StallingProxy:
    def __init__(self, upstream: tuple[str, int] | None, stall_on: bytes | None = None) -> None:
        self.upstream = upstream
        self.stall_on = stall_on
        self.stalled = threading.Event()
        if upstream is None:
            self.stalled.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self.stalled.set()

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._keep(client)
            if self.stalled.is_set() or self.upstream is None:
                continue  # accepted, and never a byte back
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._keep(server)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        while not self.stalled.is_set():
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                with suppress(OSError):
                    target.shutdown(socket.SHUT_WR)
                return
            if from_client and self.stall_on is not None and self.stall_on in data:
                self.stalled.set()
            if self.stalled.is_set():
                return  # the bytes are swallowed; both sockets stay open until close()
            try:
                target.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            # shutdown first: a bare close leaves the connection up (no FIN) while another thread is
            # blocked in recv on it, and the server would keep the stalled transaction and its locks.
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with suppress(OSError):
                sock.close()

    def __enter__(self) -> StallingProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
