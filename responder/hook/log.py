"""The pipe hook's fast-path log lines without the logging module: logsetup's lines, byte for byte.

``logging`` (with traceback, threading and string) costs almost as much to import as Python takes to
start; the fast path writes one or two lines. They go where logsetup.setup_logging sends the
``responder`` logger's: stderr as ``responder[PID]: LEVEL message``, or with ``[log] syslog`` the
mail facility as ``<PRI>responder[PID]: message`` plus stderr for warnings and errors.
"""

from __future__ import annotations

import _socket
import os
import sys

# typing.TYPE_CHECKING without importing typing (which imports re): mypy reads this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from responder.logsetup import LogOptions

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}
# syslog(3) severities, and LOG_MAIL (2) shifted into the facility bits, as SysLogHandler encodes them.
_SEVERITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3}
_MAIL = 2 << 3
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
    """The one warning when syslog cannot take the lines; logsetup writes the same."""
    return f"syslog unavailable at {path} ({problem}); logging to stderr"


def connect_syslog(path: str) -> tuple[_socket.socket, bool]:
    """A socket connected to the syslog daemon at ``path``, and whether it is a stream socket.

    SysLogHandler's order: a datagram socket, else a stream socket (some syslogds listen so).
    """
    for kind in (_socket.SOCK_DGRAM, _socket.SOCK_STREAM):
        sock = _socket.socket(_socket.AF_UNIX, kind)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            if kind == _socket.SOCK_STREAM:
                raise
            continue
        return sock, kind == _socket.SOCK_STREAM
    raise OSError(f"cannot connect to {path}")  # pragma: no cover - the loop returns or raises


class HookLog:
    """One process's log destinations, opened as logsetup opens them."""

    def __init__(self, options: LogOptions) -> None:
        self.level = LEVELS[options.level.upper()]
        self.console_level = self.level
        self.syslog: _socket.socket | None = None
        self.stream_socket = False
        self.syslog_path = options.syslog_socket
        if options.syslog:
            try:
                self.syslog, self.stream_socket = connect_syslog(self.syslog_path)
            except OSError as exc:
                self.warning(syslog_unavailable(self.syslog_path, exc))
                return
            self.console_level = LEVELS["WARNING"]

    def emit(self, level: str, message: str) -> None:
        if LEVELS[level] < self.level:
            return
        pid = os.getpid()
        message = printable(message)
        to_console = LEVELS[level] >= self.console_level
        if self.syslog is not None:
            text = f"<{_MAIL | _SEVERITY[level]}>responder[{pid}]: {message}\x00"
            line = text.encode("utf-8", "backslashreplace")
            try:
                if self.stream_socket:
                    self.syslog.sendall(line)
                else:
                    self.syslog.send(line)
            except OSError as exc:
                # As logsetup: the line goes to stderr instead, after one warning; never a failed delivery.
                self.syslog.close()
                self.syslog = None
                self.console_level = self.level
                self.emit("WARNING", syslog_unavailable(self.syslog_path, exc))
                to_console = True
        if to_console:
            try:
                sys.stderr.write(f"responder[{pid}]: {level} {message}\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    def info(self, message: str) -> None:
        self.emit("INFO", message)

    def warning(self, message: str) -> None:
        self.emit("WARNING", message)

    def close(self) -> None:
        if self.syslog is not None:
            self.syslog.close()
