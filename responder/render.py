"""Admin reply templates rendered in Jinja2's sandbox; errors never yield a partial text."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from responder.paths import resource_dir


class RenderError(Exception):
    """The template is missing, invalid, or used an undefined variable."""


class Renderer:
    """Looks templates up in the admin's directory first, then in the packaged defaults."""

    def __init__(self, templates_dir: str = "") -> None:
        search = [Path(templates_dir)] if templates_dir else []
        search.append(resource_dir("templates"))
        self.environment = SandboxedEnvironment(
            loader=FileSystemLoader([str(p) for p in search]),
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def render(self, name: str, variables: Mapping[str, Any]) -> str:
        try:
            return self.environment.get_template(name).render(**variables)
        except TemplateError as exc:
            raise RenderError(f"template {name}: {exc.message or exc.__class__.__name__}") from None
        except Exception as exc:  # sandbox violations and errors raised inside filters
            raise RenderError(f"template {name}: {exc.__class__.__name__}: {exc}") from None
