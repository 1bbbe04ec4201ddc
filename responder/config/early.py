"""The keys the pipe hook reads before the full loader: their defaults, checks, and a reader without tomllib.

responder.hook.fast reads ``[deliver]``, ``[database]``, ``[log]`` and ``[server]`` keys with the same
rules as responder.config.settings (whose defaults are these); a value it cannot take as the full
loader would raises Invalid and the full path reports it. The thin client needs only three keys, and
importing ``tomllib`` costs more than all the rest of its path (it loads ``re``, ``typing`` and
``string``), so ``thin_client_keys`` scans the file by hand: it understands a plain subset of TOML
(tables, one-line keys, comments) and answers None for anything beyond it, and the caller then reads
the file with ``tomllib`` as before. It never answers with a value tomllib would read differently.
"""

from __future__ import annotations

from responder.config.values import parse_duration as _parse_duration

# typing.TYPE_CHECKING without importing typing (which imports re): mypy reads this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

DEFAULTS: dict[str, dict[str, Any]] = {
    "database": {"url": "sqlite:////var/lib/responder/responder.sqlite3", "busy_timeout": 10.0},
    "log": {"level": "info", "syslog": False, "syslog_socket": "/dev/log"},
    "deliver": {"deadline": 60.0, "max_received": 50},
    "server": {"socket": "", "connect_timeout": 5.0},
}
LOG_LEVELS = ("debug", "info", "warning", "error")


class Invalid(Exception):
    """A configuration value the early reader cannot take; the full loader will say what is wrong."""


def parse_duration(value: object) -> float:
    """config.values.parse_duration, a value it refuses left to the full loader to report."""
    if not isinstance(value, str | int | float):
        raise Invalid
    try:
        return _parse_duration(value)
    except ValueError:
        raise Invalid from None


