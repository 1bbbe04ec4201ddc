"""LMTP test parts: `responder serve` as a real process, a plain LMTP client, a scripted LMTP server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.helpers import hook_env


class ServiceProcess:
    """``python -m responder --config CONFIG serve``; its log goes to a file the test reads."""

    def __init__(self, config: Path, socket_path: Path, log_path: Path) -> None:
        self.config = config
        self.socket_path = socket_path
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.log_file = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "responder", "--config", str(self.config), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=hook_env(),
        )
        self.wait_log("listening for LMTP")
        return self

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, text: str, count: int = 1, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if log.count(text) >= count:
                return log
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the service exited ({self.process.returncode}):\n{log}")
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not in the service log:\n{self.log()}")

    def send_signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.log_file.close()


class LmtpClient:
    """A plain client that shows every reply line, for protocol tests and several recipients."""

    def __init__(self, path: Path | str | tuple[str, int], timeout: float = 30) -> None:
        family = socket.AF_UNIX if not isinstance(path, tuple) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path if isinstance(path, tuple) else str(path))
        except OSError:
            self.sock.close()
            raise
        self.file = self.sock.makefile("rb")

    def reply(self) -> tuple[int, str]:
        lines: list[str] = []
        while True:
            line = self.file.readline().decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                raise ConnectionError("closed")
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), "\n".join(lines)

    def command(self, line: str) -> tuple[int, str]:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")
        return self.reply()

    def greet(self) -> None:
        assert self.reply()[0] == 220
        assert self.command("LHLO test.example")[0] == 250

    def send_message(
        self, sender: str, recipients: list[str], data: bytes, xforward: str = "", orcpt: str = ""
    ) -> list[tuple[int, str]]:
        """One transaction; the replies to the accepted recipients after DATA, in order."""
        if xforward:
            assert self.command(f"XFORWARD {xforward}")[0] == 250
        assert self.command(f"MAIL FROM:<{sender}>")[0] == 250
        accepted = 0
        for recipient in recipients:
            suffix = f" ORCPT=rfc822;{orcpt}" if orcpt else ""
            if self.command(f"RCPT TO:<{recipient}>{suffix}")[0] == 250:
                accepted += 1
        assert self.command("DATA")[0] == 354
        body = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        body = (b"." + body if body.startswith(b".") else body).replace(b"\r\n.", b"\r\n..")
        self.sock.sendall(body + b".\r\n")
        return [self.reply() for _ in range(accepted)]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.command("QUIT")
        self.file.close()
        self.sock.close()


class ScriptedServer:
    """An LMTP server on a UNIX socket that answers DATA with ``final`` and records what it was sent.

    ``final`` None closes the connection after the message instead of answering.
    """

    def __init__(self, path: Path, final: str | None = "250 2.0.0 Ok", xforward: bool = True) -> None:
        self.path = path
        self.final = final
        self.xforward = xforward
        self.received: list[bytes] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            seen = bytearray()
            # The client may hang up without waiting for the last reply.
            with conn, contextlib.suppress(OSError):
                self._talk(conn, seen)
            self.received.append(bytes(seen))

    def _talk(self, conn: socket.socket, seen: bytearray) -> None:
        conn.sendall(b"220 scripted LMTP\r\n")
        buffer = b""
        in_data = False
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            buffer += chunk
            seen += chunk
            while True:
                if in_data:
                    end = buffer.find(b"\r\n.\r\n")
                    if end < 0 and not buffer.startswith(b".\r\n"):
                        break
                    buffer = buffer[end + 5 :] if end >= 0 else buffer[3:]
                    in_data = False
                    if self.final is None:
                        return
                    conn.sendall(self.final.encode() + b"\r\n")
                    continue
                line, newline, rest = buffer.partition(b"\r\n")
                if not newline:
                    break
                buffer = rest
                verb = line.split(b" ", 1)[0].upper()
                if verb == b"LHLO":
                    extensions = b"250-PIPELINING\r\n" + (
                        b"250 XFORWARD ADDR HELO IDENT\r\n" if self.xforward else b"250 DSN\r\n"
                    )
                    conn.sendall(b"250-scripted\r\n" + extensions)
                elif verb == b"DATA":
                    conn.sendall(b"354 go\r\n")
                    in_data = True
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")

    def wait_received(self, count: int = 1, timeout: float = 10) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.received)

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would leave it there.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(timeout=10)
        if self.path.exists():
            os.unlink(self.path)


class CountingRelay:
    """A minimal SMTP relay on loopback that counts connections and messages.

    ``hang_up`` closes each connection right after accepting a message, as a relay that drops idle
    clients does; a client reusing its connection finds it gone. ``delay`` is how long it takes to
    answer the end of a message (it has the message from the final dot on).
    """

    def __init__(self, hang_up: bool = False, delay: float = 0.0) -> None:
        self.hang_up = hang_up
        self.delay = delay
        self.connections = 0
        self.messages: list[bytes] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port: int = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self.threads.append(accept)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            worker = threading.Thread(target=self._session, args=(conn,), daemon=True)
            worker.start()
            self.threads.append(worker)

    def _session(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            file = conn.makefile("rb")
            conn.sendall(b"220 relay ESMTP\r\n")
            while line := file.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-relay\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go\r\n")
                    data = b""
                    while (part := file.readline()) not in (b".\r\n", b""):
                        data += part
                    self.messages.append(data)
                    time.sleep(self.delay)
                    conn.sendall(b"250 2.0.0 queued\r\n")
                    if self.hang_up:
                        return
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")
            file.close()

    def wait_for(self, count: int, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.messages)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=5)
