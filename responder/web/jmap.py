"""JMAP (RFC 8620) for mail clients: the session resource and VacationResponse (RFC 8621 section 8)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
