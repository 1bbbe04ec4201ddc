"""What the pages read and change, over the store: scoped listings, saves, templates, audit, explain."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from responder.decide.records import DecisionRecord, Retirement, RetirementChanges, Vacation, VacationChanges
from responder.manage.errors import Conflict as ManageConflict
from responder.manage.errors import NotFound, Refused
from responder.web import auth
from responder.web.context import WebContext
from responder.web.forms import body_text, one_line
from responder.web.schedule import FieldError, parse_local, zone

# The channel the change log names for changes made on these pages.
VIA = "web"
# Rows shown at most on one audit page, newest first.
AUDIT_ROWS = 200


def token_alive(ctx: WebContext, who: auth.Principal) -> bool:
    """Whether the token an admin signed in with is still there, with the same scope."""
    return any(
        t.name == who.name and t.scope == who.kind and t.domain == who.domain for t in ctx.store.list_tokens()
    )


class Conflict(Exception):
    """The change cannot be made as things stand (an address both retired and on vacation)."""


def vacation_of(ctx: WebContext, address: str) -> Vacation | None:
    found = ctx.store.vacation_for([address])
    return found if found is not None and found.address == address else None


def retirement_of(ctx: WebContext, address: str) -> Retirement | None:
    found = ctx.store.retirement_for([address])
    return found if found is not None and found.address == address else None


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _refused(exc: Refused) -> Exception:
    """A refusal of the shared operations as the pages report it: a field error or a conflict."""
    field = exc.field or "address"
    message = exc.message.removeprefix(f"{field}: ")
    if isinstance(exc, ManageConflict | NotFound):
        return Conflict(message)
    return FieldError(field, message)


def save_vacation(ctx: WebContext, who: auth.Principal, address: str, changes: VacationChanges) -> None:
    """Save through the shared operation: its checks, the template's render and the change log apply."""
    from responder.manage.vacations import set_vacation

    body = {
        "enabled": changes["enabled"],
        "timezone": changes["timezone"],
        "start": _iso(changes["starts_at"]),
        "end": _iso(changes["ends_at"]),
        "subject": changes["subject"] or "",
        "message": changes["message"],
    }
    try:
        set_vacation(ctx.store, ctx.settings, who.actor, VIA, address, body, ctx.clock(), _allowed(who))
    except Refused as exc:
        raise _refused(exc) from None


def _allowed(who: auth.Principal) -> Callable[[str], bool]:
    return lambda address: auth.may_manage(who, address)


def switch_off(ctx: WebContext, who: auth.Principal, address: str) -> None:
    from responder.manage.vacations import switch_off as off

    try:
        off(ctx.store, ctx.settings, who.actor, VIA, address, ctx.clock())
    except Refused as exc:
        raise _refused(exc) from None


def delete_vacation(ctx: WebContext, who: auth.Principal, address: str) -> None:
    from responder.manage.vacations import delete

    try:
        delete(ctx.store, ctx.settings, who.actor, VIA, address, ctx.clock())
    except Refused as exc:
        raise _refused(exc) from None


def save_retirement(ctx: WebContext, who: auth.Principal, address: str, changes: RetirementChanges) -> None:
    from responder.manage.retired import set_retired

    body = {
        "message": changes["message"],
        "status": changes["status"],
        "timezone": changes["timezone"],
        "start": _iso(changes["starts_at"]),
        "end": _iso(changes["ends_at"]),
    }
    try:
        set_retired(ctx.store, ctx.settings, who.actor, VIA, address, body, ctx.clock())
    except Refused as exc:
        raise _refused(exc) from None


def delete_retirement(ctx: WebContext, who: auth.Principal, address: str) -> None:
    from responder.manage.retired import delete

    try:
        delete(ctx.store, who.actor, VIA, address, ctx.clock())
    except Refused as exc:
        raise _refused(exc) from None


def listing(ctx: WebContext, who: auth.Principal, query: str) -> tuple[list[Vacation], list[Retirement]]:
    """The vacations and retired addresses ``who`` manages whose address contains ``query``."""
    wanted = query.strip().lower()

    def shown(address: str) -> bool:
        return auth.may_manage(who, address) and wanted in address.lower()

    vacations = [v for v in ctx.store.list_vacations() if shown(v.address)]
    retirements = [r for r in ctx.store.list_retirements() if shown(r.address)]
    return vacations, retirements


