"""HTML vacation messages: a hostile corpus comes out clean, and the reply's parts parse back as sent."""

from __future__ import annotations

import datetime as dt
import json
from email import message_from_bytes, policy
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

import pytest

from responder.config.load import settings_from_mapping
from responder.decide.context import Services
from responder.decide.engine import respond
from responder.mail.html import ALLOWED_TAGS, MAX_HTML, URL_SCHEMES, html_to_text, sanitize
from responder.mail.message import Envelope, Inbound
from responder.smtp.transport import SmtpTransport
from responder.store.database import Store
from tests.conftest import ConfigFactory
from tests.helpers import FakeClock, run_admin, sample
from tests.sink import SmtpSink

HTML = Path(__file__).resolve().parent / "html"
KEPT = "Away until Monday."

# One hostile case per file in tests/html: what it tries, and a string that must be gone afterwards.
CASES: dict[str, tuple[str, str]] = {
    "script.html": ("a script that reports the absence", "fetch("),
    "script-uppercase-split.html": ("upper-case and nested script tags", "<script"),
    "onerror.html": ("an image's error handler", "onerror"),
    "event-handlers.html": ("mouse, click and focus handlers", "onmouseover"),
    "javascript-url.html": ("javascript: links, mixed case and entity-encoded", "avascript"),
    "vbscript-url.html": ("a vbscript: link", "vbscript"),
    "remote-image.html": ("a tracking pixel", "tracker.example"),
    "srcset.html": ("images by srcset and picture/source", "srcset"),
    "background-attribute.html": ("table and cell backgrounds", "background"),
    "css-url.html": ("CSS url() in a style attribute and a style element", "url("),
    "css-import.html": ("a CSS @import", "@import"),
    "css-expression.html": ("CSS expression() and behavior", "expression("),
    "meta-refresh.html": ("a meta refresh to another page", "refresh"),
    "svg-onload.html": ("SVG with onload, a script and a remote image", "onload"),
    "data-url.html": ("data: images and links", "data:"),
    "form.html": ("a phishing form with a password field", "password"),
    "iframe-object-embed.html": ("frames and plug-ins", "evil.example"),
    "link-stylesheet.html": ("a remote stylesheet", "stylesheet"),
    "base-href.html": ("a base URL that redirects every link", "<base"),
    "audio-video.html": ("media with remote sources and a poster", "tracker.example"),
    "comment-conditional.html": ("a conditional comment hiding an image", "[if"),
    "mathml-xlink.html": ("a MathML link to javascript:", "javascript"),
}
FORBIDDEN_ATTRIBUTES = {"src", "srcset", "style", "background", "poster", "action", "formaction", "data"}


