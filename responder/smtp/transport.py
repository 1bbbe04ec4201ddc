"""Send a composed response through the SMTP relay, every step bounded by the hook's deadline."""

from __future__ import annotations

import asyncio
import inspect
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, Protocol, TypeVar

import aiosmtplib

from responder.config.settings import SmtpSettings
from responder.errors import DeadlineExceeded, RelayRefused, RelayUnavailable, RelayUnconfirmed
from responder.mail.reply import Outgoing

T = TypeVar("T")

# The relay gives up this long before the hook's deadline, so that the engine can still keep or give
# back the claims and write the audit row.
RESERVE = 0.5
# The longest wait for the answer to QUIT: the response is settled by then, nothing depends on it.
QUIT_WAIT = 1.0
# Where the final answer is awaited: from here on the relay may have the response.
END_OF_DATA = "end of data"

_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_RECIPIENT_STATUS = re.compile(r"5\.1\.\d{1,3}\b")


class Sendable(Protocol):
    """What the relay conversation needs of a response: its envelope and its bytes."""

    @property
    def mail_from(self) -> str: ...
    @property
    def rcpt_to(self) -> str: ...
    def as_bytes(self) -> bytes: ...


class Transport(Protocol):
    def send(self, outgoing: Outgoing, before_final_dot: Callable[[], None] | None = None) -> None: ...


class Handover:
    """The line between "retry" and "count as sent" of one response: the final dot.

    ``before`` runs just before the final dot is written (the engine marks the claims sent there, so
    that a hook killed afterwards cannot make the retry send again; the outbox sender marks its row
    ``sending``, and may hand in a coroutine function for that); a fault it raises ends the
    conversation with nothing handed over. ``done`` tells whether the final dot was written.
    """

    def __init__(self, before: Callable[[], object] | None = None) -> None:
        self.before = before
        self.done = False


