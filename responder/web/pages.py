"""The server-rendered pages: sign-in, a user's own out-of-office, and the admins' pages."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader

from responder.decide.records import Retirement, Vacation
from responder.decide.templates import RenderError
from responder.manage.vacations import blank
from responder.web import auth, operations
from responder.web.context import WebContext
from responder.web.forms import (
    MAX_FORM_BYTES,
    address_field,
    blank_retirement,
    prospective_vacation,
    retirement_changes,
    text,
    vacation_changes,
)
from responder.web.imap import ImapUnavailable
from responder.web.preview import Preview, preview_reply
from responder.web.schedule import (
    FieldError,
    interval_sentence,
    local_input,
    spoken_time,
    wall_time,
    zone_names,
)
from responder.web.sessions import CSRF_FIELD, Session, SessionCodec, csrf_matches, new_session

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"style.css": "text/css; charset=utf-8", "timezone.js": "text/javascript; charset=utf-8"}
ADMIN_KINDS = ("admin", "domain")

# Every page route as (method, path), for the tests that try each one as the wrong person.
ROUTES: list[tuple[str, str]] = []


class _Stop(Exception):
    """Ends a handler early with this response (a refusal, a redirect to the sign-in page)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


Handler = Callable[[Request], Awaitable[Response]]


def _route(method: str, path: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                response = await handler(request)
            except _Stop as stop:
                response = stop.response
            # Pages hold a person's data and their CSRF token: never cached, never framed.
            response.headers.setdefault("Cache-Control", "no-store")
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "same-origin")
            return response

        endpoint.__name__ = f"page_{handler.__name__}"
        router.add_api_route(path, endpoint, methods=[method], response_class=HTMLResponse)
        ROUTES.append((method, path))
        return handler

    return register


def path_part(text: str) -> str:
    """``text`` as one URL path segment; the @ of an address stays readable."""
    return quote(text, safe="@+")


# -- state shared by the pages of one app ------------------------------------------------------------


@dataclass
class PageState:
    codec: SessionCodec
    templates: Environment


