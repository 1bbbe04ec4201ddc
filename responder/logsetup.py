"""Log handlers for the command line: stderr, and syslog's mail facility as MTAs log."""

from __future__ import annotations

import logging
import sys
from typing import Protocol, TextIO

FORMAT = "responder[%(process)d]: %(levelname)s %(message)s"


class LogOptions(Protocol):
    """What ``[log]`` says; config.LogSettings, or the pipe hook's own reading of the same keys."""

    @property
    def level(self) -> str: ...
    @property
    def syslog(self) -> bool: ...
    @property
    def syslog_socket(self) -> str: ...


def setup_logging(settings: LogOptions | None = None, stream: TextIO | None = None) -> None:
    """Send the ``responder`` logger to stderr, or to syslog (mail facility) with stderr for warnings."""
    if settings is None:
        # Imported here: the pipe hook sets up logging before (and mostly without) loading the config.
        from responder.config import LogSettings

        settings = LogSettings()
    logger = logging.getLogger("responder")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(settings.level.upper())
    logger.propagate = False
    console = logging.StreamHandler(stream or sys.stderr)
    console.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(console)
    if settings.syslog:
        from logging.handlers import SysLogHandler

        try:
            syslog = SysLogHandler(address=settings.syslog_socket, facility=SysLogHandler.LOG_MAIL)
        except OSError as exc:
            logger.warning("syslog unavailable at %s (%s); logging to stderr", settings.syslog_socket, exc)
            return
        syslog.setFormatter(logging.Formatter("responder[%(process)d]: %(message)s"))
        logger.addHandler(syslog)
        # With syslog on, stderr carries only what the MTA should show in its own log.
        console.setLevel(logging.WARNING)
