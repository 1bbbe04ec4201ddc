"""``/api/v1/``: vacations, retired addresses, templates, the audit, explain, rate limits, the change log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from responder.web.auth import Principal
from responder.web.principals import caller

router = APIRouter(prefix="/api/v1")
Caller = Annotated[Principal, Depends(caller)]


@router.get("/whoami", summary="The caller: a mail user, a domain admin token or an admin token")
async def whoami(principal: Caller) -> dict[str, Any]:
    return {
        "kind": principal.kind,
        "name": principal.name,
        "address": principal.address,
        "domain": principal.domain,
    }
