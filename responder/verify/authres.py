"""Trusted Authentication-Results (RFC 8601): which upstream field is believed, and what of it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import authres

# authres backtracks over comments; a real field is far shorter than this.
_MAX_AR_LENGTH = 8192
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")
_LINE_END = re.compile(r"\r\n|\r|\n")


def unfold(value: str) -> str:
    """A raw field value on one line (RFC 5322 section 2.2.3), without the blanks around it."""
    return _LINE_END.sub("", value).strip()


def _authserv_id(value: str) -> str:
    text = value.split(";", 1)[0]
    for _ in range(8):  # nested comments, innermost first
        text, count = _COMMENT.subn(" ", text)
        if not count:
            break
    words = text.split()
    return words[0].strip('"').lower() if words else ""


@dataclass(frozen=True)
class Upstream:
    """What the trusted Authentication-Results field says, reduced to what the routes need."""

    authserv_id: str
    spf: tuple[tuple[str, str | None, str | None], ...]  # (result, smtp.mailfrom, smtp.helo)
    dkim: tuple[tuple[str, str | None, str | None], ...]  # (result, header.d or i= domain, header.a)


def trusted_results(
    headers: Sequence[tuple[str, str]], trusted: Sequence[str], helo: str | None = None
) -> Upstream | str | None:
    """The topmost top-level Authentication-Results field whose authserv-id is trusted.

    Only the single topmost field with a trusted authserv-id is believed; every field below it
    is ignored, trusted id or not. RFC 8601 section 5 requires the site's border MTA to delete
    (or rename) fields that claim its own authserv-id before it adds its own, and an MTA adds
    its fields above everything it received, so the topmost trusted field is the genuine one
    when the MTA does its part; a forged copy can only lie below it. Lower fields are not merged
    in even when the top one lacks a method, because that is exactly where a forgery would fill
    the gap. The cost is that a site writing spf and dkim into two separate fields gets only the
    top one used; the other route then falls back to DNS, which is safe. Fields inside attached
    messages are never seen, because only the top-level header block is passed in.

    Within the field, the client's HELO name is the one text the client chose; an MTA that writes
    it unquoted lets ``x smtp.mailfrom=bob@example.org`` or ``x; spf=pass ...`` become results of
    its own. See :func:`_believed` for what is kept of a field that names a HELO.

    What remains trusted: that the MTA strips forged fields (if it adds none for a message and
    does not strip, a forged field becomes the topmost one), and its checks of key size,
    algorithm and signed headers, except that ``header.a=rsa-sha1`` is refused here.

    Returns None when no field is trusted, or a note when the trusted field cannot be parsed.
    """
    wanted = {t.strip().lower() for t in trusted if t.strip()}
    if not wanted:
        return None
    for name, value in headers:
        if name.strip().lower() != "authentication-results":
            continue
        authserv_id = _authserv_id(value)
        if authserv_id not in wanted:
            continue
        if len(value) > _MAX_AR_LENGTH:
            return f"ar=ignored(field too long, via {authserv_id})"
        try:
            parsed = authres.AuthenticationResultsHeader.parse_value(_before_helo(value, helo))
        except Exception:
            return f"ar=ignored(unparseable, via {authserv_id})"
        spf_results: list[tuple[str, str | None, str | None]] = []
        dkim_results: list[tuple[str, str | None, str | None]] = []
        for method, result, properties in _believed(parsed.results, helo):
            if method == "spf":
                spf_results.append((result, properties.get("smtp.mailfrom"), properties.get("smtp.helo")))
            elif method == "dkim":
                domain = properties.get("header.d")
                if not domain and properties.get("header.i"):
                    domain = properties["header.i"].rpartition("@")[2]
                dkim_results.append((result, domain, properties.get("header.a")))
        return Upstream(authserv_id, tuple(spf_results), tuple(dkim_results))
    return None


# authres's <ptext>: a property value made of these needs no quoting, so it cannot hold other results.
_PTEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+")


def _before_helo(value: str, helo: str | None) -> str:
    """The field up to the client's HELO name, when that name could read as more of the field.

    Wherever the MTA wrote it (a property, a comment), what follows may be the client's text.
    """
    if helo and not _PTEXT.fullmatch(helo):
        at = value.find(helo)
        if at >= 0:
            return value[:at]
    return value


def _believed(results: Sequence[Any], helo: str | None) -> list[tuple[str, str, dict[str, str]]]:
    """(method, result, properties) of the parsed results, up to a HELO value that may run on.

    An ``smtp.helo`` value is known to end where the parser ended it only when it is the HELO
    name the MTA reported to us and that name needs no quoting. Any other (our HELO unknown, a
    different one, a name cut short by the parser) may be followed by the client's own text: the
    properties after it and the results after its result are dropped, and the route they would
    have decided falls back to DNS.
    """
    believed: list[tuple[str, str, dict[str, str]]] = []
    clean = helo.strip() if helo and _PTEXT.fullmatch(helo.strip()) else None
    for result in results:
        properties: dict[str, str] = {}
        ended = False
        for prop in getattr(result, "properties", []):
            key = f"{prop.type}.{prop.name}".lower()
            properties.setdefault(key, str(prop.value))
            if key == "smtp.helo" and (clean is None or str(prop.value).lower() != clean.lower()):
                ended = True
                break
        believed.append((str(getattr(result, "method", "")).lower(), str(result.result).lower(), properties))
        if ended:
            break
    return believed