class _Audit(HTMLParser):
    """Every tag, attribute and link target of a piece of HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [(name, value or "") for name, value in attrs]


def assert_clean(html: str) -> None:
    audit = _Audit()
    audit.feed(html)
    audit.close()
    assert set(audit.tags) <= ALLOWED_TAGS, audit.tags
    for name, value in audit.attributes:
        assert not name.startswith("on"), name
        assert name not in FORBIDDEN_ATTRIBUTES, name
        if name == "href" and ":" in value.split("/", 1)[0]:
            assert value.split(":", 1)[0].lower() in URL_SCHEMES, value
    lowered = html.lower()
    for marker in ("javascript:", "vbscript:", "data:", "url(", "expression(", "tracker.example", "<!--"):
        assert marker not in lowered, marker


def test_every_case_file_has_a_row() -> None:
    assert sorted(CASES) == sorted(path.name for path in HTML.glob("*.html"))


@pytest.mark.parametrize("name", CASES, ids=CASES)
def test_hostile_html_comes_out_clean(name: str) -> None:
    hostile = (HTML / name).read_text(encoding="utf-8")
    _what, gone = CASES[name]
    assert gone.lower() in hostile.lower()
    clean = sanitize(hostile)
    assert_clean(clean)
    assert gone.lower() not in clean.lower()
    assert KEPT in clean


def test_safe_markup_and_links_are_kept() -> None:
    html = (
        '<p>Back <b>Monday</b>. <a href="https://example.com/x" title="t">Deputy</a> '
        '<a href="mailto:b@example.com">Bob</a></p>'
    )
    clean = sanitize(html)
    assert '<a href="https://example.com/x" title="t" rel="noopener noreferrer">Deputy</a>' in clean
    assert 'href="mailto:b@example.com"' in clean and "<b>Monday</b>" in clean


def test_the_text_form_reads_like_the_html() -> None:
    text = html_to_text("<h1>Away</h1><p>Back on <b>Monday</b>.</p><ul><li>Bob: 1234</li></ul>")
    assert text.splitlines()[0] == "Away"
    assert "Back on Monday." in text and "Bob: 1234" in text and "<" not in text


@pytest.mark.parametrize("name", ["script.html", "remote-image.html", "svg-onload.html"])
def test_set_stores_the_sanitised_html_and_says_what_it_removed(
    make_config: ConfigFactory, name: str
) -> None:
    config = make_config()
    result = run_admin(config, "vacation", "set", "alice@example.com", "--html-file", str(HTML / name))
    assert result.returncode == 0, result.stderr.decode()
    assert "removed" in result.stderr.decode()
    shown = json.loads(run_admin(config, "vacation", "show", "alice@example.com", "--json").stdout)
    assert_clean(shown["html_message"])
    assert KEPT in shown["html_message"] and shown["message"] == ""


def test_set_refuses_html_that_is_too_long_or_binary(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config()
    big, binary = tmp_path / "big.html", tmp_path / "binary.html"
    big.write_text("<p>" + "x" * MAX_HTML + "</p>", encoding="utf-8")
    binary.write_text("<p>a\x00b\x01</p>", encoding="utf-8")
    for path, says in ((big, "characters; at most"), (binary, "control characters")):
        result = run_admin(config, "vacation", "set", "alice@example.com", "--html-file", str(path))
        assert result.returncode == 1 and says in result.stderr.decode()
    assert run_admin(config, "vacation", "show", "alice@example.com").returncode == 1  # nothing written


def _reply(store: Store, db_url: str, sink: SmtpSink, clock: FakeClock) -> EmailMessage:
    settings = settings_from_mapping(
        {"database": {"url": db_url}, "smtp": {"port": sink.port}, "verify": {"require": "off"}}
    )
    services = Services(settings, clock=clock, store=store, transport=SmtpTransport(settings.smtp))
    decision = respond(
        Inbound(Envelope("bob@example.org", "alice@example.com"), sample("personal.eml")), services
    )
    assert decision.action == "reply", decision.detail
    [sent] = sink.wait_for(1, timeout=5)
    message = message_from_bytes(sent.data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_an_html_reply_is_multipart_alternative_with_a_derived_text_part(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    # Written past `vacation set` (as by hand or an older tool): compose sanitises again.
    hostile = "".join((HTML / name).read_text(encoding="utf-8") for name in CASES)
    html = f"<h2>Out of office</h2><p>Hello, I am away until {{{{ end_date }}}}.</p>{hostile}"
    store.put_vacation(
        "alice@example.com",
        clock(),
        None,
        enabled=True,
        message="",
        html_message=html,
        ends_at=clock() + dt.timedelta(days=3),
        timezone="Europe/Berlin",
    )
    reply = _reply(store, db_url, sink, clock)
    assert reply.get_content_type() == "multipart/alternative"
    parts = list(reply.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    text, html_part = (part.get_content() for part in parts)
    assert_clean(html_part.split("<body>", 1)[1].split("</body>", 1)[0])
    assert "<h2>Out of office</h2>" in html_part and "Monday, November 30, 2026" in html_part
    assert "Out of office" in text and "Monday, November 30, 2026" in text and "<p>" not in text
    assert "tracker.example" not in text and "fetch(" not in text and "password" not in text


def test_text_and_html_both_given_are_sent_as_given(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    store.put_vacation(
        "alice@example.com",
        clock(),
        None,
        enabled=True,
        message="Plain words.",
        html_message="<p>Rich <i>words</i>.</p>",
        timezone="UTC",
    )
    reply = _reply(store, db_url, sink, clock)
    plain, rich = reply.get_body(("plain",)), reply.get_body(("html",))
    assert plain is not None and rich is not None
    assert plain.get_content().startswith("Plain words.")
    assert "<p>Rich <i>words</i>.</p>" in rich.get_content()


def test_a_text_only_vacation_stays_a_single_part(
    store: Store, db_url: str, sink: SmtpSink, clock: FakeClock
) -> None:
    store.put_vacation("alice@example.com", clock(), None, enabled=True, message="Away.", timezone="UTC")
    reply = _reply(store, db_url, sink, clock)
    assert reply.get_content_type() == "text/plain" and not reply.is_multipart()
