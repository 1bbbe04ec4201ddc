"""Read the configuration file without importing anything: plain TOML by hand, anything else by tomllib.

The fast path of ``responder deliver`` needs a handful of keys and must start about as fast as an
empty Python; ``tomllib`` alone (with ``re``, ``typing`` and ``datetime``) costs about as much
again. Configuration files are almost always written as plain tables of ``key = scalar`` lines, which
this reads directly; every other file (escapes, multi-line values, dotted or quoted keys, dates, any
doubt at all) goes to ``tomllib``, so both readers give the same document or this one gives none.
"""

from __future__ import annotations

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_DIGITS = frozenset("0123456789")
_ENDS = (" ", "\t", ",", "]", "#")


class _Unsupported(Exception):
    """The text is outside the plain subset; tomllib decides."""


def read_document(path: str) -> dict[str, object] | None:
    """The parsed file, or None when it cannot be read or is not valid TOML (the full loader says why)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    document = parse_plain(text)
    if document is not None:
        return document
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None


def parse_plain(text: str) -> dict[str, object] | None:
    """The document when ``text`` is plain TOML (see the module docstring), else None."""
    try:
        return _parse(text)
    except _Unsupported:
        return None


def _parse(text: str) -> dict[str, object]:
    document: dict[str, object] = {}
    table = document
    lines = text.split("\n")
    for number, raw_line in enumerate(lines):
        # CRLF ends a line; a CR anywhere else (the last line has no LF) is a control character.
        line = raw_line[:-1] if raw_line.endswith("\r") and number < len(lines) - 1 else raw_line
        # Control characters (a lone CR included) are errors in TOML; non-printable ones go to tomllib.
        if not line.replace("\t", " ").isprintable():
            raise _Unsupported
        line = line.strip(" \t")
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            end = line.find("]")
            name = line[1:end].strip(" \t") if end > 0 else ""
            _expect_bare(name)
            _expect_end(line[end + 1 :])
            if name in document:
                raise _Unsupported
            table = {}
            document[name] = table
            continue
        key, equals, rest = line.partition("=")
        key = key.strip(" \t")
        if not equals or key in table:
            raise _Unsupported
        _expect_bare(key)
        value, rest = _value(rest.lstrip(" \t"))
        _expect_end(rest)
        table[key] = value
    return document


def _expect_bare(key: str) -> None:
    if not key or not _BARE.issuperset(key):
        raise _Unsupported


def _expect_end(rest: str) -> None:
    rest = rest.strip(" \t")
    if rest and not rest.startswith("#"):
        raise _Unsupported


def _value(text: str) -> tuple[object, str]:
    """One value at the start of ``text`` and what follows it."""
    if text.startswith("["):
        return _array(text[1:])
    if text[:1] in ('"', "'"):
        quote = text[0]
        end = text.find(quote, 1)
        content = text[1:end]
        # Escapes and multi-line strings are tomllib's.
        if end < 0 or text.startswith(quote * 3) or (quote == '"' and "\\" in content):
            raise _Unsupported
        return content, text[end + 1 :]
    word = text
    for stop in _ENDS:
        word = word.split(stop, 1)[0]
    rest = text[len(word) :]
    if word in ("true", "false"):
        return word == "true", rest
    return _number(word), rest


def _array(text: str) -> tuple[list[object], str]:
    items: list[object] = []
    while True:
        text = text.lstrip(" \t")
        if text.startswith("]"):
            return items, text[1:]
        if text.startswith("["):
            raise _Unsupported
        item, text = _value(text)
        items.append(item)
        text = text.lstrip(" \t")
        if text.startswith(","):
            text = text[1:]
        elif not text.startswith("]"):
            raise _Unsupported


def _digits(text: str) -> bool:
    """Decimal digits with single underscores between them."""
    return (
        bool(text)
        and _DIGITS.issuperset(text.replace("_", ""))
        and "__" not in text
        and (text[0] != "_" and text[-1] != "_")
    )


def _number(token: str) -> int | float:
    body = token[1:] if token[:1] in ("+", "-") else token
    whole, dot, fraction = body.partition(".")
    if not _digits(whole) or (len(whole) > 1 and whole[0] == "0"):
        raise _Unsupported
    if not dot:
        return int(token.replace("_", ""))
    if not _digits(fraction):
        raise _Unsupported
    return float(token.replace("_", ""))
