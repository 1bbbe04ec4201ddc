"""Log handlers for the command line: stderr, and syslog's mail facility as MTAs log."""

from __future__ import annotations

import logging
import sys
import traceback
from typing import TYPE_CHECKING, Protocol, TextIO

if TYPE_CHECKING:
    from logging.handlers import SysLogHandler

FORMAT = "responder[%(process)d]: %(levelname)s %(message)s"
# C0 controls, DEL, C1 controls and the Unicode line and paragraph separators: whatever a log reader,
# str.splitlines or a terminal could take as the end of a line or as a command.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROLS.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
# Lone surrogates cannot be encoded at all; those of surrogateescape stand for an undecodable byte.
_CONTROLS.update({code: f"\\u{code:04x}" for code in range(0xD800, 0xE000)})
_CONTROLS.update({code: f"\\x{code - 0xDC00:02x}" for code in range(0xDC80, 0xDD00)})


def printable(text: str) -> str:
    """``text`` with control characters and undecodable bytes written as ``\\xHH``: one entry, one line."""
    return text.translate(_CONTROLS)


def syslog_unavailable(path: str, problem: BaseException | None) -> str:
    """The one warning when syslog cannot take the lines."""
    return f"syslog unavailable at {path} ({problem}); logging to stderr"


def _syslog_reachable(path: str) -> None:
    """Raise OSError unless the syslog daemon at ``path`` takes a connection, as SysLogHandler tries:
    a datagram socket, else a stream socket (some syslogds listen so)."""
    import socket

    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as sock:
            try:
                sock.connect(path)
            except OSError:
                if kind == socket.SOCK_STREAM:
                    raise
                continue
            return


class LogOptions(Protocol):
    """What ``[log]`` says; config.LogSettings, or the pipe hook's own reading of the same keys."""

    @property
    def level(self) -> str: ...
    @property
    def syslog(self) -> bool: ...
    @property
    def syslog_socket(self) -> str: ...


class OneLineFormatter(logging.Formatter):
    """Control characters from any input are written as ``\\xHH``: one entry is one line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        # A traceback keeps its lines; an exception's own text (which may quote input) adds none.
        text = super().formatException(ei)
        exc, seen = ei[1], set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            for part in traceback.format_exception_only(type(exc), exc):
                body = part.rstrip("\n")
                text = text.replace(body, printable(body))
            exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        return "\n".join(printable(line) for line in text.split("\n"))


def _mail_syslog(path: str, console: logging.StreamHandler[TextIO]) -> SysLogHandler:
    # logging.handlers (with pickle, queue and socketserver's kin) is loaded only when syslog is on.
    from logging.handlers import SysLogHandler

    class _MailSyslog(SysLogHandler):
        """SysLogHandler whose lost lines go to stderr (with one warning) instead of a traceback there.

        SysLogHandler tries to reconnect on every line and reports a failure through handleError, which
        prints ``--- Logging error ---`` with a traceback and drops the line: the decision would be lost.
        """

        def __init__(self, path: str, console: logging.StreamHandler[TextIO]) -> None:
            super().__init__(address=path, facility=SysLogHandler.LOG_MAIL)
            self.path = path
            self.console = console
            self.warned = False

        def handleError(self, record: logging.LogRecord) -> None:
            if not self.warned:
                self.warned = True
                problem = sys.exc_info()[1]
                self.console.emit(
                    logging.makeLogRecord(
                        {
                            "levelname": "WARNING",
                            "levelno": logging.WARNING,
                            "msg": syslog_unavailable(self.path, problem),
                        }
                    )
                )
            if record.levelno < self.console.level:
                self.console.emit(record)  # the console took it already when at or above its level

    return _MailSyslog(path, console)


def setup_logging(settings: LogOptions | None = None, stream: TextIO | None = None) -> None:
    """Send the ``responder`` logger to stderr, or to syslog (mail facility) with stderr for warnings.

    When the syslog socket is missing or refuses, everything goes to stderr after one warning.
    """
    if settings is None:
        # Imported here: the pipe hook sets up logging before (and mostly without) loading the config.
        from responder.config.settings import LogSettings

        settings = LogSettings()
    logger = logging.getLogger("responder")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(settings.level.upper())
    logger.propagate = False
    console = logging.StreamHandler(stream or sys.stderr)
    console.setFormatter(OneLineFormatter(FORMAT))
    logger.addHandler(console)
    if settings.syslog:
        # SysLogHandler ignores a failed connect (Python 3.11) and fails on each line instead: try first.
        try:
            _syslog_reachable(settings.syslog_socket)
        except OSError as exc:
            logger.warning("%s", syslog_unavailable(settings.syslog_socket, exc))
            return
        syslog = _mail_syslog(settings.syslog_socket, console)
        syslog.setFormatter(OneLineFormatter("responder[%(process)d]: %(message)s"))
        logger.addHandler(syslog)
        # With syslog on, stderr carries only what the MTA should show in its own log.
        console.setLevel(logging.WARNING)
