"""Retired addresses set and deleted through the web service, checked as `bounce set` checks them."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from responder.config.settings import Settings
from responder.decide.records import DEFAULT_STATUS, Retirement, RetirementChanges, valid_status
from responder.manage import fields
from responder.manage.changes import entry
from responder.manage.errors import Conflict, InvalidField, NotFound
from responder.manage.vacations import wall_time
from responder.store.database import Store

READ_ONLY = {"address", "state", "smtp_text", "updated"}
WRITABLE = {"status", "start", "end", "timezone", "message"}


def retired_json(retirement: Retirement, now: dt.datetime) -> dict[str, Any]:
    """The same fields as `responder bounce show --json`."""
    return {
        "address": retirement.address,
        "state": retirement.state(now),
        "status": retirement.status,
        "start": wall_time(retirement.starts_at, retirement.timezone),
        "end": wall_time(retirement.ends_at, retirement.timezone),
        "timezone": retirement.timezone,
        "smtp_text": retirement.smtp_text(),
        "message": retirement.message,
        "updated": retirement.updated_at.isoformat(timespec="seconds"),
    }


def _logged(retirement: Retirement | None, now: dt.datetime) -> dict[str, Any] | None:
    if retirement is None:
        return None
    shown = retired_json(retirement, now)
    for key in ("state", "updated", "smtp_text"):
        del shown[key]
    return shown


def find(store: Store, address: str) -> Retirement | None:
    found = store.retirement_for([address])
    return found if found is not None and found.address == address else None


def _check_template(settings: Settings, retirement: Retirement, now: dt.datetime) -> None:
    from responder.decide.templates import (
        SAMPLE_SENDER,
        SAMPLE_SUBJECT,
        Renderer,
        RenderError,
        bounce_variables,
    )

    domain = retirement.address.rpartition("@")[2]
    mta = settings.bounce.reporting_mta or settings.smtp.hostname or domain
    variables = bounce_variables(retirement, SAMPLE_SENDER, SAMPLE_SUBJECT, mta, now)
    try:
        Renderer(settings.reply.templates_dir).render(settings.bounce.template, variables)
    except RenderError as exc:
        raise InvalidField("message", f"message: the bounce does not render: {exc}") from None


def set_retired(
    store: Store,
    settings: Settings,
    actor: str,
    via: str,
    address: str,
    body: Mapping[str, Any],
    now: dt.datetime,
) -> Retirement:
    fields.only_known(dict(body), WRITABLE, READ_ONLY)
    existing = find(store, address)
    changes: RetirementChanges = {}
    if "message" in body:
        message = fields.text("message", body["message"])
        if not message.strip():
            raise InvalidField("message", "message: empty; say where to write instead")
        changes["message"] = message
    elif existing is None:
        raise InvalidField("message", "message: a new retired address needs a message")
    if "status" in body:
        status = body["status"]
        if not isinstance(status, str) or not valid_status(status):
            raise InvalidField("status", "status: not a permanent RFC 3463 status such as 5.1.6")
        changes["status"] = status
    elif existing is None:
        changes["status"] = DEFAULT_STATUS
    zone_name = fields.zone("timezone", body["timezone"]) if "timezone" in body else None
    zone_name = zone_name or (existing.timezone if existing else "UTC")
    changes["timezone"] = zone_name
    if "start" in body:
        changes["starts_at"] = fields.when("start", body["start"], zone_name)
    if "end" in body:
        changes["ends_at"] = fields.when("end", body["end"], zone_name)
    fields.check_order(
        changes.get("starts_at", existing.starts_at if existing else None),
        changes.get("ends_at", existing.ends_at if existing else None),
    )
    base = existing or Retirement(
        id=0,
        address=address,
        message="",
        status=DEFAULT_STATUS,
        starts_at=None,
        ends_at=None,
        timezone="UTC",
        created_at=now,
        updated_at=now,
    )
    prospective = dataclasses.replace(base, **changes)
    _check_template(settings, prospective, now)
    logged = entry(now, actor, via, address, "retired.set", _logged(existing, now), _logged(prospective, now))
    if not store.put_retirement(address, now, change=logged, **changes):
        raise Conflict(f"{address} has a vacation; an address is either on vacation or retired", "address")
    saved = find(store, address)
    assert saved is not None
    return saved


def delete(store: Store, actor: str, via: str, address: str, now: dt.datetime) -> None:
    existing = find(store, address)
    logged = entry(now, actor, via, address, "retired.delete", _logged(existing, now), None)
    if existing is None or not store.delete_retirement(address, logged):
        raise NotFound(f"{address} is not retired", "address")
