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


class HookLog:
    """One process's log destinations, opened as logsetup opens them."""

    def __init__(self, options: LogOptions) -> None:
        self.level = LEVELS[options.level.upper()]
        self.console_level = self.level
        self.syslog: _socket.socket | None = None
        self.stream_socket = False
        if options.syslog:
            try:
                self.syslog = self._connect(options.syslog_socket)
            except OSError as exc:
                self.warning(f"syslog unavailable at {options.syslog_socket} ({exc}); logging to stderr")
                return
            self.console_level = LEVELS["WARNING"]

    def _connect(self, path: str) -> _socket.socket:
        # SysLogHandler's order: a datagram socket, else a stream socket (some syslogds listen so).
        for kind in (_socket.SOCK_DGRAM, _socket.SOCK_STREAM):
            sock = _socket.socket(_socket.AF_UNIX, kind)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                if kind == _socket.SOCK_STREAM:
                    raise
                continue
            self.stream_socket = kind == _socket.SOCK_STREAM
            return sock
        raise OSError(f"cannot connect to {path}")  # pragma: no cover - the loop returns or raises

    def emit(self, level: str, message: str) -> None:
        if LEVELS[level] < self.level:
            return
        pid = os.getpid()
        if self.syslog is not None:
            text = f"<{_MAIL | _SEVERITY[level]}>responder[{pid}]: {message}\x00"
            line = text.encode("utf-8", "backslashreplace")
            try:
                if self.stream_socket:
                    self.syslog.sendall(line)
                else:
                    self.syslog.send(line)
            except OSError:
                pass  # as logging's handleError: a lost log line never fails the delivery
        if LEVELS[level] >= self.console_level:
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
