"""What became of one delivery (decided, deferred, internal error), mapped once to 0/75 and to 250/451.

The pipe hook's thin client imports this module: it imports nothing but responder.errors.
"""

from __future__ import annotations

from responder.errors import ExitCode

# Decided: the message is done with (a response sent, or none owed); the MTA delivers or drops it.
DECIDED = "decided"
# Deferred: a transient local fault; the MTA keeps the message and retries. Also the audit action.
DEFER = "defer"
# A fault in the code: decided as a drop, since a retry would meet the same fault (and a bounce
# would go to a possibly forged sender).
INTERNAL_ERROR = "internal-error"


class Outcome:
    """One delivery's outcome: its kind and the decision's action, reason code and detail."""

    __slots__ = ("action", "detail", "kind", "reason")
    kind: str
    action: str
    reason: str | None
    detail: str

    def __init__(self, kind: str, action: str, reason: str | None, detail: str = "") -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "detail", detail)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"an Outcome is immutable: cannot set {name}")

    def __repr__(self) -> str:
        return f"Outcome({self.kind!r}, {self.action!r}, {self.reason!r}, {self.detail!r})"

    @property
    def exit_status(self) -> int:
        """The pipe hook's exit status: 75 only for a deferral, 0 for everything decided."""
        return ExitCode.EX_TEMPFAIL if self.kind == DEFER else ExitCode.EX_OK

    def lmtp_reply(self, recipient: str) -> str:
        """The LMTP reply line for ``recipient`` (already printable): 451 for a deferral, else 250.

        Never a 5xx: a refusal would make the MTA bounce to a possibly forged sender.
        """
        if self.kind == DEFER:
            text = " ".join(self.detail.split())[:300] or "try again later"
            return f"451 4.3.0 <{recipient}> {text}"
        reason = f" ({self.reason})" if self.reason else ""
        return f"250 2.0.0 <{recipient}> {self.action}{reason}"
