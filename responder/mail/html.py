"""HTML reply bodies: sanitised with nh3 to inline, passive markup; their text/plain form via inscriptis.

What is kept cannot run code, submit anything or fetch anything: no scripts, event handlers, forms,
frames, styles (CSS can fetch url(...) and, in old engines, run expressions), images or other
embedded resources (a remote image is a tracking pixel that tells the sender the person is away;
a data: image is refused too, as mail readers treat them unevenly). Links keep http, https and
mailto targets only and open without a referrer.
"""

from __future__ import annotations

from html.parser import HTMLParser

# Text-level and block markup a vacation message needs; nothing that loads or runs.
ALLOWED_TAGS = frozenset(
    {
        "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "dd", "del", "div", "dl", "dt",
        "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "ins", "kbd", "li", "mark", "ol", "p", "pre",
        "q", "s", "small", "span", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th",
        "thead", "tr", "u", "ul",
    }
)  # fmt: skip
_GENERIC = {"title", "lang", "dir"}
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "*": _GENERIC,
    "a": {"href"},
    "td": {"colspan", "rowspan", "align"},
    "th": {"colspan", "rowspan", "align", "scope"},
    "p": {"align"},
    "div": {"align"},
    "ol": {"start"},
}
URL_SCHEMES = frozenset({"http", "https", "mailto"})
# What is dropped with its content, not just unwrapped: its text is code or markup, not prose.
DROPPED_WITH_CONTENT = frozenset(
    {"script", "style", "template", "svg", "math", "noscript", "iframe", "object", "textarea", "select"}
)
# Characters of HTML accepted at ``vacation set``; a reply is a note, not a newsletter.
# Under the templates' 256 KiB output limit, with room for the template around it.
MAX_HTML = 128 * 1024


class HtmlError(ValueError):
    """HTML that cannot be taken: too long, or not text."""


def sanitize(html: str) -> str:
    """``html`` reduced to the allowed tags, attributes and link schemes (see the module doc)."""
    import nh3

    return nh3.clean(
        html,
        tags=set(ALLOWED_TAGS),
        clean_content_tags=set(DROPPED_WITH_CONTENT),
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=set(URL_SCHEMES),
        link_rel="noopener noreferrer",
        strip_comments=True,
    )


def checked_html(html: str) -> tuple[str, list[str]]:
    """The sanitised form of ``html`` for storing, and what the sanitiser removed (for the admin).

    Raises HtmlError for HTML over MAX_HTML characters or holding NUL or other C0 control
    characters (binary data, not markup).
    """
    if len(html) > MAX_HTML:
        raise HtmlError(f"HTML message of {len(html)} characters; at most {MAX_HTML}")
    bad = sorted({f"U+{ord(c):04X}" for c in html if ord(c) < 32 and c not in "\t\n\r\f"})
    if bad:
        raise HtmlError(f"HTML message holds control characters ({', '.join(bad[:5])}): not text")
    clean = sanitize(html)
    return clean, removed(html, clean)


def removed(before: str, after: str) -> list[str]:
    """The tags, attributes and link targets in ``before`` that ``after`` no longer has, for a notice."""
    old, new = _Inventory.of(before), _Inventory.of(after)
    lost = [f"<{tag}>" for tag in sorted(old.tags - new.tags)]
    lost += [f"{attribute}=" for attribute in sorted(old.attributes - new.attributes)]
    lost += [f"{scheme}: link" for scheme in sorted(old.schemes - new.schemes)]
    return lost


class _Inventory(HTMLParser):
    """The tag names, attribute names and href schemes found in a piece of HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attributes: set[str] = set()
        self.schemes: set[str] = set()

    @classmethod
    def of(cls, html: str) -> _Inventory:
        inventory = cls()
        inventory.feed(html)
        inventory.close()
        return inventory

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            self.attributes.add(name)
            if name == "href" and value and ":" in value:
                self.schemes.add(value.split(":", 1)[0].strip().lower())


def html_to_text(html: str) -> str:
    """The text/plain alternative of ``html``: its text laid out as a reader would see it."""
    from inscriptis import get_text

    lines = [line.rstrip() for line in get_text(html).splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines).rstrip() + "\n"
