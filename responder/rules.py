"""The decision rules as one ordered table: cheap header rules first, then database, then DNS.

Each rule has a stable reason code (used in logs, the audit table and ``explain``) and returns a
detail string when it fires, or None to let the message go on to the next rule.

One table serves both responses: a vacation reply and the DSN for a retired address (``ctx.kind``).
A rule runs for the kinds in its ``applies_to``; most apply to both, and the few that differ say why.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import NamedTuple

from responder.addresses import routing_operator, strip_batv
from responder.context import BOUNCE, REPLY, RESPONSES, Context
from responder.message import LOOP_HEADER, clean_text, is_null_sender

SUPPRESS = "suppress"
DROP = "drop"

LIST_HEADERS = (
    "List-Id",
    "List-Help",
    "List-Subscribe",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Mailing-List",
    "X-Mailing-List",
)
ADDRESSED_HEADERS = ("To", "Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc")
BULK_PRECEDENCE = frozenset({"bulk", "junk", "list"})

# Local parts of list managers and robots (RFC 3834 section 2, RFC 5230 section 4.6, common practice).
SYSTEM_LOCAL = re.compile(
    r"""^(?:
        mailer-daemon | listserv | majordomo | mailman | postmaster-bounces
      | owner-.* | .*-owner | .*-request | .*-bounces? (?:\+.*)?
      | bounces? (?:[+=\-].*)?
      | no[-_.]?reply (?:[+\-].*)? | do[-_.]?not[-_.]?reply (?:[+\-].*)?
      | .*[-_.]no[-_.]?reply
    )$""",
    re.VERBOSE,
)


# A NamedTuple, not a dataclass: the pipe hook's header phase imports this module (see message.py).
class Rule(NamedTuple):
    reason: str
    action: str
    summary: str
    check: Callable[[Context], str | None]
    applies_to: frozenset[str] = RESPONSES

    def applies(self, ctx: Context) -> bool:
        # Rules for both kinds must not ask for ctx.kind: that is a database lookup.
        return self.applies_to >= RESPONSES or ctx.kind in self.applies_to


def _header_token(value: str) -> str:
    """A structured header value without comments and parameters, lower-cased."""
    value = re.sub(r"\([^()]*\)", " ", clean_text(value))
    return value.split(";", 1)[0].strip().lower()


def null_sender(ctx: Context) -> str | None:
    sender = ctx.inbound.envelope.sender
    return f"envelope sender {sender or '<>'!s}" if is_null_sender(sender) else None


def malformed(ctx: Context) -> str | None:
    if ctx.inbound.sender_address is None:
        return "envelope sender is not a valid address"
    if not ctx.recipients:
        return "envelope recipient is not a valid address"
    if not ctx.inbound.parseable:
        return "no header fields"
    return None


def routed_sender(ctx: Context) -> str | None:
    operator = routing_operator(ctx.inbound.envelope.sender)
    return f"sender address routes elsewhere: {operator}" if operator else None


def system_sender(ctx: Context) -> str | None:
    # The sender key also unwraps SRS and sub-addresses: a forwarded no-reply sender is still one.
    for address in (ctx.inbound.sender_address or "", ctx.sender_key):
        local = strip_batv(address.rpartition("@")[0])
        if SYSTEM_LOCAL.match(local):
            return f"local part {local}"
    return None


def auto_submitted(ctx: Context) -> str | None:
    for value in ctx.inbound.values("Auto-Submitted"):
        keyword = _header_token(value)
        if keyword != "no":
            return f"Auto-Submitted: {keyword or '(empty)'}"
    return None


def precedence(ctx: Context) -> str | None:
    for value in ctx.inbound.values("Precedence"):
        keyword = _header_token(value)
        if keyword in BULK_PRECEDENCE:
            return f"Precedence: {keyword}"
    return None


def list_header(ctx: Context) -> str | None:
    for name in LIST_HEADERS:
        if ctx.inbound.has(name):
            return name
    return None


def auto_response_suppress(ctx: Context) -> str | None:
    """All stops both responses; OOF stops only vacation replies and NDR only bounces (MS-OXCMAIL)."""
    tokens: set[str] = set()
    for value in ctx.inbound.values("X-Auto-Response-Suppress"):
        tokens |= {token.strip(" \t").lower() for token in clean_text(value).split(",")}
    if "all" in tokens:
        return "X-Auto-Response-Suppress: all"
    # Only now the kind of response matters, and only now it is looked up.
    if tokens & {"oof", "ndr"}:
        token = "ndr" if ctx.kind == BOUNCE else "oof"
        if token in tokens:
            return f"X-Auto-Response-Suppress: {token}"
    return None


def report(ctx: Context) -> str | None:
    content_type = ctx.inbound.content_type
    return content_type if content_type == "multipart/report" else None


def loop(ctx: Context) -> str | None:
    if ctx.inbound.has(LOOP_HEADER):
        return f"{LOOP_HEADER} present"
    received = len(ctx.inbound.values("Received"))
    if received > ctx.settings.deliver.max_received:
        return f"{received} Received fields"
    return None


def no_vacation(ctx: Context) -> str | None:
    """Neither an active vacation nor an active retirement: nothing to respond with."""
    if ctx.kind == BOUNCE:
        return None
    vacation = ctx.vacation
    retirement = ctx.retirement
    if vacation is None and retirement is not None:
        # Not active, so scheduled (a start is set) or ended (an end is set).
        if retirement.state(ctx.now) == "scheduled":
            return f"{retirement.address} retires {_iso(retirement.starts_at)}"
        return f"retirement of {retirement.address} ended {_iso(retirement.ends_at)}"
    if vacation is None:
        return "no vacation for " + ", ".join(ctx.recipients)
    state = vacation.state(ctx.now)
    if state == "off":
        return "vacation is off"
    if state == "scheduled":
        return f"vacation starts {_iso(vacation.starts_at)}"
    if state == "ended":
        return f"vacation ended {_iso(vacation.ends_at)}"
    return None


def _iso(when: dt.datetime | None) -> str:
    return when.isoformat(timespec="seconds") if when else "-"


def own_address(ctx: Context) -> str | None:
    return "sender is the recipient" if ctx.inbound.sender_address in ctx.own_addresses else None


def not_addressed(ctx: Context) -> str | None:
    named = ctx.inbound.address_header(*ADDRESSED_HEADERS)
    return None if named & ctx.own_addresses else "recipient not in To, Cc, Bcc or Resent-*"


def rate_limit(ctx: Context) -> str | None:
    # Imported here: the pipe hook decides on the header rules before it loads the configuration.
    from responder.limits import check_limits

    return check_limits(ctx)


def interval(ctx: Context) -> str | None:
    return ctx.claim_bounce_interval() if ctx.kind == BOUNCE else ctx.claim_interval()


def unverified(ctx: Context) -> str | None:
    # Imported here: DNS, SPF and DKIM libraries are loaded only for a response about to go out.
    from responder.verify import verify_sender

    env = ctx.inbound.envelope
    result = verify_sender(
        ctx.inbound.raw,
        env.sender.strip().strip("<>"),
        env.client_address or None,
        env.helo or None,
        ctx.settings.verify,
    )
    if not result.verified:
        return result.summary
    ctx.notes.append(result.summary)
    return None


RULES: tuple[Rule, ...] = (
    # Envelope and header rules: no database, no DNS, no heavy imports.
    Rule("null-sender", SUPPRESS, "the envelope sender is null (<>, empty or MAILER-DAEMON)", null_sender),
    Rule("malformed", SUPPRESS, "invalid envelope sender or recipient, or no header at all", malformed),
    Rule(
        "routed-sender",
        SUPPRESS,
        "the sender's local part holds a routing operator (@, % or !) or a source route",
        routed_sender,
    ),
    Rule("system-sender", SUPPRESS, "the sender is a list manager, daemon or no-reply robot", system_sender),
    Rule("auto-submitted", SUPPRESS, "Auto-Submitted is present with a value other than no", auto_submitted),
    Rule("precedence", SUPPRESS, "Precedence is bulk, junk or list", precedence),
    Rule("list-header", SUPPRESS, "a List-* or Mailing-List header field is present", list_header),
    Rule(
        "auto-response-suppress",
        SUPPRESS,
        "X-Auto-Response-Suppress says All, OOF (for a reply) or NDR (for a bounce)",
        auto_response_suppress,
    ),
    Rule("report", SUPPRESS, "the message is a multipart/report (DSN, MDN)", report),
    Rule("loop", SUPPRESS, "too many Received fields, or our own reply coming back", loop),
    # Database rules.
    Rule("no-vacation", SUPPRESS, "the recipient has no active vacation and is not retired", no_vacation),
    Rule("own-address", SUPPRESS, "the sender is the recipient or one of its aliases", own_address),
    # Replies only: RFC 3834 section 2 keeps personal responses to mail addressed to the person; a DSN
    # reports on the envelope recipient, which a sender reaching a retired address through Bcc or an
    # alias needs to learn about just the same (lists are already out, by list-header).
    Rule(
        "not-addressed",
        SUPPRESS,
        "neither the recipient nor an alias is in To/Cc/Bcc/Resent-*",
        not_addressed,
        applies_to=frozenset({REPLY}),
    ),
    Rule("interval", SUPPRESS, "this sender already got this response within the interval", interval),
    # After every cheap rule, so that list mail, robots and recipients without a vacation never cost
    # a DNS query. "drop": the response would be due, but the return path may be forged.
    Rule(
        "unverified",
        DROP,
        "the envelope sender is not proven by SPF, aligned DKIM or trusted Authentication-Results",
        unverified,
    ),
    # Last, so that only responses about to go out are counted. "drop", not "suppress": nothing about
    # the message forbids an answer (that is what suppress means, as for the RFC 3834 rules above);
    # a response that was due is withheld to protect the system, like "unverified" and "relay-refused".
    Rule(
        "rate-limit",
        DROP,
        "a per-sender, sender-domain, recipient or global rate limit is reached",
        rate_limit,
    ),
)

# Outcomes decided outside the table, also part of the interface.
EXTRA_REASONS = {
    "template-error": "the reply template failed to render; nothing was sent",
    "relay-refused": "the relay refused the response permanently (5xx)",
    "internal-error": "an unexpected error; logged with a traceback, the message is not deferred",
}
