"""Read the TOML configuration into frozen Settings; every error names the offending key."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from responder.config.settings import Settings

DEFAULT_PATH = Path("/etc/responder/responder.toml")
ENV_VAR = "RESPONDER_CONFIG"


class ConfigError(Exception):
    """The configuration is missing, unreadable or invalid."""


def _section(cls: type[Any], name: str, data: object) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.metadata.get("key") or f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key}")
        try:
            values[known[key].name] = known[key].metadata["convert"](raw)
        except ValueError as exc:
            raise ConfigError(f"bad value for {name}.{key}: {exc}") from None
    return cls(**values)


def settings_from_mapping(data: Mapping[str, object], source: str = "") -> Settings:
    """Build and validate settings from an already parsed TOML document."""
    sections = {f.name: f.type for f in dataclasses.fields(Settings) if f.name != "source"}
    built: dict[str, Any] = {}
    for name, value in data.items():
        if name not in sections:
            raise ConfigError(f"unknown section [{name}]")
        cls = next(f.default_factory for f in dataclasses.fields(Settings) if f.name == name)
        built[name] = _section(cls, name, value)  # type: ignore[arg-type]
    settings = Settings(**built, source=source)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    reply = settings.reply
    if reply.min_interval > reply.max_interval:
        raise ConfigError("bad value for reply.min_interval: greater than reply.max_interval")
    if settings.smtp.username and not settings.smtp.password:
        raise ConfigError("bad value for smtp.password: smtp.username is set without a password")
    web = settings.web
    if bool(web.tls_cert) != bool(web.tls_key):
        missing = "web.tls_key" if web.tls_cert else "web.tls_cert"
        raise ConfigError(f"bad value for {missing}: web.tls_cert and web.tls_key go together")


def config_path(explicit: str | None) -> Path:
    """The file named by ``--config``, else ``$RESPONDER_CONFIG``, else the system default."""
    return Path(explicit or os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load(path: Path) -> Settings:
    """Read and validate one configuration file; ``ConfigError`` says what is wrong."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    return settings_from_mapping(data, source=str(path))
