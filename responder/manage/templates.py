"""Reply and bounce templates listed, read and written; a write is refused unless it renders with samples."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import tempfile
from pathlib import Path

from jinja2 import ChoiceLoader, DictLoader

from responder.config.settings import Settings
from responder.decide.records import DEFAULT_STATUS, Retirement
from responder.manage import fields
from responder.manage.changes import record
from responder.manage.errors import Conflict, InvalidField, NotFound
from responder.manage.fields import TEMPLATE_NAME as _NAME
from responder.manage.fields import template_name as check_name
from responder.manage.vacations import applied_interval, blank
from responder.paths import resource_dir
from responder.store.database import Store

MAX_TEMPLATE = 64 * 1024


def _directories(settings: Settings) -> list[Path]:
    found = [Path(settings.reply.templates_dir)] if settings.reply.templates_dir else []
    return [*found, resource_dir("templates")]


def list_templates(settings: Settings) -> list[dict[str, object]]:
    seen: dict[str, dict[str, object]] = {}
    for rank, directory in enumerate(_directories(settings)):
        try:
            names = sorted(p.name for p in directory.iterdir() if p.is_file() and _NAME.match(p.name))
        except OSError:
            continue
        for name in names:
            seen.setdefault(
                name,
                {"name": name, "source": "packaged" if rank == len(_directories(settings)) - 1 else "site"},
            )
    return sorted(seen.values(), key=lambda t: str(t["name"]))


def read_template(settings: Settings, name: str) -> tuple[str, str]:
    """(text, "site" or "packaged") of the template ``name`` as the renderer would find it."""
    check_name("name", name)
    directories = _directories(settings)
    for rank, directory in enumerate(directories):
        path = directory / name
        if path.is_file():
            return path.read_text(encoding="utf-8"), "packaged" if rank == len(directories) - 1 else "site"
    raise NotFound(f"no template {name}", "name")


def check_renders(settings: Settings, name: str, text: str, now: dt.datetime) -> str:
    """The sample rendering of ``text`` saved as ``name``; InvalidField("text") with the error otherwise."""
    from responder.decide.templates import (
        SAMPLE_SENDER,
        SAMPLE_SUBJECT,
        Renderer,
        RenderError,
        bounce_variables,
        reply_variables,
    )

    renderer = Renderer(settings.reply.templates_dir)
    # The candidate first, the other templates as they are (it may include them).
    site = renderer.environment.loader
    assert site is not None
    renderer.environment.loader = ChoiceLoader([DictLoader({name: text}), site])
    if name == settings.bounce.template:
        retirement = Retirement(
            0, "alice@example.com", "This address moved.", DEFAULT_STATUS, None, None, "UTC", now, now
        )
        variables = bounce_variables(retirement, SAMPLE_SENDER, SAMPLE_SUBJECT, "mx.example.com", now)
    else:
        vacation = dataclasses.replace(blank("alice@example.com", now), message="I am away.")
        interval = dt.timedelta(seconds=applied_interval(vacation, settings))
        variables = reply_variables(vacation, SAMPLE_SENDER, SAMPLE_SUBJECT, interval)
    try:
        return renderer.render_here(name, variables)
    except RenderError as exc:
        raise InvalidField("text", f"text: does not render with sample values: {exc}") from None


def write_template(
    store: Store, settings: Settings, actor: str, via: str, name: str, text: object, now: dt.datetime
) -> str:
    """Save ``text`` as ``name`` in reply.templates_dir once it renders; the sample rendering."""
    check_name("name", name)
    body = fields.text("text", text, MAX_TEMPLATE)
    if not settings.reply.templates_dir:
        raise Conflict("reply.templates_dir is not set: there is no directory to write templates to", "name")
    sample = check_renders(settings, name, body, now)
    directory = Path(settings.reply.templates_dir)
    try:
        before, _ = read_template(settings, name)
    except NotFound:
        before = None
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".j2")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(body)
        os.chmod(temporary, 0o644)
        os.replace(temporary, directory / name)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    record(store, now, actor, via, f"template:{name}", "template.write", {"text": before}, {"text": body})
    return sample
