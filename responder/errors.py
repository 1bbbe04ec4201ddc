"""The exit statuses, and the faults that map to the MTA's "try again later" (exit 75)."""


class ExitCode:
    """sysexits.h values; under Postfix the hook may only ever exit EX_OK or EX_TEMPFAIL.

    Plain ints (not an enum): the pipe hook's cheapest path imports this module.
    """

    EX_OK = 0
    EX_FAILURE = 1
    EX_USAGE = 2
    EX_TEMPFAIL = 75


class TransientError(Exception):
    """A local fault that a later retry can get past: the hook exits 75 and the MTA defers."""


class StoreUnavailable(TransientError):
    """The database cannot be reached, is locked past its timeout, or has an outdated schema."""


class SchemaMismatch(StoreUnavailable):
    """The database has a schema other than the one this code was written for."""


class RelayUnavailable(TransientError, ConnectionError):
    """The SMTP relay is unreachable, timed out or answered with a 4xx status."""


class DeadlineExceeded(TransientError, TimeoutError):
    """The hook's whole-run deadline passed."""


class RelayRefused(Exception):
    """The SMTP relay refused the response permanently (5xx) at ``stage``; retrying would not help."""

    def __init__(self, code: int, text: str, stage: str = "") -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text
        self.stage = stage


class RelayUnconfirmed(Exception):
    """The relay got the whole response (the final dot was sent) but its answer was lost or late."""
