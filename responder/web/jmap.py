"""JMAP (RFC 8620) for mail clients: the session resource and VacationResponse (RFC 8621 section 8).

A signed-in user has one account, their address; its one VacationResponse, "singleton", is the
address's vacation. A token sees the accounts of the vacations in its scope. Account ids are
derived from the address (JMAP ids allow no "@"), so another user's id is simply not found.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from responder.decide.records import Vacation
from responder.manage import vacations as vacation_ops
from responder.manage.errors import Conflict, InvalidField, Refused
from responder.web.auth import Principal, may_manage
from responder.web.context import WebContext
from responder.web.principals import caller, context

router = APIRouter(include_in_schema=False)
Caller = Annotated[Principal, Depends(caller)]

CORE = "urn:ietf:params:jmap:core"
VACATION = "urn:ietf:params:jmap:vacationresponse"
CAPABILITIES = {CORE, VACATION}
SINGLETON = "singleton"
PROPERTIES = ("id", "isEnabled", "fromDate", "toDate", "subject", "textBody", "htmlBody")
MAX_CALLS = 16
VIA = "jmap"
# JMAP property -> the field of the shared checks, and back for their errors.
_FIELDS = {
    "isEnabled": "enabled",
    "fromDate": "start",
    "toDate": "end",
    "subject": "subject",
    "textBody": "message",
    "htmlBody": "html_message",
}
_PROPERTY = {field: prop for prop, field in _FIELDS.items()} | {"template": "textBody", "address": "id"}


def account_id(address: str) -> str:
    """An RFC 8620 Id (URL-safe letters) for the account of ``address``."""
    return "A" + hashlib.sha256(address.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def _base(request: Request, ctx: WebContext) -> str:
    return ctx.settings.web.base_url or str(request.base_url).rstrip("/")


def _addresses(ctx: WebContext, principal: Principal) -> list[str]:
    if principal.kind == "user":
        assert principal.address is not None
        return [principal.address]
    return [v.address for v in ctx.store.list_vacations() if may_manage(principal, v.address)]


def _state(vacation: Vacation | None) -> str:
    if vacation is None:
        return "0"
    stamp = f"{vacation.id}:{vacation.updated_at.isoformat()}:{vacation.enabled}"
    return hashlib.sha256(stamp.encode()).hexdigest()[:16]


def _session(ctx: WebContext, principal: Principal, base: str) -> dict[str, Any]:
    addresses = _addresses(ctx, principal)
    accounts = {
        account_id(address): {
            "name": address,
            "isPersonal": principal.kind == "user",
            "isReadOnly": False,
            "accountCapabilities": {CORE: {}, VACATION: {}},
        }
        for address in addresses
    }
    primary = (
        {CORE: account_id(addresses[0]), VACATION: account_id(addresses[0])}
        if principal.kind == "user"
        else {}
    )
    max_body = ctx.settings.web.max_body
    session = {
        "capabilities": {
            CORE: {
                "maxSizeUpload": 0,
                "maxConcurrentUpload": 1,
                "maxSizeRequest": max_body,
                "maxConcurrentRequests": 4,
                "maxCallsInRequest": MAX_CALLS,
                "maxObjectsInGet": 1,
                "maxObjectsInSet": 1,
                "collationAlgorithms": [],
            },
            VACATION: {},
        },
        "accounts": accounts,
        "primaryAccounts": primary,
        "username": principal.address or principal.name,
        "apiUrl": f"{base}/jmap/api",
        "downloadUrl": f"{base}/jmap/download/{{accountId}}/{{blobId}}/{{name}}?accept={{type}}",
        "uploadUrl": f"{base}/jmap/upload/{{accountId}}/",
        "eventSourceUrl": f"{base}/jmap/eventsource?types={{types}}&closeafter={{closeafter}}&ping={{ping}}",
    }
    session["state"] = hashlib.sha256(json.dumps(sorted(accounts)).encode()).hexdigest()[:16]
    return session


@router.get("/.well-known/jmap")
async def well_known(request: Request, principal: Caller) -> JSONResponse:
    ctx: WebContext = context(request)
    session = await asyncio.to_thread(_session, ctx, principal, _base(request, ctx))
    return JSONResponse(session, headers={"Cache-Control": "no-cache, no-store"})


def _problem(kind: str, detail: str, status: int = 400, **extra: Any) -> JSONResponse:
    """A request-level error: RFC 7807 problem details with the JMAP error type (RFC 8620 3.6.1)."""
    body = {"type": f"urn:ietf:params:jmap:error:{kind}", "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


class MethodError(Exception):
    def __init__(self, kind: str, description: str = "", **extra: Any) -> None:
        super().__init__(description)
        self.body = {"type": kind, **({"description": description} if description else {}), **extra}


def _utc_date(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _vacation_response(vacation: Vacation | None) -> dict[str, Any]:
    if vacation is None:
        return {
            "id": SINGLETON,
            "isEnabled": False,
            "fromDate": None,
            "toDate": None,
            "subject": None,
            "textBody": None,
            "htmlBody": None,
        }
    return {
        "id": SINGLETON,
        "isEnabled": vacation.enabled,
        "fromDate": _utc_date(vacation.starts_at),
        "toDate": _utc_date(vacation.ends_at),
        "subject": vacation.subject,
        "textBody": vacation.message,
        "htmlBody": vacation.html_message,
    }


class _Call:
    """One method call's view of the request: the context, the caller and the capabilities in use."""

    def __init__(self, ctx: WebContext, principal: Principal, using: set[str]) -> None:
        self.ctx = ctx
        self.principal = principal
        self.using = using

    def address(self, arguments: dict[str, Any]) -> str:
        wanted = arguments.get("accountId")
        if not isinstance(wanted, str):
            raise MethodError("invalidArguments", "accountId: expected a string", arguments=["accountId"])
        for address in _addresses(self.ctx, self.principal):
            if account_id(address) == wanted:
                return address
        raise MethodError("accountNotFound")

    def get(self, arguments: dict[str, Any]) -> dict[str, Any]:
        _known(arguments, {"accountId", "ids", "properties"})
        address = self.address(arguments)
        ids = arguments.get("ids")
        properties = arguments.get("properties")
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
            raise MethodError("invalidArguments", "ids: expected null or a list of ids", arguments=["ids"])
        if properties is not None and (
            not isinstance(properties, list) or not all(p in PROPERTIES for p in properties)
        ):
            raise MethodError("invalidArguments", "properties: unknown property", arguments=["properties"])
        vacation = vacation_ops.find(self.ctx.store, address)
        shown = _vacation_response(vacation)
        if properties is not None:
            shown = {key: value for key, value in shown.items() if key == "id" or key in properties}
        wanted = [SINGLETON] if ids is None else ids
        return {
            "accountId": arguments["accountId"],
            "state": _state(vacation),
            "list": [shown] if SINGLETON in wanted else [],
            "notFound": [i for i in dict.fromkeys(wanted) if i != SINGLETON],
        }

    def set(self, arguments: dict[str, Any]) -> dict[str, Any]:
        _known(arguments, {"accountId", "ifInState", "create", "update", "destroy"})
        address = self.address(arguments)
        store = self.ctx.store
        before = vacation_ops.find(store, address)
        old_state = _state(before)
        if_in_state = arguments.get("ifInState")
        if if_in_state is not None and if_in_state != old_state:
            raise MethodError("stateMismatch")
        create, update, destroy = arguments.get("create"), arguments.get("update"), arguments.get("destroy")
        for name, value, kind in (
            ("create", create, dict),
            ("update", update, dict),
            ("destroy", destroy, list),
        ):
            if value is not None and not isinstance(value, kind):
                raise MethodError("invalidArguments", f"{name}: wrong type", arguments=[name])
        not_created = {
            key: {"type": "singleton", "description": "there is one VacationResponse"} for key in create or {}
        }
        not_destroyed = {
            key: {"type": "singleton", "description": "it can only be updated"} for key in destroy or []
        }
        updated: dict[str, Any] = {}
        not_updated: dict[str, Any] = {}
        for key, patch in (update or {}).items():
            if key != SINGLETON:
                not_updated[key] = {"type": "notFound"}
                continue
            try:
                self._update(address, before, patch)
                updated[key] = None
            except MethodError as exc:
                not_updated[key] = exc.body
        after = vacation_ops.find(store, address)
        return {
            "accountId": arguments["accountId"],
            "oldState": old_state,
            "newState": _state(after),
            "created": None,
            "updated": updated or None,
            "destroyed": None,
            "notCreated": not_created or None,
            "notUpdated": not_updated or None,
            "notDestroyed": not_destroyed or None,
        }

    def _update(self, address: str, before: Vacation | None, patch: object) -> None:
        if not isinstance(patch, dict):
            raise MethodError("invalidPatch", "the patch is not an object")
        unknown = [key for key in patch if key not in _FIELDS]
        if unknown:
            raise MethodError("invalidProperties", "unknown or read-only properties", properties=unknown)
        body: dict[str, Any] = {}
        for prop, field in _FIELDS.items():
            if prop in patch:
                body[field] = patch[prop]
        if "message" in body and body["message"] is None:
            body["message"] = ""
        for prop in ("fromDate", "toDate"):
            value = patch.get(prop)
            if value is not None and (not isinstance(value, str) or not value.endswith("Z")):
                raise MethodError(
                    "invalidProperties", f"{prop}: a UTCDate such as 2026-12-24T00:00:00Z", properties=[prop]
                )
        if before is None:
            body.setdefault("message", "")
            body.setdefault("enabled", False)
        else:
            body.setdefault("enabled", before.enabled)
        try:
            vacation_ops.set_vacation(
                self.ctx.store,
                self.ctx.settings,
                self.principal.actor,
                VIA,
                address,
                body,
                self.ctx.clock(),
                allowed=lambda alias: may_manage(self.principal, alias),
            )
        except InvalidField as exc:
            prop = _PROPERTY.get(exc.field or "", exc.field or "")
            raise MethodError("invalidProperties", exc.message, properties=[prop]) from None
        except Conflict as exc:
            raise MethodError("forbidden", exc.message) from None
        except Refused as exc:
            raise MethodError("invalidProperties", exc.message) from None

    def echo(self, arguments: dict[str, Any]) -> dict[str, Any]:
        return arguments


