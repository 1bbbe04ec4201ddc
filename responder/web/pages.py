"""The server-rendered pages of the web service (none yet)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
