"""Log handlers for the command line: stderr, and syslog's mail facility as MTAs log."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from typing import TextIO

from responder.config import LogSettings

FORMAT = "responder[%(process)d]: %(levelname)s %(message)s"


def setup_logging(settings: LogSettings | None = None, stream: TextIO | None = None) -> None:
    """Send the ``responder`` logger to stderr, or to syslog (mail facility) with stderr for warnings."""
    settings = settings or LogSettings()
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
        try:
            syslog = logging.handlers.SysLogHandler(
                address=settings.syslog_socket, facility=logging.handlers.SysLogHandler.LOG_MAIL
            )
        except OSError as exc:
            logger.warning("syslog unavailable at %s (%s); logging to stderr", settings.syslog_socket, exc)
            return
        syslog.setFormatter(logging.Formatter("responder[%(process)d]: %(message)s"))
        logger.addHandler(syslog)
        # With syslog on, stderr carries only what the MTA should show in its own log.
        console.setLevel(logging.WARNING)