def _known(arguments: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(arguments) - allowed)
    if unknown:
        raise MethodError("invalidArguments", f"unknown arguments: {', '.join(unknown)}", arguments=unknown)


_METHODS = {
    "Core/echo": (CORE, _Call.echo),
    "VacationResponse/get": (VACATION, _Call.get),
    "VacationResponse/set": (VACATION, _Call.set),
}


def _pointer(value: Any, path: str) -> Any:
    """RFC 6901 with JMAP's "*" over arrays (RFC 8620 3.7); KeyError when it does not resolve."""
    if path == "":
        return value
    if not path.startswith("/"):
        raise KeyError(path)
    head, _, rest = path[1:].partition("/")
    head = head.replace("~1", "/").replace("~0", "~")
    tail = "/" + rest if rest else ""
    if isinstance(value, list):
        if head == "*":
            found = [_pointer(item, tail) for item in value]
            return [x for item in found for x in (item if isinstance(item, list) else [item])]
        if not head.isdigit() or int(head) >= len(value):
            raise KeyError(path)
        return _pointer(value[int(head)], tail)
    if isinstance(value, dict) and head in value:
        return _pointer(value[head], tail)
    raise KeyError(path)


def _resolve(arguments: dict[str, Any], responses: list[list[Any]]) -> dict[str, Any]:
    resolved: dict[str, Any] = {}
    for key, value in arguments.items():
        if not key.startswith("#"):
            resolved[key] = value
            continue
        if key[1:] in arguments:
            raise MethodError("invalidArguments", f"{key[1:]} given both plain and as a reference")
        if not isinstance(value, dict) or set(value) != {"resultOf", "name", "path"}:
            raise MethodError("invalidResultReference")
        earlier = [r for r in responses if r[2] == value["resultOf"]]
        if not earlier or earlier[0][0] != value["name"]:
            raise MethodError("invalidResultReference")
        try:
            resolved[key[1:]] = _pointer(earlier[0][1], str(value["path"]))
        except KeyError:
            raise MethodError("invalidResultReference") from None
    return resolved


