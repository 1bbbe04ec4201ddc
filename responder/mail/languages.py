"""Language tags (RFC 5646 syntax), Accept-Language priority lists and RFC 4647 section 3.4 lookup."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# RFC 5646 section 2.1 langtag (grandfathered and private-use-only tags are not taken: a reply
# language must be one a sender's software can name).
_LANGTAG = re.compile(
    r"""^
    (?P<language>[a-z]{2,3}(?:-[a-z]{3}){0,3}|[a-z]{5,8})
    (?:-(?P<script>[a-z]{4}))?
    (?:-(?P<region>[a-z]{2}|[0-9]{3}))?
    (?P<variants>(?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*)
    (?P<extensions>(?:-[a-wyz0-9](?:-[a-z0-9]{2,8})+)*)
    (?:-x(?:-[a-z0-9]{1,8})+)?
    $""",
    re.VERBOSE | re.IGNORECASE,
)
# A language range in Accept-Language (RFC 4647 section 2.1): "*" or subtags of up to 8 characters.
_RANGE = re.compile(r"^(?:\*|[a-z]{1,8}(?:-[a-z0-9]{1,8})*)$", re.IGNORECASE)
_QVALUE = re.compile(r"^(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)$")
MAX_TAG = 64
# Far beyond what a mail program sends; the rest is ignored.
MAX_RANGES = 32


def language_tag(text: str) -> str:
    """``text`` as a well-formed RFC 5646 tag in its conventional case; ValueError when it is not one.

    The case is the registry's (section 2.1.1): language lower, script title, region upper.
    """
    tag = text.strip()
    match = _LANGTAG.match(tag) if len(tag) <= MAX_TAG else None
    if match is None:
        raise ValueError(f"not a BCP 47 language tag: {text!r} (for example en, de, de-CH, pt-BR)")
    subtags = tag.lower().split("-")
    out: list[str] = []
    for index, subtag in enumerate(subtags):
        if index and len(subtags[index - 1]) == 1:
            out.append(subtag)  # after a singleton (extension, private use) the case stays lower
        elif index and len(subtag) == 4 and subtag.isalpha():
            out.append(subtag.title())
        elif index and len(subtag) == 2:
            out.append(subtag.upper())
        else:
            out.append(subtag)
    normal = "-".join(out)
    _known_language(normal.split("-", 1)[0], text)
    return normal


def _known_language(primary: str, text: str) -> None:
    """Refuse a primary subtag no registry knows (a typo such as "dee"), via the CLDR data of babel."""
    from babel import Locale
    from babel.core import UnknownLocaleError

    try:
        Locale.parse(primary)
    except (UnknownLocaleError, ValueError):
        raise ValueError(f"unknown language {primary!r} in {text!r}") from None


def priority_list(value: str) -> list[str]:
    """An Accept-Language value as ranges, best first (q-values, then order); q=0 ranges are left out.

    Entries that are not ``range [;q=value]`` are skipped, as a mail program's mistakes should not
    cost the sender the language of the entries that are right.
    """
    weighted: list[tuple[float, int, str]] = []
    for index, item in enumerate(value.split(",")[:MAX_RANGES]):
        token, *params = (part.strip() for part in item.split(";"))
        if not _RANGE.match(token):
            continue
        quality = 1.0
        for param in params:
            name, _, number = param.partition("=")
            if name.strip().lower() == "q":
                number = number.strip()
                quality = float(number) if _QVALUE.match(number) else -1.0
        if quality > 0:
            weighted.append((-quality, index, token.lower()))
    return [token for _q, _i, token in sorted(weighted)]


def content_languages(value: str) -> list[str]:
    """A Content-Language value (RFC 3282: a list of tags) as ranges in their order."""
    return [
        token.lower() for token in (t.strip() for t in value.split(",")[:MAX_RANGES]) if _RANGE.match(token)
    ]


def lookup(ranges: Iterable[str], tags: Sequence[str]) -> tuple[str, str] | None:
    """RFC 4647 section 3.4 lookup: the first of ``tags`` a range matches, and the range; None if none does.

    Each range is tried as it is, then with its last subtag removed (and a singleton left at the end
    removed with it) until one matches a tag, case-insensitively; "*" is ignored, as the section says.
    """
    available = {tag.lower(): tag for tag in tags}
    for wanted in ranges:
        if wanted == "*":
            continue
        candidate = wanted.lower()
        while candidate:
            if candidate in available:
                return available[candidate], wanted
            candidate = candidate.rpartition("-")[0]
            if len(candidate.rpartition("-")[2]) == 1:
                candidate = candidate.rpartition("-")[0]
    return None
