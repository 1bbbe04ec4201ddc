"""Which of a vacation's messages a sender gets: internal only to a verified sender of an internal domain.

The envelope sender is what anyone can write, so an internal domain alone proves nothing: the internal
message (which may hold phone numbers, the deputy, the project) goes only to a sender that the
verification gate proves (SPF pass, an aligned DKIM signature, or trusted Authentication-Results).
Proof is asked for even when ``[verify] require = "off"``: that switch trusts return paths for the
question whether to reply at all, not for who may read the internal message. A forged internal
sender is treated as external: it gets the external message, or nothing with external audience none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from responder.decide.records import EXTERNAL, INTERNAL

if TYPE_CHECKING:
    from responder.config.settings import ReplySettings
    from responder.decide.context import Context


@dataclass(frozen=True)
class AudienceChoice:
    """Whether the sender counts as internal, whose message it gets (None: none), and why."""

    sender: str
    message: str | None
    why: str

    def note(self) -> str:
        """The audit and ``explain`` token: ``audience=internal(verified: spf=pass)``."""
        return f"audience={self.message or 'none'}({self.why})"


def internal_domain(domain: str, settings: ReplySettings) -> bool:
    """True when ``domain`` is one of reply.internal_domains (or below one, where subdomains count)."""
    domain = domain.lower().rstrip(".")
    for entry in settings.internal_domains:
        bare = entry.removeprefix(".")
        below = domain.endswith("." + bare)
        if domain == entry or ((entry.startswith(".") or settings.internal_subdomains) and below):
            return True
    return False


def choose_audience(ctx: Context) -> AudienceChoice:
    """The audience of this delivery's sender under the vacation ``ctx.vacation`` (see the module doc).

    Verification is asked for only when it changes the answer: for a sender of an internal domain,
    when the vacation has an external message or its external audience is none. The result is
    memoised on the message, so the ``unverified`` rule later asks no DNS question twice.
    """
    vacation = ctx.vacation
    assert vacation is not None
    sender = ctx.inbound.sender_address or ""
    external = EXTERNAL if vacation.has_external() else INTERNAL
    if vacation.external_audience == "none":
        outside: str | None = None
    else:
        outside = external
    if not internal_domain(sender.rpartition("@")[2], ctx.settings.reply):
        if outside == INTERNAL:
            return AudienceChoice(EXTERNAL, outside, "sender domain not internal; no external message")
        return AudienceChoice(EXTERNAL, outside, "sender domain not internal")
    if outside == INTERNAL:
        return AudienceChoice(INTERNAL, INTERNAL, "internal domain; no external message")
    from responder.verify.sender import verify_sender

    settings = ctx.settings.verify
    if settings.require == "off":
        settings = dataclasses.replace(settings, require="aligned")
    result = verify_sender(ctx.inbound, settings, ctx.services.resolver)
    if result.verified:
        return AudienceChoice(INTERNAL, INTERNAL, f"internal, verified: {result.summary}")
    return AudienceChoice(EXTERNAL, outside, f"internal domain, not verified: {result.summary}")