def _web(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.web
    return ctx


@cache
def _environment() -> Environment:
    # Autoescaping on: unlike the reply templates, these pages are HTML showing what others wrote.
    env = Environment(loader=PackageLoader("responder.web", "templates"), autoescape=True)
    env.filters["spoken_time"] = spoken_time
    env.filters["wall"] = wall_time
    env.filters["path"] = path_part
    return env


def _state(request: Request) -> PageState:
    state: PageState | None = getattr(request.app.state, "pages", None)
    if state is None:
        ctx = _web(request)
        clock = ctx.clock
        codec = SessionCodec(ctx.secret, ctx.settings.web.session_lifetime, lambda: clock().timestamp())
        state = PageState(codec, _environment())
        request.app.state.pages = state
    return state


# -- rendering -------------------------------------------------------------------------------------


def _render(
    request: Request,
    template: str,
    session: Session | None,
    status: int = 200,
    **values: Any,
) -> HTMLResponse:
    state = _state(request)
    fresh = session is None
    if session is None:
        session = new_session()
    html = state.templates.get_template(template).render(
        session=session,
        csrf_field=CSRF_FIELD,
        csrf=session.csrf,
        is_admin=session.kind in ADMIN_KINDS,
        is_site_admin=session.kind == "admin",
        request_path=request.url.path,
        **values,
    )
    response = HTMLResponse(html, status_code=status)
    if fresh:
        state.codec.write(request, response, session)
    return response


def _message_page(request: Request, session: Session | None, status: int, title: str, text_: str) -> Response:
    return _render(request, "message.html", session, status, title=title, text=text_)


def _refuse(request: Request, session: Session | None, why: str = "") -> _Stop:
    return _Stop(
        _message_page(
            request, session, 403, "Not yours", why or "You may not see or change this address or page."
        )
    )


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# -- who is asking ---------------------------------------------------------------------------------


def _session(request: Request) -> Session | None:
    return _state(request).codec.read(request)


async def _signed_in(request: Request) -> Session:
    """The signed-in session; a GET without one goes to the sign-in page, anything else is refused.

    An admin's session lasts only as long as its token: a revoked token ends it at the next request.
    """
    session = _session(request)
    if session is not None and session.signed_in:
        if session.kind not in ADMIN_KINDS:
            return session
        if await run_in_threadpool(operations.token_alive, _web(request), principal(session)):
            return session
    if request.method == "GET":
        raise _Stop(_redirect("/signin?" + urlencode({"next": request.url.path})))
    raise _Stop(_message_page(request, None, 401, "Signed out", "Your session ended: sign in again."))


def principal(session: Session) -> auth.Principal:
    kind: Any = session.kind
    return auth.Principal(kind=kind, name=session.name, address=session.address, domain=session.domain)


async def _admin(request: Request, site: bool = False) -> Session:
    """An admin's session (``site``: a full admin's, not a domain admin's); users are refused."""
    session = await _signed_in(request)
    if session.kind not in (("admin",) if site else ADMIN_KINDS):
        raise _refuse(request, session, "This page is for administrators.")
    return session


def _managed(request: Request, session: Session, raw: str) -> str:
    """The address in the URL, when this session may manage it; refused (403) otherwise."""
    try:
        address = address_field(raw)
    except FieldError:
        raise _refuse(request, session) from None
    if not auth.may_manage(principal(session), address):
        raise _refuse(request, session)
    return address


async def _form(request: Request, session: Session | None) -> Mapping[str, Any]:
    """The posted form, refused when oversized (413) or without this session's CSRF token (403)."""
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > MAX_FORM_BYTES:
        status, why = (413, "The form is too large.") if length.isdigit() else (411, "No length given.")
        raise _Stop(_message_page(request, session, status, "Refused", why))
    form = await request.form(max_files=0, max_fields=64, max_part_size=MAX_FORM_BYTES)
    if not csrf_matches(session, form.get(CSRF_FIELD)):
        raise _Stop(
            _message_page(
                request,
                session,
                403,
                "The form expired",
                "The form was not sent from this session (its CSRF token is missing or wrong). "
                "Go back, reload the page and send it again.",
            )
        )
    return form


# -- sign-in ---------------------------------------------------------------------------------------


def _next(raw: object) -> str:
    """Only a path on this site: never an open redirect."""
    if isinstance(raw, str) and raw.startswith("/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return "/"


@_route("GET", "/")
async def home(request: Request) -> Response:
    session = _session(request)
    if session is None or not session.signed_in:
        return _redirect("/signin")
    if session.kind in ADMIN_KINDS:
        return _redirect("/admin")
    return _redirect(f"/vacation/{path_part(session.address or '')}")


@_route("GET", "/signin")
async def signin_page(request: Request) -> Response:
    return _render(request, "signin.html", None, next=_next(request.query_params.get("next")))


@_route("POST", "/signin")
async def signin(request: Request) -> Response:
    form = await _form(request, _session(request))
    address = text(form, "address").strip()
    values = {"address": address, "next": _next(form.get("next"))}
    client = request.client.host if request.client else ""
    try:
        who = await auth.sign_in(_web(request), address, text(form, "password"), client)
    except auth.BadCredentials:
        return _render(
            request, "signin.html", None, 401, error="The address or the password is wrong.", **values
        )
    except auth.Throttled as exc:
        minutes = max(1, -(-int(exc.retry_after) // 60))
        response = _render(
            request,
            "signin.html",
            None,
            429,
            error=f"Too many attempts. Try again later (in about {minutes} minute{'s' * (minutes > 1)}).",
            **values,
        )
        response.headers["Retry-After"] = str(int(exc.retry_after))
        return response
    except ImapUnavailable:
        return _render(
            request,
            "signin.html",
            None,
            503,
            error="The mail server cannot check passwords right now. Try again later.",
            **values,
        )
    return _start_session(request, who, values["next"])


def _start_session(request: Request, who: auth.Principal, next_url: str) -> Response:
    session = new_session(kind=who.kind, name=who.name, address=who.address, domain=who.domain)
    response = _redirect(next_url if next_url != "/" else "/")
    _state(request).codec.write(request, response, session)
    return response


@_route("GET", "/signin/token")
async def token_page(request: Request) -> Response:
    return _render(request, "token.html", None)


@_route("POST", "/signin/token")
async def token_signin(request: Request) -> Response:
    form = await _form(request, _session(request))
    who = await run_in_threadpool(auth.principal_for_token, _web(request), text(form, "token").strip())
    if who is None:
        return _render(request, "token.html", None, 401, error="This token is unknown or revoked.")
    return _start_session(request, who, "/admin" if who.kind in ADMIN_KINDS else "/")


@_route("POST", "/signout")
async def signout(request: Request) -> Response:
    await _form(request, _session(request))
    response = _redirect("/signin")
    SessionCodec.clear(request, response)
    return response


@_route("GET", "/static/{name}")
async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC_FILES:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(
        (STATIC / name).read_bytes(),
        media_type=STATIC_FILES[name],
        headers={"Cache-Control": "public, max-age=3600"},
    )


# -- the out-of-office page ------------------------------------------------------------------------


def _vacation_values(vacation: Vacation) -> dict[str, Any]:
    return {
        "enabled": vacation.enabled,
        "start": local_input(vacation.starts_at, vacation.timezone),
        "end": local_input(vacation.ends_at, vacation.timezone),
        "timezone": vacation.timezone,
        "subject": vacation.subject or "",
        "message": vacation.message,
    }


def _form_values(form: Mapping[str, Any]) -> dict[str, Any]:
    def value(name: str) -> str:
        found = form.get(name, "")
        return found if isinstance(found, str) else ""

    return {
        "enabled": value("enabled") in ("on", "1", "true"),
        "start": value("start"),
        "end": value("end"),
        "timezone": value("timezone"),
        "subject": value("subject"),
        "message": value("message"),
    }


def status_line(vacation: Vacation | None, now: dt.datetime) -> tuple[str, str]:
    """The banner: (state, sentence), e.g. ("active", "Your out-of-office reply is on until ...")."""
    if vacation is None:
        return "none", "No out-of-office reply is set."
    state = vacation.state(now)
    zone = vacation.timezone
    if state == "active":
        if vacation.ends_at is None:
            return state, "The out-of-office reply is on, with no end date."
        return state, f"The out-of-office reply is on until {spoken_time(vacation.ends_at, zone)}."
    if state == "scheduled" and vacation.starts_at is not None:
        until = f" until {spoken_time(vacation.ends_at, zone)}" if vacation.ends_at else ""
        return state, f"The out-of-office reply starts on {spoken_time(vacation.starts_at, zone)}{until}."
    if state == "ended" and vacation.ends_at is not None:
        return state, f"The out-of-office reply ended on {spoken_time(vacation.ends_at, zone)}."
    return state, "The out-of-office reply is off."


def applied_interval(vacation: Vacation | None, settings: Any) -> float:
    """The interval the engine keeps for this vacation (its own, else the site's, within the bounds)."""
    reply = settings.reply
    wanted = reply.default_interval
    if vacation is not None and vacation.interval_seconds is not None:
        wanted = vacation.interval_seconds
    return float(min(max(wanted, reply.min_interval), reply.max_interval))


def _preview(ctx: WebContext, vacation: Vacation, now: dt.datetime) -> Preview:
    try:
        return preview_reply(ctx.settings, vacation, now)
    except RenderError as exc:
        raise FieldError("template", f"the reply does not render: {exc}") from None


async def _vacation_page(
    request: Request,
    session: Session,
    address: str,
    *,
    values: dict[str, Any] | None = None,
    preview: Preview | None = None,
    error: FieldError | None = None,
    status: int = 200,
    notice: str = "",
) -> Response:
    ctx = _web(request)
    now = ctx.clock()
    stored = await run_in_threadpool(operations.vacation_of, ctx, address)
    retired = await run_in_threadpool(operations.retirement_of, ctx, address)
    if values is None:
        values = _vacation_values(stored) if stored else _vacation_values(blank(address, now))
    if preview is None and stored is not None and error is None:
        try:
            preview = await run_in_threadpool(_preview, ctx, stored, now)
        except FieldError as exc:
            error = exc
    state, banner = status_line(stored, now)
    return _render(
        request,
        "vacation.html",
        session,
        status,
        address=address,
        own=session.address == address,
        new=stored is None,
        values=values,
        zones=zone_names(),
        preview=preview,
        error=error,
        state=state,
        banner=banner,
        interval=interval_sentence(applied_interval(stored, ctx.settings)),
        retired=retired,
        notice=notice,
    )


@_route("GET", "/vacation")
async def own_vacation(request: Request) -> Response:
    session = await _signed_in(request)
    if session.kind in ADMIN_KINDS or not session.address:
        return _redirect("/admin")
    return _redirect(f"/vacation/{path_part(session.address)}")


_NOTICES = {
    "saved": "Saved. The next message gets this reply.",
    "off": "Switched off.",
    "deleted": "Deleted.",
}


@_route("GET", "/vacation/{address}")
async def vacation_page(request: Request) -> Response:
    session = await _signed_in(request)
    address = _managed(request, session, request.path_params["address"])
    notice = _NOTICES.get(request.query_params.get("done", ""), "")
    return await _vacation_page(request, session, address, notice=notice)


@_route("POST", "/vacation/{address}")
async def vacation_save(request: Request) -> Response:
    session = await _signed_in(request)
    address = _managed(request, session, request.path_params["address"])
    form = await _form(request, session)
    ctx = _web(request)
    now = ctx.clock()
    values = _form_values(form)
    try:
        changes = vacation_changes(form)
        stored = await run_in_threadpool(operations.vacation_of, ctx, address)
        prospective = prospective_vacation(address, stored, changes, now)
        preview = await run_in_threadpool(_preview, ctx, prospective, now)
        if text(form, "action") == "preview":
            return await _vacation_page(request, session, address, values=values, preview=preview)
        await run_in_threadpool(operations.save_vacation, ctx, principal(session), address, changes)
    except FieldError as exc:
        return await _vacation_page(request, session, address, values=values, error=exc, status=422)
    except operations.Conflict as exc:
        return await _vacation_page(
            request, session, address, values=values, error=FieldError("address", str(exc)), status=409
        )
    return _redirect(f"/vacation/{path_part(address)}?done=saved")


@_route("POST", "/vacation/{address}/off")
async def vacation_off(request: Request) -> Response:
    session = await _signed_in(request)
    address = _managed(request, session, request.path_params["address"])
    await _form(request, session)
    try:
        await run_in_threadpool(operations.switch_off, _web(request), principal(session), address)
    except operations.Conflict as exc:
        return _message_page(request, session, 404, "Nothing to change", str(exc))
    return _redirect(f"/vacation/{path_part(address)}?done=off")


@_route("POST", "/vacation/{address}/delete")
async def vacation_delete(request: Request) -> Response:
    session = await _signed_in(request)
    address = _managed(request, session, request.path_params["address"])
    await _form(request, session)
    try:
        await run_in_threadpool(operations.delete_vacation, _web(request), principal(session), address)
    except operations.Conflict as exc:
        return _message_page(request, session, 404, "Nothing to change", str(exc))
    return _redirect(f"/vacation/{path_part(address)}?done=deleted")


# -- admin: find an address ------------------------------------------------------------------------


@_route("GET", "/admin")
async def admin_home(request: Request) -> Response:
    session = await _admin(request)
    ctx = _web(request)
    now = ctx.clock()
    query = request.query_params.get("q", "").strip()
    who = principal(session)
    vacations, retirements = await run_in_threadpool(operations.listing, ctx, who, query)
    exact: str | None = None
    if "@" in query:
        try:
            candidate = address_field(query, "q")
        except FieldError:
            candidate = None
        if candidate is not None and auth.may_manage(who, candidate):
            exact = candidate
    return _render(
        request,
        "admin.html",
        session,
        query=query,
        exact=exact,
        vacations=[(v, status_line(v, now)) for v in vacations],
        retirements=[(r, r.state(now)) for r in retirements],
    )


# -- admin: retired addresses ----------------------------------------------------------------------


def _retirement_values(retirement: Retirement) -> dict[str, Any]:
    return {
        "start": local_input(retirement.starts_at, retirement.timezone),
        "end": local_input(retirement.ends_at, retirement.timezone),
        "timezone": retirement.timezone,
        "status": retirement.status,
        "message": retirement.message,
    }


@_route("GET", "/admin/retired")
async def retired_list(request: Request) -> Response:
    session = await _admin(request)
    ctx = _web(request)
    now = ctx.clock()
    _, retirements = await run_in_threadpool(operations.listing, ctx, principal(session), "")
    return _render(
        request, "retired_list.html", session, retirements=[(r, r.state(now)) for r in retirements]
    )


@_route("POST", "/admin/retired")
async def retired_new(request: Request) -> Response:
    session = await _admin(request)
    form = await _form(request, session)
    raw = text(form, "address")
    try:
        address = address_field(raw)
    except FieldError as exc:
        ctx = _web(request)
        _, retirements = await run_in_threadpool(operations.listing, ctx, principal(session), "")
        now = ctx.clock()
        return _render(
            request,
            "retired_list.html",
            session,
            422,
            error=exc,
            retirements=[(r, r.state(now)) for r in retirements],
        )
    address = _managed(request, session, address)
    return _redirect(f"/admin/retired/{path_part(address)}")


async def _retired_page(
    request: Request,
    session: Session,
    address: str,
    *,
    values: dict[str, Any] | None = None,
    error: FieldError | None = None,
    status: int = 200,
    notice: str = "",
) -> Response:
    ctx = _web(request)
    stored = await run_in_threadpool(operations.retirement_of, ctx, address)
    if values is None:
        values = _retirement_values(stored or blank_retirement(address, ctx.clock()))
    return _render(
        request,
        "retired.html",
        session,
        status,
        address=address,
        stored=stored,
        values=values,
        zones=zone_names(),
        error=error,
        notice=notice,
    )


@_route("GET", "/admin/retired/{address}")
async def retired_page(request: Request) -> Response:
    session = await _admin(request)
    address = _managed(request, session, request.path_params["address"])
    notice = {"saved": "Saved.", "deleted": "Deleted."}.get(request.query_params.get("done", ""), "")
    return await _retired_page(request, session, address, notice=notice)


@_route("POST", "/admin/retired/{address}")
async def retired_save(request: Request) -> Response:
    session = await _admin(request)
    address = _managed(request, session, request.path_params["address"])
    form = await _form(request, session)
    values = {name: text(form, name) for name in ("start", "end", "timezone", "status", "message")}
    try:
        changes = retirement_changes(form)
        await run_in_threadpool(
            operations.save_retirement, _web(request), principal(session), address, changes
        )
    except FieldError as exc:
        return await _retired_page(request, session, address, values=values, error=exc, status=422)
    except operations.Conflict as exc:
        error = FieldError("address", str(exc))
        return await _retired_page(request, session, address, values=values, error=error, status=409)
    return _redirect(f"/admin/retired/{path_part(address)}?done=saved")


@_route("POST", "/admin/retired/{address}/delete")
async def retired_delete(request: Request) -> Response:
    session = await _admin(request)
    address = _managed(request, session, request.path_params["address"])
    await _form(request, session)
    try:
        await run_in_threadpool(operations.delete_retirement, _web(request), principal(session), address)
    except operations.Conflict as exc:
        return _message_page(request, session, 404, "Nothing to change", str(exc))
    return _redirect(f"/admin/retired/{path_part(address)}?done=deleted")


# -- admin: templates ------------------------------------------------------------------------------


@_route("GET", "/admin/templates")
async def templates_list(request: Request) -> Response:
    session = await _admin(request, site=True)
    names = await run_in_threadpool(operations.template_names, _web(request))
    return _render(
        request,
        "templates_list.html",
        session,
        names=names,
        writable=bool(_web(request).settings.reply.templates_dir),
    )


async def _template_page(
    request: Request,
    session: Session,
    name: str,
    *,
    source: str | None = None,
    rendered: str | None = None,
    error: FieldError | None = None,
    status: int = 200,
    notice: str = "",
) -> Response:
    ctx = _web(request)
    if source is None:
        source = await run_in_threadpool(operations.template_source, ctx, name)
    if rendered is None and error is None:
        try:
            rendered = await run_in_threadpool(operations.render_sample, ctx, name, source)
        except FieldError as exc:
            error = exc
    return _render(
        request,
        "template.html",
        session,
        status,
        name=name,
        source=source,
        rendered=rendered,
        error=error,
        notice=notice,
        writable=bool(ctx.settings.reply.templates_dir),
    )


def _template_name(request: Request, session: Session) -> str:
    try:
        return operations.template_name(request.path_params["name"])
    except FieldError as exc:
        raise _Stop(_message_page(request, session, 404, "No such template", exc.message)) from None


@_route("GET", "/admin/templates/{name}")
async def template_page(request: Request) -> Response:
    session = await _admin(request, site=True)
    name = _template_name(request, session)
    notice = "Saved." if request.query_params.get("done") == "saved" else ""
    return await _template_page(request, session, name, notice=notice)


@_route("POST", "/admin/templates/{name}")
async def template_save(request: Request) -> Response:
    session = await _admin(request, site=True)
    name = _template_name(request, session)
    form = await _form(request, session)
    source = text(form, "text")
    ctx = _web(request)
    try:
        rendered = await run_in_threadpool(operations.render_sample, ctx, name, source)
        if text(form, "action") == "preview":
            return await _template_page(request, session, name, source=source, rendered=rendered)
        await run_in_threadpool(operations.save_template, ctx, principal(session), name, source)
    except FieldError as exc:
        return await _template_page(request, session, name, source=source, error=exc, status=422)
    return _redirect(f"/admin/templates/{path_part(name)}?done=saved")


# -- admin: the audit trail and explain ------------------------------------------------------------


@_route("GET", "/admin/audit")
async def audit_page(request: Request) -> Response:
    session = await _admin(request)
    ctx = _web(request)
    params = request.query_params
    values = {name: params.get(name, "") for name in ("sender", "recipient", "reason", "since", "until")}
    values["timezone"] = params.get("timezone", "") or "UTC"
    rows: list[Any] = []
    error: FieldError | None = None
    try:
        query = operations.audit_query(values)
        rows = await run_in_threadpool(operations.audit_rows, ctx, principal(session), query)
    except FieldError as exc:
        error = exc
    return _render(
        request,
        "audit.html",
        session,
        422 if error else 200,
        values=values,
        rows=rows,
        error=error,
        zones=zone_names(),
    )


@_route("GET", "/admin/changes")
async def changes_page(request: Request) -> Response:
    session = await _admin(request)
    raw = request.query_params.get("address", "").strip()
    error: FieldError | None = None
    rows: list[Any] = []
    try:
        address = address_field(raw) if raw else None
        rows = await run_in_threadpool(operations.change_rows, _web(request), principal(session), address)
    except FieldError as exc:
        error = exc
    return _render(
        request, "changes.html", session, 422 if error else 200, address=raw, rows=rows, error=error
    )


@_route("GET", "/admin/explain")
async def explain_page(request: Request) -> Response:
    session = await _admin(request)
    return _render(
        request, "explain.html", session, values={"sender": "", "recipient": "", "message": ""}, result=None
    )


@_route("POST", "/admin/explain")
async def explain(request: Request) -> Response:
    session = await _admin(request)
    form = await _form(request, session)
    values = {name: text(form, name) for name in ("sender", "recipient", "message")}
    try:
        sender = values["sender"].strip()
        if sender and sender != "<>":
            sender = address_field(sender, "sender")
        recipient = address_field(values["recipient"], "recipient")
        if not auth.may_manage(principal(session), recipient):
            raise _refuse(request, session, "The recipient is outside the addresses you manage.")
        if not values["message"].strip():
            raise FieldError("message", "paste the message, its header first")
        result = await run_in_threadpool(
            operations.explain, _web(request), sender, recipient, values["message"]
        )
    except FieldError as exc:
        return _render(request, "explain.html", session, 422, values=values, result=None, error=exc)
    return _render(request, "explain.html", session, values=values, result=result)