class SmtpTransport:
    """One connection per response, as a pipe hook only ever sends one.

    ``deadline`` (a ``time.monotonic()`` instant, the hook's whole-run deadline) bounds every step:
    connect, greeting, STARTTLS, AUTH, EHLO, MAIL, RCPT, DATA, the final answer and QUIT.
    """

    def __init__(self, settings: SmtpSettings, deadline: float | None = None) -> None:
        self.settings = settings
        self.deadline = deadline

    def send(self, outgoing: Outgoing, before_final_dot: Callable[[], None] | None = None) -> None:
        """Deliver ``outgoing`` to the relay, calling ``before_final_dot`` just before the final dot.

        RelayUnavailable (4xx, network fault, timeout) and RelayRefused (5xx) mean the relay does not
        have it; RelayUnconfirmed means it got the final dot but its answer was lost or came too late.
        """
        handover = Handover(before_final_dot)
        try:
            asyncio.run(self._send_once(outgoing, handover))
        except DeadlineExceeded as exc:
            # The hook's own alarm, should the relay steps overrun their budget after all.
            if handover.done:
                raise RelayUnconfirmed(
                    f"{self._name()}: {exc} while waiting for the answer to the data"
                ) from exc
            raise

    async def _send_once(self, outgoing: Outgoing, handover: Handover) -> None:
        client = self._client(_ehlo_name(outgoing))
        try:
            await self._bounded("connect", client.connect())
            await self._transaction(client, outgoing, handover)
        except (RelayRefused, RelayUnavailable) as exc:
            # A relay that answered gets its QUIT (bounded like the rest); one that went silent does not.
            if isinstance(exc.__cause__, aiosmtplib.SMTPResponseException) or exc.__cause__ is None:
                await self._quit(client)
            client.close()
            raise
        except BaseException:
            client.close()
            raise
        await self._quit(client)

    def _client(self, ehlo: str | None = None) -> aiosmtplib.SMTP:
        s = self.settings
        return aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout,
            start_tls=s.starttls,
            username=s.username or None,
            password=s.password or None,
            # Without a name aiosmtplib asks socket.getfqdn() in a thread, which no timeout can stop.
            local_hostname=s.hostname or ehlo,
        )

    def _name(self) -> str:
        return f"relay {self.settings.host}:{self.settings.port}"

    def _budget(self, cap: float) -> float:
        """``cap`` seconds, cut to what is left before the deadline (0 when nothing is)."""
        if self.deadline is None:
            return cap
        return max(0.0, min(cap, self.deadline - RESERVE - time.monotonic()))

    async def _bounded(self, stage: str, step: Awaitable[T]) -> T:
        """One step within the budget: a 5xx is RelayRefused, every other fault RelayUnavailable."""
        budget = self._budget(self.settings.timeout)
        try:
            return await asyncio.wait_for(step, budget)
        except TimeoutError as exc:
            if isinstance(exc, aiosmtplib.SMTPException):
                raise RelayUnavailable(f"{self._name()}: {stage}: {exc}") from exc
            limit = "smtp.timeout" if budget >= self.settings.timeout else "the hook's deadline"
            raise RelayUnavailable(f"{self._name()}: no answer to {stage} within {limit}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._map(stage, exc)

    async def _mapped(self, step: Awaitable[object]) -> None:
        """A step of the pooled transport of the service: faults mapped, each command has its timeout."""
        try:
            await step
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._map("the conversation", exc)

    def _map(self, stage: str, exc: BaseException) -> NoReturn:
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            _raise_for(exc.code, exc.message, stage, exc)
        raise RelayUnavailable(f"{self._name()}: {stage}: {exc}") from exc

    async def _transaction(
        self, client: aiosmtplib.SMTP, outgoing: Sendable, handover: Handover | None = None
    ) -> None:
        if client.is_ehlo_or_helo_needed:
            await self._bounded("EHLO", client.ehlo())
        mail_options: list[str] = []
        rcpt_options: list[str] = []
        if client.supports_extension("dsn"):
            # A response to a response is never wanted.
            rcpt_options.append("NOTIFY=NEVER")
        encoding = "ascii"
        if not (outgoing.mail_from + outgoing.rcpt_to).isascii():
            if not client.supports_extension("smtputf8"):
                raise RelayRefused(553, "internationalized address but the relay lacks SMTPUTF8", "MAIL FROM")
            mail_options.append("SMTPUTF8")
            encoding = "utf-8"
        await self._bounded(
            "MAIL FROM", client.mail(outgoing.mail_from, options=mail_options, encoding=encoding)
        )
        await self._bounded("RCPT TO", client.rcpt(outgoing.rcpt_to, options=rcpt_options, encoding=encoding))
        await self._data(client, outgoing.as_bytes(), handover or Handover())

    async def _data(self, client: aiosmtplib.SMTP, message: bytes, handover: Handover) -> None:
        """DATA, driven here rather than by aiosmtplib, to know whether the final dot went out."""
        start = await self._bounded("DATA", client.execute_command(b"DATA"))
        if start.code != 354:
            _raise_for(start.code, start.message, "DATA", None)
        protocol = client.protocol
        if protocol is None:
            raise RelayUnavailable(f"{self._name()}: connection lost after DATA")
        if handover.before is not None:
            marked = handover.before()
            if inspect.isawaitable(marked):
                await marked
        # aiosmtplib drops what arrives while no answer is awaited, and an event loop may run the
        # relay's answer before a task created after the write has started (uvloop does): the read
        # is under way before the data goes out.
        reading = asyncio.ensure_future(protocol.read_response(timeout=None))
        try:
            await asyncio.sleep(0)
            protocol.write(_dot_stuffed(message))
        except BaseException as exc:
            _discard(reading)
            if isinstance(exc, aiosmtplib.SMTPException):
                raise RelayUnavailable(f"{self._name()}: the data could not be written: {exc}") from exc
            raise
        handover.done = True
        try:
            answer = await self._bounded(END_OF_DATA, reading)
        except RelayUnavailable as exc:
            # The relay may have queued it and lost only its answer: a retry could mail twice.
            raise RelayUnconfirmed(str(exc)) from exc
        if answer.code != 250:
            _raise_for(answer.code, answer.message, END_OF_DATA, None)

    async def _quit(self, client: aiosmtplib.SMTP) -> None:
        try:
            await asyncio.wait_for(client.quit(), self._budget(QUIT_WAIT))
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass
        finally:
            client.close()


def _ehlo_name(outgoing: Outgoing) -> str:
    """The Message-ID's domain (smtp.hostname or the responding address's domain), else this host's name."""
    domain = str(outgoing.message.get("Message-ID", "")).strip().strip("<>").rpartition("@")[2]
    return domain if domain and domain.isascii() else socket.gethostname()


def _discard(task: asyncio.Future[Any]) -> None:
    """Cancel ``task``, or take its outcome should it have ended: nothing waits for it any more."""
    if not task.cancel() and not task.cancelled():
        task.exception()


def _dot_stuffed(message: bytes) -> bytes:
    """The message as DATA sends it: CRLF line ends, leading dots doubled, the final dot line."""
    lines = _LINE_ENDS.split(message)
    if lines and lines[-1] == b"":
        lines.pop()
    body = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    return body + b".\r\n"


def _raise_for(code: int, message: str, stage: str, cause: BaseException | None) -> NoReturn:
    # The answer is the cause either way: _send_once tells a relay that answered by it.
    answer = cause or aiosmtplib.SMTPResponseException(code, message)
    if 500 <= code < 600:
        raise RelayRefused(code, message, stage) from answer
    raise RelayUnavailable(f"relay answered {code} {message} to {stage}") from answer


def refusal_advice(exc: RelayRefused) -> tuple[bool, str]:
    """(whether the site's setup is at fault, what to check) for a relay's refusal."""
    if exc.stage == "RCPT TO" and _RECIPIENT_STATUS.match(exc.text):
        return False, "the relay refuses the recipient address itself (unknown, moved or retired)"
    if exc.stage == "RCPT TO":
        return True, (
            "check that the relay lets this host relay: its address in Postfix's mynetworks ahead of "
            "reject_unauth_destination (README, Stage 1 in Postfix), or [smtp] username and password"
        )
    if exc.stage == "MAIL FROM":
        return True, "check the relay's sender restrictions for the envelope sender (reply.envelope_sender)"
    if exc.stage in ("DATA", END_OF_DATA):
        return True, "check the relay's message size limit and content filters"
    return True, "check [smtp] host, port, starttls, username and password"
