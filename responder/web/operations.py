"""What the pages read and change, over the store: scoped listings, saves, templates, audit, explain."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from responder.decide.records import DecisionRecord, Retirement, RetirementChanges, Vacation, VacationChanges
from responder.paths import resource_dir
from responder.web import auth
from responder.web.context import WebContext
from responder.web.forms import MAX_TEMPLATE, blank_retirement, blank_vacation, body_text, one_line
from responder.web.schedule import FieldError, parse_local, zone

# Rows shown at most on one audit page, newest first.
AUDIT_ROWS = 200
TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}\.j2$")


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


def save_vacation(ctx: WebContext, actor: str, address: str, changes: VacationChanges) -> None:
    if retirement_of(ctx, address) is not None:
        raise Conflict(f"{address} is retired: delete the retirement before setting a vacation")
    ctx.store.put_vacation(address, ctx.clock(), None, **changes)


def switch_off(ctx: WebContext, actor: str, address: str) -> bool:
    return ctx.store.set_enabled(address, False, ctx.clock())


def delete_vacation(ctx: WebContext, actor: str, address: str) -> bool:
    return ctx.store.delete_vacation(address)


def save_retirement(ctx: WebContext, actor: str, address: str, changes: RetirementChanges) -> None:
    check_bounce(ctx, address, changes)
    if not ctx.store.put_retirement(address, ctx.clock(), **changes):
        raise Conflict(f"{address} has a vacation: delete it before retiring the address")


def delete_retirement(ctx: WebContext, actor: str, address: str) -> bool:
    return ctx.store.delete_retirement(address)


def check_bounce(ctx: WebContext, address: str, changes: RetirementChanges) -> None:
    """Render the bounce text once with the new values, so that a failing template is refused now."""
    import dataclasses

    from responder.decide.templates import (
        SAMPLE_SENDER,
        SAMPLE_SUBJECT,
        Renderer,
        RenderError,
        bounce_variables,
    )

    now = ctx.clock()
    retirement = dataclasses.replace(retirement_of(ctx, address) or blank_retirement(address, now), **changes)
    settings = ctx.settings
    mta = settings.bounce.reporting_mta or settings.smtp.hostname or address.rpartition("@")[2]
    try:
        Renderer(settings.reply.templates_dir).render(
            settings.bounce.template, bounce_variables(retirement, SAMPLE_SENDER, SAMPLE_SUBJECT, mta, now)
        )
    except RenderError as exc:
        raise FieldError("message", f"the bounce does not render: {exc}") from None


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
    if not TEMPLATE_NAME.match(name):
        raise FieldError(
            "name", f"not a template name: {name!r} (letters, digits, '.', '_', '-', ending .j2)"
        )
    return name


def _directories(ctx: WebContext) -> list[Path]:
    own = ctx.settings.reply.templates_dir
    return [*([Path(own)] if own else []), resource_dir("templates")]


def template_names(ctx: WebContext) -> list[str]:
    names: set[str] = set()
    for directory in _directories(ctx):
        if directory.is_dir():
            names.update(p.name for p in directory.iterdir() if p.is_file() and TEMPLATE_NAME.match(p.name))
    return sorted(names)


def template_source(ctx: WebContext, name: str) -> str:
    for directory in _directories(ctx):
        path = directory / name
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return ""


def render_sample(ctx: WebContext, name: str, source: str) -> str:
    """``source`` rendered as template ``name`` with the sample values of its kind, in the sandbox."""
    from jinja2 import ChoiceLoader, DictLoader

    from responder.decide.templates import (
        SAMPLE_SENDER,
        SAMPLE_SUBJECT,
        Renderer,
        RenderError,
        bounce_variables,
        reply_variables,
    )

    source = body_text(source, "source", MAX_TEMPLATE)
    settings = ctx.settings
    now = ctx.clock()
    renderer = Renderer(settings.reply.templates_dir)
    # The text being edited stands in for the file; the templates it includes are the saved ones.
    assert renderer.environment.loader is not None
    renderer.environment.loader = ChoiceLoader([DictLoader({name: source}), renderer.environment.loader])
    sample = "sample@example.com"
    variables: Mapping[str, Any]
    if name == settings.bounce.template or name.startswith("bounce"):
        retirement = blank_retirement(sample, now)
        retirement = Retirement(**{**retirement.__dict__, "message": "I have left; write to the office."})
        variables = bounce_variables(retirement, SAMPLE_SENDER, SAMPLE_SUBJECT, "mx.example.com", now)
    else:
        vacation = blank_vacation(sample, now)
        vacation = Vacation(
            **{**vacation.__dict__, "message": "I am away.", "ends_at": now + dt.timedelta(days=7)}
        )
        interval = dt.timedelta(seconds=settings.reply.default_interval)
        variables = reply_variables(vacation, SAMPLE_SENDER, SAMPLE_SUBJECT, interval)
    try:
        return renderer.render(name, variables)
    except RenderError as exc:
        raise FieldError("source", str(exc)) from None


def save_template(ctx: WebContext, actor: str, name: str, source: str) -> None:
    directory = ctx.settings.reply.templates_dir
    if not directory:
        raise FieldError("source", "templates are read-only: set reply.templates_dir to edit them here")
    render_sample(ctx, name, source)
    path = Path(directory) / template_name(name)
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_text(body_text(source, "source", MAX_TEMPLATE), encoding="utf-8")
    temporary.replace(path)


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


def _in_scope(who: auth.Principal, row: DecisionRecord) -> bool:
    return auth.may_manage(who, row.recipient)


def audit_rows(ctx: WebContext, who: auth.Principal, query: AuditQuery) -> list[DecisionRecord]:
    """The newest decisions matching ``query`` about recipients ``who`` manages."""
    rows = ctx.store.decisions(sender=query.sender, recipient=query.recipient, limit=AUDIT_ROWS * 10)
    found = [
        row
        for row in rows
        if _in_scope(who, row)
        and (query.reason is None or query.reason in (row.reason or "", row.action))
        and (query.since is None or row.at >= query.since)
        and (query.until is None or row.at < query.until)
    ]
    return found[:AUDIT_ROWS]


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
