"""An LMTP server session (RFC 2033) on asyncio streams: envelope in, one status per recipient out.

Written for this service rather than taken from aiosmtpd: what matters here cuts across the places a
general SMTP server decides for itself. No message may ever get a 5xx (Postfix would bounce it to a
possibly forged sender), whatever its size or line lengths: the first ``max_message_size`` bytes are
kept and the rest read and dropped, as the pipe hook does. ORCPT (RFC 3461) and Postfix's XFORWARD
carry the original recipient, client address, HELO name and queue id the engine needs. The recipients
of one message are decided concurrently and answered in order.

5xx replies are kept for commands a client should never send (unknown, out of order, no LHLO);
addresses are taken as given between the angle brackets and judged by the engine, which suppresses
what it cannot use (reason ``malformed``) with a 250 like any other decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from responder.daemons.lines import Lines
from responder.logsetup import printable as escape_controls

log = logging.getLogger("responder")

COMMAND_LIMIT = 4096
CHUNK = 1 << 16
MAX_RECIPIENTS = 1000
MAX_ERRORS = 20
# What a session says when it closes an idle wait.
SHUTTING_DOWN = "421 4.3.2 Service shutting down"
EVICTED = "421 4.3.2 Too many connections, closing an idle one"
IDLE_TOO_LONG = "421 4.4.2 Idle for too long, closing"
XFORWARD_ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
# Postfix sends these for facts it does not have.
_UNAVAILABLE = ("[UNAVAILABLE]", "[TEMPUNAVAIL]")


class SessionClosed(Exception):
    """The client went away, or was sent away (idle, shutting down, too many errors)."""


@dataclass
class Recipient:
    address: str
    original: str = ""


@dataclass
class Transaction:
    """One MAIL ... DATA, with the XFORWARD facts given before it."""

    sender: str = ""
    recipients: list[Recipient] = field(default_factory=list)
    client_address: str = ""
    helo: str = ""
    queue_id: str = ""


# Decides one message for its recipients; returns one reply line per recipient, in order.
Deliver = Callable[[Transaction, bytes], Awaitable[Sequence[str]]]


def xtext_decode(value: str) -> str:
    """RFC 3461 xtext (``+HH``) and RFC 6533 ``\\x{HHHH}`` escapes; bytes are taken as UTF-8.

    An escape that names no Unicode scalar value (beyond U+10FFFF, or a surrogate) is kept as written.
    """
    out = bytearray()
    position = 0
    while position < len(value):
        char = value[position]
        pair = value[position + 1 : position + 3]
        if char == "+" and len(pair) == 2 and _is_hex(pair):
            out.append(int(value[position + 1 : position + 3], 16))
            position += 3
            continue
        if value.startswith("\\x{", position):
            end = value.find("}", position)
            if end > 0 and _is_hex(value[position + 3 : end]):
                code = int(value[position + 3 : end], 16)
                if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
                    out += chr(code).encode("utf-8")
                    position = end + 1
                    continue
        out += char.encode("utf-8", "surrogateescape")
        position += 1
    return out.decode("utf-8", "surrogateescape")


def _is_hex(text: str) -> bool:
    return 0 < len(text) <= 6 and all(c in "0123456789abcdefABCDEF" for c in text)


def split_path(argument: str) -> tuple[str, list[str]]:
    """``<address> PARAM...`` as (address, params): quoted local parts may hold ``>`` and spaces."""
    argument = argument.strip()
    if not argument.startswith("<"):
        # Not RFC 5321, but some clients leave the brackets out; take the first word.
        address, _, rest = argument.partition(" ")
        return address, rest.split()
    quoted = escaped = False
    for position in range(1, len(argument)):
        char = argument[position]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            address = argument[1:position]
            # A source route (<@a,@b:user@c>) is to be accepted and ignored (RFC 5321 section 4.1.2).
            if address.startswith("@") and ":" in address:
                address = address.split(":", 1)[1]
            return address, argument[position + 1 :].split()
    return argument[1:], []


def _parameters(params: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for param in params:
        key, _, value = param.partition("=")
        found[key.upper()] = value
    return found


def _one_line(text: str) -> str:
    return " ".join(text.split())[:400]


class Session:
    """One client connection. ``stopping`` set: idle sessions say 421 and close, busy ones finish first."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        deliver: Deliver,
        *,
        hostname: str,
        max_message_size: int,
        idle_timeout: float,
        stopping: asyncio.Event,
        xforward: bool = True,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.deliver = deliver
        self.hostname = hostname
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout
        self.stopping = stopping
        # Whether this client may tell the client address, HELO and queue id (server.xforward_hosts).
        self.xforward = xforward
        # A command line may be COMMAND_LIMIT bytes before its line end.
        self.lines = Lines(COMMAND_LIMIT + 1)
        # Replies to pipelined commands, said together once the client's group is answered.
        self._said = bytearray()
        self.greeted = False
        self.transaction: Transaction | None = None
        self.facts = Transaction()
        self.errors = 0
        # Waiting for a command between transactions, since when (loop time); evict() ends the wait.
        self.idle = False
        self.idle_since = 0.0
        self.evicted = asyncio.Event()
        # The idle wait's timeout, which a stop or an eviction moves to now, and the line it says.
        self._idle_wait: asyncio.Timeout | None = None
        self._woken = ""
        # One task for the session's life that ends an idle wait when the service stops.
        self._stop_watch: asyncio.Task[Literal[True]] | None = None

    @property
    def buffer(self) -> bytearray:
        """What the client sent and was not read yet: commands and DATA share it."""
        return self.lines.buffer

    @buffer.setter
    def buffer(self, value: bytearray) -> None:
        self.lines.buffer = value

    def evict(self) -> None:
        """Make room for another client: an idle session says 421 and closes."""
        self.evicted.set()
        self._wake(EVICTED)

    def _wake(self, line: str) -> None:
        """End the idle wait under way, if any, at once: the session says ``line`` and closes."""
        if self._idle_wait is not None and not self._woken:
            self._woken = line
            self._idle_wait.reschedule(asyncio.get_running_loop().time())

    def _watch_stopping(self) -> None:
        if self._stop_watch is None:
            self._stop_watch = asyncio.ensure_future(self.stopping.wait())
            self._stop_watch.add_done_callback(lambda _: self._wake(SHUTTING_DOWN))

    # -- input ----------------------------------------------------------------------------------

    async def _fill(self, idle: bool) -> None:
        """Read more input; while ``idle`` (between transactions) a stop request ends the wait."""
        if not idle:
            # In the middle of a command or transaction, nothing but the timeout ends the wait: no
            # task and no asyncio.wait for any of the several reads of every message.
            self.buffer += await self._read_some(IDLE_TOO_LONG)
            return
        await self._flush()  # as _read_some does before its wait
        # Between transactions a stop or an eviction also ends the wait. They move the timeout to
        # now (see _wake) rather than race the read in tasks of their own (three tasks and an
        # asyncio.wait for every message of a session).
        self._watch_stopping()
        self.idle, self.idle_since, self._woken = True, asyncio.get_running_loop().time(), ""
        try:
            async with asyncio.timeout(self.idle_timeout) as self._idle_wait:
                if self.stopping.is_set():
                    self._wake(SHUTTING_DOWN)
                elif self.evicted.is_set():
                    self._wake(EVICTED)
                chunk = await self.reader.read(CHUNK)
        except TimeoutError:
            await self._close_with(self._woken or IDLE_TOO_LONG)
            raise SessionClosed from None
        except (ConnectionError, OSError) as exc:
            raise SessionClosed(f"connection lost: {exc.strerror or exc}") from None
        finally:
            self.idle, self._idle_wait = False, None
        if not chunk:
            raise SessionClosed
        self.buffer += chunk

    async def read_command(self) -> str:
        idle = self.transaction is None

        async def fill(dropping: bool) -> bool:
            if idle and not dropping and self.stopping.is_set() and not self.buffer:
                await self._close_with(SHUTTING_DOWN)
                raise SessionClosed
            await self._fill(idle=idle and not dropping and not self.buffer)
            return True  # the end of the stream raises SessionClosed

        line = await self.lines.readline(fill)
        if isinstance(line, int):
            return "\x00too long"
        return line[:-1].rstrip(b"\r").decode("utf-8", "surrogateescape")

    async def read_data(self) -> bytes:
        """The message after 354: dot-unstuffed, LF line ends, at most max_message_size bytes kept.

        Converted piece by piece as it arrives into one buffer, so that a message is held once (and
        copied once, into the bytes handed on), whatever its size.
        """
        # Every piece starts with the CRLF that ended the line before it (the first one with this
        # one), so that unstuffing and the terminator look the same on every line.
        scan = bytearray(b"\r\n") + self.buffer
        del self.buffer[:]
        kept = bytearray()
        limit = self.max_message_size + 1  # the leading LF, dropped at the end
        dropped = 0
        while True:
            end = scan.find(b"\r\n.\r\n")
            if end >= 0:
                usable = end
            else:
                usable = scan.rfind(b"\r\n")
                if usable <= 0 and len(scan) > 2 * CHUNK:
                    usable = len(scan) - 4  # one long line: no CRLF and no terminator can be cut
            if usable > 0:
                piece = bytes(scan[:usable]).replace(b"\r\n.", b"\r\n").replace(b"\r\n", b"\n")
                del scan[:usable]
                room = max(0, limit - len(kept))
                kept += piece[:room] if room < len(piece) else piece
                dropped += max(0, len(piece) - room)
            if end >= 0:
                self.buffer = scan[5:]
                break
            scan += await self._read_some("421 4.4.2 Timeout while reading the message, closing")
        if len(kept) < limit:
            kept += b"\n"
        if dropped:
            log.info(
                "message of %d bytes cut to the first %d", len(kept) - 1 + dropped, self.max_message_size
            )
        del kept[:1]
        return bytes(kept)

    async def _read_some(self, timed_out: str) -> bytes:
        """The next bytes from the client; ``timed_out`` is said and the session closed after
        ``idle_timeout`` without any."""
        try:
            # asyncio.timeout: one timer, where wait_for wraps the read in a task of its own.
            async with asyncio.timeout(self.idle_timeout):
                chunk = await self.reader.read(CHUNK)
        except TimeoutError:
            await self._close_with(timed_out)
            raise SessionClosed from None
        except (ConnectionError, OSError) as exc:
            raise SessionClosed(f"connection lost: {exc.strerror or exc}") from None
        if not chunk:
            raise SessionClosed
        return chunk

    # -- output ---------------------------------------------------------------------------------

    async def reply(self, *lines: str) -> None:
        """Say ``lines`` now, or with the replies to the rest of the client's group of commands.

        A pipelining client (RFC 2920) sends MAIL, RCPT and DATA in one write and reads the replies
        afterwards: while a whole command line is waiting, its reply goes out in the same write as
        this one, which saves a system call and a wake-up of the client per command. Whatever is held
        is said before the session waits for the client again.
        """
        self._said += "".join(f"{line}\r\n" for line in lines).encode("utf-8", "surrogateescape")
        if b"\n" not in self.buffer or len(self._said) > CHUNK:
            await self._flush()

    async def _flush(self) -> None:
        if not self._said:
            return
        self.writer.write(bytes(self._said))
        self._said.clear()
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise SessionClosed(f"connection lost: {exc.strerror or exc}") from None

    async def _close_with(self, line: str) -> None:
        with contextlib.suppress(SessionClosed):
            await self.reply(line)
            await self._flush()

    # -- the protocol ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self.reply(f"220 {self.hostname} LMTP responder ready")
            while True:
                line = await self.read_command()
                if not await self.command(line):
                    return
        except SessionClosed as exc:
            if str(exc):
                log.info("LMTP client went away: %s", exc)
            return
        finally:
            if self._stop_watch is not None:
                self._stop_watch.cancel()
            if self._said and not self.writer.is_closing():
                # Held when a command's handler failed; the transport sends it as it closes.
                self.writer.write(bytes(self._said))
            self.writer.close()

    async def command(self, line: str) -> bool:
        """Answer one command line; False once the session is over."""
        if line == "\x00too long":
            return await self.error("500 5.5.2 Line too long")
        verb, _, argument = line.partition(" ")
        verb = verb.upper()
        handler = getattr(self, f"do_{verb}", None) if verb.isalpha() else None
        if handler is None:
            return await self.error(f"500 5.5.2 Command not recognized: {_one_line(verb)[:20]}")
        result: bool = await handler(argument.strip())
        return result

    async def error(self, line: str) -> bool:
        self.errors += 1
        if self.errors > MAX_ERRORS:
            await self._close_with("421 4.7.0 Too many errors, closing")
            return False
        await self.reply(line)
        return True

    async def do_LHLO(self, argument: str) -> bool:
        if not argument:
            return await self.error("501 5.5.4 Syntax: LHLO hostname")
        self.greeted = True
        self.transaction = None
        self.facts = Transaction()
        await self.reply(
            f"250-{self.hostname}",
            "250-PIPELINING",
            "250-8BITMIME",
            "250-SMTPUTF8",
            # No fixed limit: a larger message is cut, never refused (that would bounce it).
            "250-SIZE",
            # Offered for ORCPT, the original recipient; NOTIFY and RET are accepted and not acted on.
            "250-DSN",
            # Offered only to clients allowed to use it: Postfix sends XFORWARD only when offered.
            *([f"250-XFORWARD {' '.join(XFORWARD_ATTRIBUTES)}"] if self.xforward else []),
            "250 ENHANCEDSTATUSCODES",
        )
        return True

    async def do_HELO(self, argument: str) -> bool:
        return await self.error("500 5.5.1 This is LMTP: use LHLO (RFC 2033)")

    do_EHLO = do_HELO

    async def do_XFORWARD(self, argument: str) -> bool:
        if not self.xforward:
            return await self.error("550 5.7.0 Error: insufficient authorization")
        if not self.greeted or self.transaction is not None:
            return await self.error("503 5.5.1 XFORWARD is allowed only before MAIL")
        pairs = [item.partition("=") for item in argument.split()]
        if not pairs or any(
            not equals or name.upper() not in XFORWARD_ATTRIBUTES for name, equals, _ in pairs
        ):
            return await self.error(f"501 5.5.4 Syntax: XFORWARD {'|'.join(XFORWARD_ATTRIBUTES)}=value")
        for given, _, raw in pairs:
            # Only addresses, names and queue ids are expected: no control character goes further.
            value = escape_controls(xtext_decode(raw))
            value = "" if value.upper() in _UNAVAILABLE else value
            name = given.upper()
            if name == "ADDR":
                self.facts.client_address = value[5:] if value.upper().startswith("IPV6:") else value
            elif name == "HELO":
                self.facts.helo = value
            elif name == "IDENT":
                self.facts.queue_id = value
        await self.reply("250 2.0.0 Ok")
        return True

    async def do_MAIL(self, argument: str) -> bool:
        if not self.greeted:
            return await self.error("503 5.5.1 Say LHLO first")
        if self.transaction is not None:
            return await self.error("503 5.5.1 Nested MAIL command")
        if argument[:5].upper() != "FROM:":
            return await self.error("501 5.5.4 Syntax: MAIL FROM:<address>")
        # SIZE, BODY, SMTPUTF8, RET and ENVID change nothing here: every message is taken whole.
        sender, _params = split_path(argument[5:])
        facts = self.facts
        self.transaction = Transaction(
            sender=sender, client_address=facts.client_address, helo=facts.helo, queue_id=facts.queue_id
        )
        await self.reply("250 2.1.0 Ok")
        return True

    async def do_RCPT(self, argument: str) -> bool:
        if self.transaction is None:
            return await self.error("503 5.5.1 Need MAIL before RCPT")
        if argument[:3].upper() != "TO:":
            return await self.error("501 5.5.4 Syntax: RCPT TO:<address>")
        if len(self.transaction.recipients) >= MAX_RECIPIENTS:
            # 452: the client delivers the rest in a later transaction (RFC 5321 section 4.5.3.1.10).
            await self.reply("452 4.5.3 Too many recipients")
            return True
        address, params = split_path(argument[3:])
        original = ""
        orcpt = _parameters(params).get("ORCPT", "")
        kind, _, value = orcpt.partition(";")
        if kind.lower() in ("rfc822", "utf-8"):
            original = xtext_decode(value)
        self.transaction.recipients.append(Recipient(address, original))
        await self.reply("250 2.1.5 Ok")
        return True

    async def do_DATA(self, argument: str) -> bool:
        transaction = self.transaction
        if transaction is None or not transaction.recipients:
            return await self.error("503 5.5.1 Need RCPT before DATA")
        await self.reply("354 End data with <CR><LF>.<CR><LF>")
        try:
            data = await self.read_data()
            statuses = await self.deliver(transaction, data)
            await self.reply(*statuses)
        finally:
            self.transaction = None
            self.facts = Transaction()
        return True

    async def do_RSET(self, argument: str) -> bool:
        self.transaction = None
        self.facts = Transaction()
        await self.reply("250 2.0.0 Ok")
        return True

    async def do_NOOP(self, argument: str) -> bool:
        await self.reply("250 2.0.0 Ok")
        return True

    async def do_VRFY(self, argument: str) -> bool:
        await self.reply("252 2.5.0 Cannot verify, but will take the message")
        return True

    async def do_QUIT(self, argument: str) -> bool:
        await self._close_with("221 2.0.0 Bye")
        return False
