"""Test tools for the policy server: the server as a subprocess, a Postfix-style client, a TCP fault proxy."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.helpers import hook_env


def postfix_request(recipient: str, state: str = "RCPT", **extra: str) -> dict[str, str]:
    """The attributes Postfix 3.x sends (SMTPD_POLICY_README), in its order."""
    attributes = {
        "request": "smtpd_access_policy",
        "protocol_state": state,
        "protocol_name": "ESMTP",
        "client_address": "192.0.2.10",
        "client_name": "mail.example.org",
        "client_port": "40000",
        "reverse_client_name": "mail.example.org",
        "server_address": "127.0.0.1",
        "server_port": "25",
        "helo_name": "mail.example.org",
        "sender": "bob@example.org",
        "recipient": recipient,
        "recipient_count": "0",
        "queue_id": "",
        "instance": "1a2b.5f3c.9d1e.0",
        "size": "1234",
        "etrn_domain": "",
        "stress": "",
        "sasl_method": "",
        "sasl_username": "",
        "sasl_sender": "",
        "ccert_subject": "",
        "ccert_issuer": "",
        "ccert_fingerprint": "",
        "ccert_pubkey_fingerprint": "",
        "encryption_protocol": "TLSv1.3",
        "encryption_cipher": "TLS_AES_256_GCM_SHA384",
        "encryption_keysize": "256",
        "policy_context": "",
        "compatibility_level": "3.6",
        "mail_version": "3.7.11",
    }
    attributes.update(extra)
    return attributes


def encode(attributes: Mapping[str, str]) -> bytes:
    return "".join(f"{name}={value}\n" for name, value in attributes.items()).encode() + b"\n"


def read_answer(sock: socket.socket) -> bytes:
    """One answer: bytes up to and including the empty line; b"" when the server closed first."""
    data = b""
    while not data.endswith(b"\n\n"):
        chunk = sock.recv(1)
        if not chunk:
            return data
        data += chunk
    return data


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server closed the connection without answering (a reset counts: data was unread)."""
    try:
        return read_answer(sock) == b""
    except ConnectionResetError:
        return True


def ask(sock: socket.socket, attributes: Mapping[str, str]) -> str:
    """Send one request and return the action (the text after ``action=``)."""
    sock.sendall(encode(attributes))
    return action_of(read_answer(sock))


def action_of(answer: bytes) -> str:
    match = re.fullmatch(rb"action=([^\n]*)\n\n", answer)
    assert match, f"not one action line and an empty line: {answer!r}"
    return match.group(1).decode("ascii")


class PolicyProcess:
    """``responder policy`` run as its own process, as systemd would run it."""

    def __init__(
        self,
        config: Path,
        listen: str,
        *,
        program: Sequence[str] = (sys.executable, "-m", "responder"),
        user: tuple[int, int] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``program`` is how to run responder; ``user`` a (uid, gid) to run as, with no other groups."""
        self.proc = subprocess.Popen(
            [*program, "--config", str(config), "policy", "--listen", listen],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else hook_env(),
            user=user[0] if user else None,
            group=user[1] if user else None,
            extra_groups=[] if user else None,
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        self.where = ""

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._lock:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for_log(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for line in self.lines:
                    if text in line:
                        return line
            if self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"the policy server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise AssertionError(f"no log line with {text!r}:\n{self.log()}")

    def started(self) -> PolicyProcess:
        line = self.wait_for_log("listening on ")
        self.where = line.split("listening on ", 1)[1].split(" ", 1)[0]
        return self

    def connect(self, timeout: float = 10.0) -> socket.socket:
        if self.where.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(self.where[len("unix:") :])
            return sock
        host, _, port = self.where.rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        sock.settimeout(timeout)
        return sock

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code


class FaultProxy:
    """A TCP forwarder in front of a real database server; ``cut()`` takes the database away."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.down = False
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every open connection and refuse new ones, as a crashed server or a broken link does."""
        self.down = True
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def restore(self) -> None:
        self.down = False

    def close(self) -> None:
        self.cut()
        self.listener.close()
