"""The caller of an API or JMAP request, from its Authorization header: a Bearer token or Basic sign-in."""

from __future__ import annotations

import base64
import binascii

from fastapi import Request

from responder.web.auth import (
    BadCredentials,
    ImapUnavailable,
    Principal,
    Throttled,
    principal_for_token_async,
    sign_in,
)
from responder.web.context import WebContext
from responder.web.errors import ApiError


def context(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.web
    return ctx


def client_host(request: Request) -> str:
    """The client's address (the proxy's X-Forwarded-For only from web.proxy_hosts: uvicorn checks)."""
    return request.client.host if request.client else "unknown"


async def caller(request: Request) -> Principal:
    """The principal of the request, or 401 / 429 / 503; the same 401 for every wrong credential."""
    ctx = context(request)
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        found = await principal_for_token_async(ctx, value)
        if found is None:
            raise ApiError(401, "unauthorized", "the token is not valid")
        return found
    if scheme.lower() == "basic" and value:
        try:
            address, colon, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            colon = ""
        if not colon:
            raise ApiError(401, "unauthorized", "the Basic credentials are not base64 of address:password")
        try:
            return await sign_in(ctx, address, password, client_host(request))
        except BadCredentials as exc:
            raise ApiError(401, "unauthorized", str(exc)) from None
        except Throttled as exc:
            raise ApiThrottled(exc.retry_after) from None
        except ImapUnavailable:
            raise ApiError(503, "unavailable", "passwords cannot be checked now: try again later") from None
    raise ApiError(401, "unauthorized", "sign in with a Bearer token or Basic address and mail password")


class ApiThrottled(ApiError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(429, "throttled", f"too many failed sign-ins: try again in {retry_after} seconds")
        self.retry_after = retry_after
