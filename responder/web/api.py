"""``/api/v1/``: vacations, retired addresses, templates, the audit, explain, rate limits, the change log.

Every route takes its caller from the Authorization header and bounds what it reads or changes by the
caller's scope (``may_manage``) before it looks anything up: another user's address is refused the
same whether it has an entry or not.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from responder.manage import fields
from responder.manage import retired as retired_ops
from responder.manage import templates as template_ops
from responder.manage import vacations as vacation_ops
from responder.manage.errors import Refused
from responder.web.auth import Principal, domain_of, may_manage
from responder.web.context import WebContext
from responder.web.errors import ApiError
from responder.web.principals import caller, context

router = APIRouter(prefix="/api/v1")
Caller = Annotated[Principal, Depends(caller)]
Ctx = Annotated[WebContext, Depends(context)]
AddressPath = Annotated[str, Path(description="a mail address, e.g. alice@example.com")]
VIA = "api"
_T = TypeVar("_T")

_STATUS = {"invalid_field": 400, "not_found": 404, "conflict": 409, "forbidden": 403}


def refused(exc: Refused) -> ApiError:
    return ApiError(_STATUS.get(exc.code, 400), exc.code, exc.message, exc.field)


def run(operation: Callable[[], _T]) -> _T:
    try:
        return operation()
    except Refused as exc:
        raise refused(exc) from None


def scoped(principal: Principal, value: str, field: str = "address") -> str:
    """The normalized address, if ``principal`` may manage it; 400 or 403 naming ``field`` otherwise."""
    address = run(lambda: fields.address(field, value))
    if not may_manage(principal, address):
        raise ApiError(403, "forbidden", f"{field}: {address} is outside what you may manage", field)
    return address


def tokens_only(principal: Principal) -> None:
    if principal.kind == "user":
        raise ApiError(403, "forbidden", "this needs an admin or domain admin token")


def admin_only(principal: Principal) -> None:
    if principal.kind != "admin":
        raise ApiError(403, "forbidden", "this needs an admin token")


class VacationBody(BaseModel):
    """The fields of `responder vacation show --json`; fields left out keep their value."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    enabled: StrictBool | None = None
    start: StrictStr | None = None
    end: StrictStr | None = None
    timezone: StrictStr | None = None
    interval: StrictStr | StrictInt | None = None
    subject: StrictStr | None = None
    from_: StrictStr | None = Field(default=None, alias="from")
    template: StrictStr | None = None
    aliases: list[StrictStr] | None = None
    message: StrictStr | None = None
    html_message: StrictStr | None = None
    external_subject: StrictStr | None = None
    external_message: StrictStr | None = None
    external_html_message: StrictStr | None = None
    external_audience: StrictStr | None = None
    default_language: StrictStr | None = None
    # Read back from a GET and ignored on PUT (other languages are set with `vacation set --language`).
    translations: list[dict[str, Any]] | None = None
    address: StrictStr | None = None
    status: StrictStr | None = None
    interval_set: StrictStr | None = None
    updated: StrictStr | None = None

    def changes(self) -> dict[str, Any]:
        given = self.model_dump(exclude_unset=True, by_alias=True)
        if given.get("enabled", True) is None:
            raise ApiError(400, "invalid_field", "enabled: expected true or false", "enabled")
        return given


class RetiredBody(BaseModel):
    """The fields of `responder bounce show --json`; fields left out keep their value."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    status: StrictStr | None = None
    start: StrictStr | None = None
    end: StrictStr | None = None
    timezone: StrictStr | None = None
    message: StrictStr | None = None
    address: StrictStr | None = None
    state: StrictStr | None = None
    smtp_text: StrictStr | None = None
    updated: StrictStr | None = None


class TemplateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    text: StrictStr


class ExplainBody(BaseModel):
    """A message and its envelope, decided as `responder explain` decides it: nothing is sent or stored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    message: StrictStr
    sender: StrictStr
    recipient: StrictStr
    original_recipient: StrictStr = ""
    client_address: StrictStr = ""
    helo: StrictStr = ""


class ResetBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    sender: StrictStr | None = None
    sender_domain: StrictStr | None = None
    recipient: StrictStr | None = None
    global_: StrictBool = Field(default=False, alias="global")
    all: StrictBool = False


@router.get("/whoami", summary="The caller: a mail user, a domain admin token or an admin token")
async def whoami(principal: Caller) -> dict[str, Any]:
    return {
        "kind": principal.kind,
        "name": principal.name,
        "address": principal.address,
        "domain": principal.domain,
    }


# Vacations


@router.get("/vacations", summary="The vacations the caller may manage")
def list_vacations(principal: Caller, ctx: Ctx) -> list[dict[str, Any]]:
    now = ctx.clock()
    return [
        vacation_ops.vacation_json(v, now, ctx.settings)
        for v in ctx.store.list_vacations()
        if may_manage(principal, v.address)
    ]


@router.get("/vacations/{address}", summary="One vacation, as `vacation show --json` prints it")
def get_vacation(address: AddressPath, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    wanted = scoped(principal, address)
    found = vacation_ops.find(ctx.store, wanted)
    if found is None:
        raise ApiError(404, "not_found", f"no vacation for {wanted}", "address")
    return vacation_ops.vacation_json(found, ctx.clock(), ctx.settings)


@router.put("/vacations/{address}", summary="Create or update a vacation (fields left out keep their value)")
def put_vacation(address: AddressPath, body: VacationBody, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    wanted = scoped(principal, address)
    changes = body.changes()
    if (
        changes.get("address") is not None
        and run(lambda: fields.address("address", changes["address"])) != wanted
    ):
        raise ApiError(400, "invalid_field", "address: differs from the address in the URL", "address")
    now = ctx.clock()
    saved = run(
        lambda: vacation_ops.set_vacation(
            ctx.store,
            ctx.settings,
            principal.actor,
            VIA,
            wanted,
            changes,
            now,
            allowed=lambda alias: may_manage(principal, alias),
        )
    )
    return vacation_ops.vacation_json(saved, now, ctx.settings)


@router.post("/vacations/{address}/off", summary="Switch a vacation off (kept for later)")
def vacation_off(address: AddressPath, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    wanted = scoped(principal, address)
    now = ctx.clock()
    saved = run(lambda: vacation_ops.switch_off(ctx.store, ctx.settings, principal.actor, VIA, wanted, now))
    return vacation_ops.vacation_json(saved, now, ctx.settings)


@router.delete("/vacations/{address}", summary="Delete a vacation and its reply history")
def delete_vacation(address: AddressPath, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    wanted = scoped(principal, address)
    run(lambda: vacation_ops.delete(ctx.store, ctx.settings, principal.actor, VIA, wanted, ctx.clock()))
    return {"address": wanted, "deleted": True}


# Retired addresses


@router.get("/retired", summary="The retired addresses the caller may manage")
def list_retired(principal: Caller, ctx: Ctx) -> list[dict[str, Any]]:
    tokens_only(principal)
    now = ctx.clock()
    return [
        retired_ops.retired_json(r, now)
        for r in ctx.store.list_retirements()
        if may_manage(principal, r.address)
    ]


@router.get("/retired/{address}", summary="One retired address, as `bounce show --json` prints it")
def get_retired(address: AddressPath, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    tokens_only(principal)
    wanted = scoped(principal, address)
    found = retired_ops.find(ctx.store, wanted)
    if found is None:
        raise ApiError(404, "not_found", f"{wanted} is not retired", "address")
    return retired_ops.retired_json(found, ctx.clock())


@router.put("/retired/{address}", summary="Retire an address, or change its retirement")
def put_retired(address: AddressPath, body: RetiredBody, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    tokens_only(principal)
    wanted = scoped(principal, address)
    now = ctx.clock()
    given = body.model_dump(exclude_unset=True)
    saved = run(
        lambda: retired_ops.set_retired(ctx.store, ctx.settings, principal.actor, VIA, wanted, given, now)
    )
    return retired_ops.retired_json(saved, now)


@router.delete("/retired/{address}", summary="Un-retire an address and forget its bounce history")
def delete_retired(address: AddressPath, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    tokens_only(principal)
    wanted = scoped(principal, address)
    run(lambda: retired_ops.delete(ctx.store, principal.actor, VIA, wanted, ctx.clock()))
    return {"address": wanted, "deleted": True}


# Templates (shared by every address: admins write them, domain admins read them)


@router.get("/templates", summary="The reply and bounce templates")
def list_templates(principal: Caller, ctx: Ctx) -> list[dict[str, object]]:
    tokens_only(principal)
    return template_ops.list_templates(ctx.settings)


@router.get("/templates/{name}", summary="One template's text")
def get_template(name: str, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    tokens_only(principal)
    text, source = run(lambda: template_ops.read_template(ctx.settings, name))
    return {"name": name, "source": source, "text": text}


@router.put("/templates/{name}", summary="Write a template; refused unless it renders with sample values")
def put_template(name: str, body: TemplateBody, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    admin_only(principal)
    sample = run(
        lambda: template_ops.write_template(
            ctx.store, ctx.settings, principal.actor, VIA, name, body.text, ctx.clock()
        )
    )
    return {"name": name, "source": "site", "text": body.text, "sample": sample}


# The audit trail


def _instant(field: str, value: str | None) -> dt.datetime | None:
    return run(lambda: fields.when(field, value, "UTC"))


@router.get("/audit", summary="Decisions, newest first: why did this person get (no) reply?")
def audit(
    principal: Caller,
    ctx: Ctx,
    sender: str | None = None,
    recipient: str | None = None,
    reason: str | None = None,
    since: Annotated[str | None, Query(description="ISO 8601, inclusive; UTC without an offset")] = None,
    until: Annotated[str | None, Query(description="ISO 8601, exclusive; UTC without an offset")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    wanted_sender = run(lambda: fields.address("sender", sender)) if sender else None
    wanted_recipient = scoped(principal, recipient, "recipient") if recipient else None
    start, end = _instant("since", since), _instant("until", until)
    if start and end and end <= start:
        raise ApiError(400, "invalid_field", "until: must be after since", "until")
    if principal.kind == "user" and wanted_recipient is None:
        wanted_recipient = principal.address
    records = ctx.store.decisions(
        sender=wanted_sender,
        recipient=wanted_recipient,
        limit=limit,
        reason=reason or None,
        recipient_domain=principal.domain if principal.kind == "domain" else None,
        since=start,
        until=end,
    )
    return [{**r.__dict__, "at": r.at.isoformat()} for r in records if may_manage(principal, r.recipient)]


# Explain


@router.post(
    "/explain", summary="The decision for a message and envelope, as `responder explain`; nothing sent"
)
def explain(body: ExplainBody, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    from responder.decide.context import Services
    from responder.decide.engine import respond
    from responder.mail.message import Envelope, Inbound

    scoped(principal, body.recipient, "recipient")
    if body.original_recipient:
        scoped(principal, body.original_recipient, "original_recipient")
    envelope = Envelope(
        sender=body.sender,
        recipient=body.recipient,
        original_recipient=body.original_recipient,
        client_address=body.client_address,
        helo=body.helo,
    )
    raw = body.message.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "surrogateescape")
    # The shared store is handed in and not closed here; dry_run reads it and writes nothing.
    services = Services(ctx.settings, clock=ctx.clock, store=ctx.store)
    decision = respond(Inbound(envelope, raw), services, dry_run=True)
    message = decision.outgoing.as_bytes().decode("utf-8", "replace") if decision.outgoing else None
    return {
        "action": decision.action,
        "reason": decision.reason,
        "detail": decision.detail,
        "mail_from": decision.outgoing.mail_from if decision.outgoing else None,
        "rcpt_to": decision.outgoing.rcpt_to if decision.outgoing else None,
        "message": message,
    }


# Rate limits


def _limit_selectors(
    principal: Caller, sender: str | None, recipient: str | None
) -> list[tuple[str, str | None]]:
    from responder.decide.limits import GLOBAL_KEY
    from responder.mail.addresses import sender_domain, sender_key

    selectors: list[tuple[str, str | None]] = []
    if sender:
        admin_only(principal)
        key = sender_key(run(lambda: fields.address("sender", sender)))
        selectors += [("sender", key), ("sender-domain", sender_domain(key))]
    if recipient:
        selectors.append(("recipient", scoped(principal, recipient, "recipient")))
    if selectors and principal.kind == "admin":
        selectors.append(("global", GLOBAL_KEY))
    return selectors


@router.get("/limits", summary="Rate-limit counters of the open windows")
def show_limits(
    principal: Caller, ctx: Ctx, sender: str | None = None, recipient: str | None = None
) -> list[dict[str, Any]]:
    from responder.decide.limits import SCOPES

    tokens_only(principal)
    selectors = _limit_selectors(principal, sender, recipient)
    if not selectors and principal.kind != "admin":
        raise ApiError(400, "invalid_field", "recipient: a domain admin asks for one recipient", "recipient")
    limits = {scope.name: scope.limit(ctx.settings.limits) for scope in SCOPES}
    shown = []
    for c in ctx.store.counters(ctx.clock(), selectors):
        if principal.kind != "admin" and not (
            c.scope == "recipient" and may_manage(principal, c.counter_key)
        ):
            continue
        limit = limits[c.scope]
        shown.append(
            {
                "scope": c.scope,
                "key": c.counter_key,
                "count": c.count,
                "limit": str(limit) if limit else "off",
                "window_start": c.window_start.isoformat(),
                "window_end": c.window_end.isoformat(),
                "tripped": c.tripped,
            }
        )
    return shown


@router.post("/limits/reset", summary="Delete counters so that their limits start again at 0")
def reset_limits(body: ResetBody, principal: Caller, ctx: Ctx) -> dict[str, Any]:
    from responder.decide.limits import GLOBAL_KEY
    from responder.mail.addresses import sender_key

    tokens_only(principal)
    selectors: list[tuple[str, str | None]] = []
    if body.sender or body.sender_domain or body.global_ or body.all:
        admin_only(principal)
    if body.sender:
        selectors.append(("sender", sender_key(run(lambda: fields.address("sender", body.sender)))))
    if body.sender_domain:
        domain = domain_of(run(lambda: fields.address("sender_domain", f"x@{body.sender_domain}")))
        selectors.append(("sender-domain", domain))
    if body.recipient:
        selectors.append(("recipient", scoped(principal, body.recipient, "recipient")))
    if body.global_:
        selectors.append(("global", GLOBAL_KEY))
    if body.all:
        selectors = []
    elif not selectors:
        raise ApiError(
            400, "invalid_field", "say what to reset: sender, sender_domain, recipient, global or all"
        )
    removed = ctx.store.reset_counters(selectors)
    target = ",".join(f"{scope}={key}" for scope, key in selectors) or "all"
    recipients = [key for scope, key in selectors if scope == "recipient" and key]
    ctx.store.record_change(
        ctx.clock(),
        principal.actor,
        VIA,
        recipients[0] if recipients else "limits",
        "limits.reset",
        {"reset": target, "removed": removed},
    )
    return {"reset": removed}


# The change log


@router.get("/changes", summary="Changes made through the web service, newest first")
def list_changes(
    principal: Caller,
    ctx: Ctx,
    address: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    wanted = scoped(principal, address) if address else None
    if principal.kind == "user" and wanted is None:
        wanted = principal.address
    found = ctx.store.list_changes(
        address=wanted,
        domain=principal.domain if principal.kind == "domain" else None,
        since=_instant("since", since),
        until=_instant("until", until),
        limit=limit,
    )
    return [
        {
            "at": c.at.isoformat(),
            "actor": c.actor,
            "via": c.via,
            "address": c.address,
            "action": c.action,
            "detail": c.detail,
        }
        for c in found
        if principal.kind == "admin" or may_manage(principal, c.address)
    ]
