"""What the engine tells an observer of its process (the service's metrics); nobody listens by default.

The pipe hook imports this module with the engine and pays one no-op call per event: only the service
installs an observer, and only it loads the metrics library.
"""

from __future__ import annotations

# The dependencies whose health is tracked.
DATABASE = "database"
RELAY = "relay"


class Observer:
    """The events, each a no-op here; the service's metrics override them."""

    def decision(self, action: str, reason: str | None) -> None:
        """One decision, logged (and audited where the database takes the row)."""

    def decision_seconds(self, seconds: float) -> None:
        """How long one recipient's decision took, from the message's end of data to its answer."""

    def response_sent(self, kind: str) -> None:
        """A reply or bounce the relay accepted (or got whole, its answer lost)."""

    def relay_failed(self, kind: str) -> None:
        """A response the relay did not take: ``refused``, ``deferred``, ``unreachable``, ``timeout``,
        ``unconfirmed``."""

    def verified(self, summary: str) -> None:
        """The summary of one message's sender verification (the ``method=result`` tokens)."""

    def dependency_ok(self, dependency: str) -> None:
        """The database answered, or the relay took a response."""

    def dependency_failed(self, dependency: str) -> None:
        """The database or the relay could not be used."""

    def database_fault(self, kind: str) -> None:
        """A database fault: ``unavailable`` (down, locked past busy_timeout) or ``conflict`` (retried)."""


observer = Observer()


def install(new: Observer) -> Observer:
    """Make ``new`` the process's observer; returns the one it replaces."""
    global observer  # the one seam every reporting module reads
    previous, observer = observer, new
    return previous