def _run(ctx: WebContext, principal: Principal, request: dict[str, Any]) -> dict[str, Any]:
    call = _Call(ctx, principal, set(request["using"]))
    responses: list[list[Any]] = []
    created_ids = request.get("createdIds")
    for name, arguments, call_id in request["methodCalls"]:
        try:
            capability, method = _METHODS.get(name, (None, None))
            if method is None or capability not in call.using:
                raise MethodError("unknownMethod")
            responses.append([name, method(call, _resolve(arguments, responses)), call_id])
        except MethodError as exc:
            responses.append(["error", exc.body, call_id])
    answer: dict[str, Any] = {
        "methodResponses": responses,
        "sessionState": _session(ctx, principal, "")["state"],
    }
    if created_ids is not None:
        answer["createdIds"] = created_ids
    return answer


def _is_request(body: object) -> bool:
    if not isinstance(body, dict):
        return False
    using, calls = body.get("using"), body.get("methodCalls")
    if not isinstance(using, list) or not all(isinstance(u, str) for u in using):
        return False
    if not isinstance(calls, list):
        return False
    for call in calls:
        if not (isinstance(call, list) and len(call) == 3 and isinstance(call[0], str)):
            return False
        if not isinstance(call[1], dict) or not isinstance(call[2], str):
            return False
    return "createdIds" not in body or isinstance(body["createdIds"], dict)


@router.post("/jmap/api")
async def api(request: Request, principal: Caller) -> JSONResponse:
    ctx: WebContext = context(request)
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _problem("notJSON", "the request body is not JSON (application/json, UTF-8)")
    if not _is_request(body):
        return _problem("notRequest", "the body is not a JMAP Request object (using, methodCalls)")
    unknown = sorted(set(body["using"]) - CAPABILITIES)
    if unknown:
        return _problem("unknownCapability", f"unknown capabilities: {', '.join(unknown)}")
    if len(body["methodCalls"]) > MAX_CALLS:
        return _problem("limit", f"more than {MAX_CALLS} method calls", limit="maxCallsInRequest")
    answer = await asyncio.to_thread(_run, ctx, principal, body)
    return JSONResponse(answer)
