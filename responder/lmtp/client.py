"""The thin client of ``responder deliver``: hand one message to the running service over LMTP.

It must cost next to nothing on top of starting Python, so it speaks the few commands it needs over the
C socket module itself (``smtplib`` and ``socket`` pull in ``re``, ``email`` and ``enum``). The envelope
goes as RFC 2033 LMTP with the facts Postfix knows but LMTP has no command for in the standard places:
``XFORWARD ADDR= HELO= IDENT=`` (Postfix's XFORWARD: client address, HELO name, queue id) and
``RCPT TO:<...> ORCPT=rfc822;...`` (RFC 3461: the original recipient), all values xtext-encoded.
"""

from __future__ import annotations

import _socket

from responder.config.values import SocketSpec, parse_socket
from responder.outcome import DECIDED, DEFER

# typing.TYPE_CHECKING without importing typing (which imports re): mypy reads this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

# deliver()'s results: the service decided, the MTA must retry, or no service took the message.
UNREACHABLE = "unreachable"
__all__ = ["DECIDED", "DEFER", "PIECE", "UNREACHABLE", "deliver", "to_wire", "xtext"]

# What may not travel inside <...> on a command line; such an envelope is decided in-process.
_UNSAFE = frozenset("<>\r\n\x00")


class _Failed(Exception):
    """The conversation went wrong after the connection was made: the MTA must retry."""


def xtext(value: str) -> str:
    """RFC 3461 xtext of the UTF-8 bytes of ``value``."""
    out = []
    for byte in value.encode("utf-8", "surrogateescape"):
        if 33 <= byte <= 126 and byte not in (43, 61):  # "+" and "="
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


# Bytes of the message converted at a time: the whole message is never copied.
PIECE = 1 << 18


def to_wire(raw: bytes) -> Iterator[bytes]:
    """The message as LMTP DATA, piece by piece: CRLF line ends, dot-stuffed, with the final ``.`` line."""
    start = 0
    while start < len(raw):
        # Each piece ends after a line end, so that the next one starts at the beginning of a line.
        end = raw.find(b"\n", min(start + PIECE, len(raw)) - 1)
        end = len(raw) if end < 0 else end + 1
        piece = raw[start:end].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if end == len(raw) and not piece.endswith(b"\r\n"):
            piece += b"\r\n"
        if piece.startswith(b"."):
            piece = b"." + piece
        yield piece.replace(b"\r\n.", b"\r\n..")
        start = end
    yield b".\r\n"


class _Conversation:
    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, *lines: str) -> None:
        self.sock.sendall("".join(line + "\r\n" for line in lines).encode("utf-8", "surrogateescape"))

    def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply: its code and its text, lines joined by newlines."""
        lines = []
        while True:
            end = self.buffer.find(b"\n")
            while end < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise _Failed("the service closed the connection")
                self.buffer += chunk
                end = self.buffer.find(b"\n")
            line = self.buffer[:end].rstrip(b"\r").decode("utf-8", "replace")
            self.buffer = self.buffer[end + 1 :]
            if len(line) < 3 or not line[:3].isdigit():
                raise _Failed(f"the service answered {line!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), "\n".join(lines)

    def expect(self, what: str, code: int) -> str:
        got, text = self.reply()
        if got != code:
            raise _Failed(f"{what}: the service answered {got} {text}")
        return text


def _connect(spec: SocketSpec, timeout: float) -> _socket.socket | None:
    candidates: list[tuple[int, str | tuple[Any, ...]]] = [(_socket.AF_UNIX, spec.path)]
    if not spec.path:
        try:
            found = _socket.getaddrinfo(spec.host, spec.port, 0, _socket.SOCK_STREAM)
        except OSError:
            return None
        candidates = [(entry[0], entry[4]) for entry in found]
    for candidate_family, candidate in candidates:
        sock = _socket.socket(candidate_family, _socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(candidate)
        except OSError:
            sock.close()
            continue
        return sock
    return None


def deliver(
    socket_spec: str | SocketSpec,
    *,
    sender: str,
    recipient: str,
    original_recipient: str,
    client_address: str,
    helo: str,
    queue_id: str,
    raw: bytes,
    connect_timeout: float,
    timeout: float,
) -> tuple[str, str]:
    """Hand the message to the service: (DECIDED | DEFER | UNREACHABLE, what went wrong).

    UNREACHABLE means nothing of the message was said to a service (no socket, nobody listening, no
    greeting within ``connect_timeout``, a service refusing the connection or not offering XFORWARD, or
    an envelope that cannot travel as a command line): the caller decides in-process. Once a service
    took the envelope, every failure is DEFER, so that a message is never decided twice.
    """
    try:
        spec = socket_spec if isinstance(socket_spec, SocketSpec) else parse_socket(socket_spec)
    except ValueError as exc:
        return UNREACHABLE, f"server.socket: {exc}"
    if any(not _UNSAFE.isdisjoint(value) for value in (sender, recipient, original_recipient)):
        return UNREACHABLE, "the envelope cannot be written as LMTP command lines"
    sock = _connect(spec, connect_timeout)
    if sock is None:
        return UNREACHABLE, f"no service at {socket_spec}"
    talk = _Conversation(sock)
    try:
        # A service too busy to greet (every connection taken, a wedged loop) has been told nothing.
        code, text = talk.reply()
    except (OSError, ValueError, _Failed) as exc:
        sock.close()
        return UNREACHABLE, f"no greeting from the service at {socket_spec}: {exc or type(exc).__name__}"
    if code != 220:
        sock.close()
        return UNREACHABLE, f"the service at {socket_spec} greeted with {code} {text}"
    try:
        sock.settimeout(timeout)
        talk.send(f"LHLO {_socket.gethostname() or 'localhost'}")
        keywords = talk.expect("LHLO", 250).upper().split("\n")
        if not any(line.startswith("XFORWARD") for line in keywords):
            # Nothing of the message was said yet: without XFORWARD the client address SPF needs
            # would be lost, so this host decides itself.
            talk.send("QUIT")
            return UNREACHABLE, (
                f"the service at {socket_spec} does not offer XFORWARD (not responder, or this host is"
                " not in its server.xforward_hosts)"
            )
        facts = [
            f"{name}={xtext(value)}"
            for name, value in (("ADDR", client_address), ("HELO", helo), ("IDENT", queue_id))
            if value
        ]
        mail = f"MAIL FROM:<{sender}>" + ("" if (sender + recipient).isascii() else " SMTPUTF8")
        rcpt = f"RCPT TO:<{recipient}>"
        if original_recipient:
            rcpt += f" ORCPT=rfc822;{xtext(original_recipient)}"
        # RFC 2920 pipelining: the whole envelope in one write, then the replies in order.
        talk.send(*([f"XFORWARD {' '.join(facts)}"] if facts else []), mail, rcpt, "DATA")
        if facts:
            talk.expect("XFORWARD", 250)
        talk.expect("MAIL", 250)
        code, text = talk.reply()
        if code != 250:
            raise _Failed(f"RCPT: the service answered {code} {text}")
        talk.expect("DATA", 354)
        for piece in to_wire(raw):
            sock.sendall(piece)
        sock.sendall(b"QUIT\r\n")
        code, text = talk.reply()
    except (OSError, ValueError, _Failed) as exc:
        return DEFER, str(exc) or exc.__class__.__name__
    finally:
        sock.close()
    if 200 <= code < 300:
        return DECIDED, text
    return DEFER, f"the service answered {code} {text}"