class Options:
    """The keys of one section read early, each checked as responder.config.settings checks it."""

    def __init__(self, document: Mapping[str, object], section: str) -> None:
        table = document.get(section, {})
        if not isinstance(table, dict):
            raise Invalid
        self.values = {**DEFAULTS[section], **{k: v for k, v in table.items() if k in DEFAULTS[section]}}

    def text(self, key: str) -> str:
        value = self.values[key]
        if not isinstance(value, str):
            raise Invalid
        return value

    def flag(self, key: str) -> bool:
        value = self.values[key]
        if not isinstance(value, bool):
            raise Invalid
        return value

    def integer(self, key: str) -> int:
        value = self.values[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid
        return value

    def duration(self, key: str) -> float:
        return parse_duration(self.values[key])


class LogOptions:
    """The ``[log]`` keys, for logsetup.setup_logging."""

    def __init__(self, document: Mapping[str, object]) -> None:
        options = Options(document, "log")
        self.level = options.text("level")
        if self.level not in LOG_LEVELS:
            raise Invalid
        self.syslog = options.flag("syslog")
        self.syslog_socket = options.text("syslog_socket")


# The thin client's own keys: (section, key).
THIN_CLIENT_KEYS = (("server", "socket"), ("server", "connect_timeout"), ("deliver", "deadline"))
_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# Characters of a number, date or time value (TOML's unquoted scalars other than true/false/inf/nan).
_SCALAR = frozenset("0123456789_-+:.eExXoObBTZtz abcdefABCDEF")
_WORDS = ("true", "false", "inf", "nan", "+inf", "-inf", "+nan", "-nan")
_MAX_FILE = 1 << 20


class _Beyond(Exception):
    """The file uses TOML this reader does not follow: tomllib reads it instead."""


def thin_client_keys(path: str) -> dict[str, object] | None:
    """``{"socket": ..., "connect_timeout": ..., "deadline": ...}`` as Options would read them from ``path``.

    None when the file cannot be read, is beyond the plain subset, or holds a value Options refuses:
    the caller then reads it with tomllib, which finds the same values or says why it cannot.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_FILE + 1)
    except OSError:
        return None
    if len(data) > _MAX_FILE:
        return None
    try:
        found = _scan(data.decode("utf-8"))
        document: dict[str, object] = {}
        for (section, key), value in found.items():
            table = document.setdefault(section, {})
            assert isinstance(table, dict)
            table[key] = value
        server = Options(document, "server")
        return {
            "socket": server.text("socket"),
            "connect_timeout": server.duration("connect_timeout"),
            "deadline": Options(document, "deliver").duration("deadline"),
        }
    except (_Beyond, Invalid, UnicodeDecodeError):
        return None


def _scan(text: str) -> dict[tuple[str, str], object]:
    """The thin client's keys in ``text``; _Beyond when a line is outside the plain subset."""
    if text.startswith("\ufeff"):
        raise _Beyond  # tomllib refuses a byte-order mark
    found: dict[tuple[str, str], object] = {}
    seen_keys: set[tuple[str, str]] = set()
    seen_tables: set[str] = set()
    table: str | None = None
    for raw_line in text.split("\n"):
        line = raw_line.removesuffix("\r")
        if "\r" in line or "\x00" in line:
            raise _Beyond
        stripped = line.strip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            table = _header(stripped)
            if table in seen_tables:
                raise _Beyond  # a table defined twice: tomllib's error to report
            seen_tables.add(table)
            continue
        if table is None:
            raise _Beyond  # a root key may be dotted into any table
        key, value_text = _key_value(stripped)
        if (table, key) in seen_keys:
            raise _Beyond
        seen_keys.add((table, key))
        value = _value(value_text)
        if (table, key) in THIN_CLIENT_KEYS:
            found[(table, key)] = _wanted(value)
    return found


def _header(line: str) -> str:
    """The name of a plain ``[name]`` table; an array of tables or a dotted or quoted name is beyond."""
    if line.startswith("[["):
        raise _Beyond
    close = line.find("]")
    if close < 0:
        raise _Beyond
    rest = line[close + 1 :].strip(" \t")
    if rest and not rest.startswith("#"):
        raise _Beyond
    name = line[1:close].strip(" \t")
    if not name or any(char not in _BARE for char in name):
        raise _Beyond
    return name


def _key_value(line: str) -> tuple[str, str]:
    key, equals, value = line.partition("=")
    key = key.strip(" \t")
    if not equals or not key or any(char not in _BARE for char in key):
        raise _Beyond
    return key, value.strip(" \t")


def _value(text: str) -> str:
    """The value's own text with any comment cut; _Beyond unless it ends on this line."""
    if text.startswith(('"""', "'''")):
        raise _Beyond
    depth = 0
    index = 0
    end = len(text)
    while index < len(text):
        char = text[index]
        if char == '"':
            index = _basic_end(text, index)
        elif char == "'":
            index = text.find("'", index + 1)
            if index < 0:
                raise _Beyond
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth < 0:
                raise _Beyond
        elif char == "#":
            end = index
            break
        index += 1
    value = text[:end].rstrip(" \t")
    if depth or not value:
        raise _Beyond
    if '"""' in value or "'''" in value:
        raise _Beyond
    first = value[0]
    if first == '"' and _basic_end(value, 0) != len(value) - 1:
        raise _Beyond  # text after the string
    if first == "'" and value.find("'", 1) != len(value) - 1:
        raise _Beyond
    if first in "\"'[{":
        return value
    if value in _WORDS or all(char in _SCALAR for char in value):
        return value
    raise _Beyond


def _basic_end(text: str, start: int) -> int:
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == '"':
            return index
        index += 1
    raise _Beyond


def _wanted(value: str) -> object:
    """The value of one of the thin client's keys: a string without escapes, or a decimal number."""
    first = value[0]
    if first in "\"'":
        inner = value[1:-1]
        if "\\" in inner and first == '"':
            raise _Beyond
        if any(ord(char) < 0x20 and char != "\t" for char in inner) or "\x7f" in inner:
            raise _Beyond
        return inner
    whole, dot, fraction = value.partition(".")
    if whole.isdigit() and whole.isascii() and (len(whole) == 1 or not whole.startswith("0")):
        if not dot:
            return int(whole)
        if fraction.isdigit() and fraction.isascii():
            return float(value)
    raise _Beyond