# -- templates -------------------------------------------------------------------------------------


def template_name(name: str) -> str:
    from responder.manage.fields import template_name as checked

    try:
        return checked("name", name)
    except Refused as exc:
        raise _refused(exc) from None


def template_names(ctx: WebContext) -> list[str]:
    from responder.manage.templates import list_templates

    return [str(t["name"]) for t in list_templates(ctx.settings)]


def template_source(ctx: WebContext, name: str) -> str:
    """The template's text as the renderer finds it; empty for a new one."""
    from responder.manage.templates import read_template

    try:
        return read_template(ctx.settings, name)[0]
    except NotFound:
        return ""


def render_sample(ctx: WebContext, name: str, source: str) -> str:
    """``source`` rendered as template ``name`` with sample values, in the sandbox; FieldError("text")."""
    from responder.manage.templates import MAX_TEMPLATE, check_renders

    try:
        return check_renders(ctx.settings, name, body_text(source, "text", MAX_TEMPLATE), ctx.clock())
    except Refused as exc:
        raise _refused(exc) from None


def save_template(ctx: WebContext, who: auth.Principal, name: str, source: str) -> None:
    from responder.manage.templates import MAX_TEMPLATE, write_template

    try:
        write_template(
            ctx.store,
            ctx.settings,
            who.actor,
            VIA,
            name,
            body_text(source, "text", MAX_TEMPLATE),
            ctx.clock(),
        )
    except ManageConflict as exc:
        raise FieldError("text", exc.message) from None
    except Refused as exc:
        raise _refused(exc) from None


# -- the audit trail -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditQuery:
    sender: str | None
    recipient: str | None
    reason: str | None
    since: dt.datetime | None
    until: dt.datetime | None


def audit_query(values: Mapping[str, str]) -> AuditQuery:
    tz = zone(values.get("timezone", "UTC") or "UTC")
    since = parse_local(values.get("since", ""), tz, "since")
    until = parse_local(values.get("until", ""), tz, "until")
    if since is not None and until is not None and until <= since:
        raise FieldError("until", "must be after 'since'")

    def word(name: str) -> str | None:
        return one_line(values.get(name, ""), name, 320).lower() or None

    return AuditQuery(word("sender"), word("recipient"), word("reason"), since, until)


def audit_rows(ctx: WebContext, who: auth.Principal, query: AuditQuery) -> list[DecisionRecord]:
    """The newest decisions matching ``query`` about recipients ``who`` manages."""
    rows = ctx.store.decisions(
        sender=query.sender,
        recipient=query.recipient,
        limit=AUDIT_ROWS,
        reason=query.reason,
        recipient_domain=who.domain if who.kind == "domain" else None,
        since=query.since,
        until=query.until,
    )
    # The store's domain filter bounds a domain admin already; this keeps any other scope as strict.
    return [row for row in rows if auth.may_manage(who, row.recipient)]


def change_rows(ctx: WebContext, who: auth.Principal, address: str | None) -> list[Any]:
    """The newest changes made through the web service and the API that ``who`` may see."""
    if who.kind == "domain":
        return ctx.store.list_changes(address=address, domain=who.domain, limit=AUDIT_ROWS)
    return ctx.store.list_changes(address=address, limit=AUDIT_ROWS)


# -- explain ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Explained:
    action: str
    reason: str | None
    detail: str
    mail_from: str | None
    rcpt_to: str | None
    message: str | None


def explain(ctx: WebContext, sender: str, recipient: str, pasted: str) -> Explained:
    """The decision for a pasted message, as ``responder explain`` makes it: nothing sent or written."""
    from responder.decide.context import Services
    from responder.decide.engine import respond
    from responder.mail.message import Envelope, Inbound

    raw = pasted.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "surrogateescape")
    services = Services(ctx.settings, clock=ctx.clock, store=ctx.store)
    inbound = Inbound(Envelope(sender="" if sender == "<>" else sender, recipient=recipient), raw)
    decision = respond(inbound, services, dry_run=True)
    outgoing = decision.outgoing
    return Explained(
        action=decision.action,
        reason=decision.reason,
        detail=decision.detail,
        mail_from=outgoing.mail_from if outgoing else None,
        rcpt_to=outgoing.rcpt_to if outgoing else None,
        message=outgoing.as_bytes().decode("utf-8", "replace").replace("\r\n", "\n") if outgoing else None,
    )
