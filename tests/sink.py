"""A real SMTP server (aiosmtpd) on loopback that records what it receives."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)
    rcpt_options: list[str] = field(default_factory=list)

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self.sink.rcpt_reply:
            return self.sink.rcpt_reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.sink.data_reply:
            return self.sink.data_reply
        content = envelope.original_content or b""
        with self.sink.lock:
            self.sink.messages.append(
                Received(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=list(envelope.rcpt_tos),
                    data=content,
                    mail_options=list(envelope.mail_options),
                    rcpt_options=list(envelope.rcpt_options),
                )
            )
        return "250 OK queued"


class SmtpSink:
    """Run ``start()``; ``port`` is chosen by the OS; ``messages`` fills as mail arrives.

    ``rcpt_reply`` / ``data_reply`` make the server answer e.g. ``"451 4.3.0 try later"``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        # Another sink's port: the same relay coming back after it was stopped.
        self.port = port
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.rcpt_reply = ""
        self.data_reply = ""
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._sessions: list[SMTP] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> SmtpSink:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        self.port = future.result(timeout=10)
        return self

    async def _serve(self) -> int:
        handler = _Handler(self)

        def factory() -> SMTP:
            session = SMTP(handler, enable_SMTPUTF8=True, decode_data=False, hostname="sink.test")
            self._sessions.append(session)
            return session

        self._server = await self._loop.create_server(factory, self.host, self.port, reuse_address=True)
        sockname: Any = self._server.sockets[0].getsockname()
        return int(sockname[1])

    def stop(self) -> None:
        if self._loop.is_closed():
            return  # stopped already (a test that takes the relay down)

        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            # Clients that keep connections open (the LMTP service reuses its relay connections) must
            # not leave transports behind when the loop closes.
            for session in self._sessions:
                if session.transport is not None:
                    session.transport.close()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def received(self) -> list[Received]:
        """What has arrived so far, at once.

        A message is recorded before its 250 is sent, so once the sender has its answer (the hook has
        exited, ``respond`` has returned) anything it sent is in here: absence needs no waiting.
        """
        with self.lock:
            return list(self.messages)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least ``count`` messages arrived; return them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self.lock:
            return list(self.messages)

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()
