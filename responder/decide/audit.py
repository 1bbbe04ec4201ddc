"""One decision's audit row and log line, shared by the engine and the pipe hook's header phase."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from responder.logsetup import printable

if TYPE_CHECKING:
    from responder.decide.context import HeaderView
    from responder.mail.message import Inbound


def decision_message(inbound: Inbound, action: str, reason: str | None, detail: str) -> str:
    """The text of the one INFO line per message."""
    env = inbound.envelope
    return printable(
        f"queue_id={env.queue_id or '-'} message_id={inbound.message_id or '-'} sender=<{env.sender}> "
        f"recipient=<{env.recipient}> action={action} reason={reason or '-'}"
        + (f' detail="{detail}"' if detail else "")
    )


def decision_row(
    ctx: HeaderView, at: dt.datetime, action: str, reason: str | None, detail: str
) -> dict[str, Any]:
    """The ``decisions`` row for one decision, control characters escaped, cut to the column sizes."""
    inbound = ctx.inbound
    env = inbound.envelope
    return {
        "at": at,
        "queue_id": printable(env.queue_id)[:64],
        "message_id": printable(inbound.message_id),
        "sender": printable(inbound.sender_address or env.sender)[:320],
        "recipient": printable(ctx.recipients[0] if ctx.recipients else env.recipient)[:320],
        "action": action,
        "reason": reason,
        "detail": printable(detail),
    }
