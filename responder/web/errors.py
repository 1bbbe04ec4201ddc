"""The API's error answers: a stable code, a message, and the field at fault, as one JSON shape."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from responder.errors import StoreUnavailable


class ApiError(Exception):
    """A refused request: HTTP ``status``, stable ``code``, a message, and the field it is about."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
}


async def api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": 'Basic realm="responder", Bearer'} if exc.status == 401 else None
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers = {"Retry-After": str(retry_after)}
    return error_response(exc.status, exc.code, exc.message, exc.field, headers)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail), None, dict(exc.headers or {}) or None)


def _field(loc: tuple[Any, ...]) -> str | None:
    # ("body", "start") -> "start"; ("query", "since") -> "since"; the whole body -> None
    names = [str(part) for part in loc[1:]]
    return ".".join(names) or None


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    field = _field(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        return error_response(400, "not_json", "the body is not valid JSON")
    return error_response(400, "invalid_field", f"{field}: {message}" if field else message, field)


async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return error_response(
        503, "unavailable", "the database cannot be reached: try again later", headers={"Retry-After": "30"}
    )


HANDLERS: dict[Any, Any] = {
    ApiError: api_error,
    StarletteHTTPException: http_error,
    RequestValidationError: validation_error,
    StoreUnavailable: store_unavailable,
}
