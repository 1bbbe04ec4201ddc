"""Which kind of relay fault an exception of the transport is, for the metrics and the health check."""

from __future__ import annotations

from responder.errors import DeadlineExceeded, RelayRefused, RelayUnconfirmed

REFUSED = "refused"
DEFERRED = "deferred"
UNREACHABLE = "unreachable"
TIMEOUT = "timeout"
UNCONFIRMED = "unconfirmed"


def relay_fault_kind(exc: BaseException) -> str:
    """``refused`` (5xx), ``deferred`` (4xx), ``timeout``, ``unconfirmed`` (answer lost), ``unreachable``."""
    if isinstance(exc, RelayRefused):
        return REFUSED
    if isinstance(exc, RelayUnconfirmed):
        return UNCONFIRMED
    if isinstance(exc, DeadlineExceeded):
        return TIMEOUT
    cause: BaseException | None = exc
    while cause is not None:
        # aiosmtplib's response errors carry the relay's status code; its timeouts are TimeoutErrors.
        code = getattr(cause, "code", None)
        if isinstance(code, int) and 400 <= code < 500:
            return DEFERRED
        if isinstance(cause, TimeoutError):
            return TIMEOUT
        cause = cause.__cause__
    return UNREACHABLE
