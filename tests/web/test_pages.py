"""The pages over HTTP: sign-in, sessions and CSRF, the out-of-office form and its preview, admin pages."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from responder.config.load import load
from responder.store.database import Store
from responder.web import pages
from tests.conftest import ConfigFactory
from tests.helpers import FakeClock, deliver_args, run_hook
from tests.sink import SmtpSink
from tests.web.pages_support import PageClient, csrf_of, serving, text_of
from tests.web.users import ALICE, BOB, CAROL, Site, later, make_token

pytestmark = pytest.mark.timeout(120)


def _vacation_form(**overrides: str) -> dict[str, str]:
    form = {
        "enabled": "on",
        "start": "2026-11-27T09:00",
        "end": "2026-12-24T17:00",
        "timezone": "Europe/Berlin",
        "subject": "Out of the office",
        "message": "I am away until Christmas Eve.",
        "action": "save",
    }
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


def _save(client: PageClient, address: str, **overrides: str) -> Any:
    page = f"/vacation/{address}"
    return client.submit(page, page, _vacation_form(**overrides))


def test_sign_in_sets_a_guarded_cookie_and_opens_the_own_page(client: PageClient) -> None:
    response = client.sign_in(*ALICE)
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain HTTP from the browser
    assert response.headers["location"] == "/"
    home = client.get("/")
    assert home.headers["location"] == f"/vacation/{ALICE[0]}"
    page = client.get(home.headers["location"])
    assert page.status_code == 200
    assert "Your out-of-office reply" in page.text
    assert page.headers["cache-control"] == "no-store"


def test_behind_a_trusted_proxy_that_says_https_the_cookie_is_secure(client: PageClient) -> None:
    response = client.submit(
        "/signin",
        "/signin",
        {"address": ALICE[0], "password": ALICE[1]},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert response.status_code == 303
    assert "Secure" in response.headers["set-cookie"]


def test_unknown_user_and_wrong_password_get_the_same_answer(client: PageClient) -> None:
    wrong = client.submit("/signin", "/signin", {"address": ALICE[0], "password": "not-it"})
    unknown = client.submit("/signin", "/signin", {"address": "nobody@example.com", "password": "x"})
    assert wrong.status_code == unknown.status_code == 401
    assert text_of(wrong.text, "signin-error") == text_of(unknown.text, "signin-error")
    assert "set-cookie" not in wrong.headers or "responder_session" in wrong.headers["set-cookie"]
    assert client.get("/vacation").status_code == 303  # still signed out


def test_too_many_failures_say_try_again_later_even_with_the_right_password(client: PageClient) -> None:
    for _ in range(5):
        assert (
            client.submit("/signin", "/signin", {"address": ALICE[0], "password": "guess"}).status_code == 401
        )
    throttled = client.submit("/signin", "/signin", {"address": ALICE[0], "password": ALICE[1]})
    assert throttled.status_code == 429
    assert "Try again later" in text_of(throttled.text, "signin-error")
    assert int(throttled.headers["retry-after"]) > 0
    assert client.get("/vacation").status_code == 303  # not signed in


def test_an_imap_server_that_is_down_means_try_again_later(
    make_site_config: ConfigFactory, clock: FakeClock
) -> None:
    import socket

    from responder.web.app import create_app

    with socket.socket() as probe:  # a loopback port nobody listens on: the server is down
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = load(make_site_config(web={"imap": f"imap://127.0.0.1:{port}"}))
    with serving(create_app(settings, clock=clock)) as base_url:
        c = PageClient(base_url)
        response = c.submit("/signin", "/signin", {"address": ALICE[0], "password": ALICE[1]})
        signed_in = c.get("/vacation").status_code
        c.close()
    assert response.status_code == 503
    assert "Try again later" in text_of(response.text, "signin-error")
    assert signed_in == 303


def test_a_page_without_a_session_goes_to_the_sign_in_page(client: PageClient) -> None:
    response = client.get(f"/vacation/{ALICE[0]}")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/signin?next=")


def test_the_session_expires(client: PageClient, site: Site) -> None:
    client.sign_in(*ALICE)
    assert client.get(f"/vacation/{ALICE[0]}").status_code == 200
    site.clock.advance(hours=8, seconds=1)
    assert client.get(f"/vacation/{ALICE[0]}").status_code == 303


def test_signing_out_ends_the_session(client: PageClient) -> None:
    client.sign_in(*ALICE)
    page = f"/vacation/{ALICE[0]}"
    response = client.submit(page, "/signout", {})
    assert response.status_code == 303
    assert client.get(page).status_code == 303


@pytest.mark.parametrize("token", [None, "", "forged"], ids=["missing", "empty", "wrong"])
def test_a_post_without_the_sessions_csrf_token_is_refused(
    client: PageClient, site: Site, token: str | None
) -> None:
    client.sign_in(*ALICE)
    data = _vacation_form()
    if token is not None:
        data["csrf_token"] = token
    response = client.http.post(f"/vacation/{ALICE[0]}", data=data)
    assert response.status_code == 403
    assert _stored(site, ALICE[0]) is None


def test_a_token_from_another_session_is_refused(site: Site, client: PageClient) -> None:
    other = PageClient(site.base_url)
    other.sign_in(*BOB)
    theirs = csrf_of(other.get(f"/vacation/{BOB[0]}").text)
    other.close()
    client.sign_in(*ALICE)
    response = client.http.post(f"/vacation/{ALICE[0]}", data={**_vacation_form(), "csrf_token": theirs})
    assert response.status_code == 403
    assert _stored(site, ALICE[0]) is None


def _stored(site: Site, address: str) -> Any:
    store = Store.open(site.settings.database.url)
    try:
        found = store.vacation_for([address])
        return found if found and found.address == address else None
    finally:
        store.close()


def test_saving_stores_the_wall_times_in_the_chosen_zone(client: PageClient, site: Site) -> None:
    client.sign_in(*ALICE)
    response = _save(client, ALICE[0])
    assert response.status_code == 303
    vacation = _stored(site, ALICE[0])
    assert vacation.timezone == "Europe/Berlin"
    assert vacation.starts_at == dt.datetime(2026, 11, 27, 8, 0, tzinfo=dt.UTC)
    assert vacation.ends_at == dt.datetime(2026, 12, 24, 16, 0, tzinfo=dt.UTC)
    page = client.get(response.headers["location"])
    banner = text_of(page.text, "banner")
    assert banner == "The out-of-office reply is on until Thursday 24 December 2026, 17:00 (Europe/Berlin)."
    assert text_of(page.text, "interval") == "Senders get one reply per sender every 7 days."
    # The form shows the times back as they were entered, in their zone.
    assert 'value="2026-12-24T17:00"' in page.text


def test_the_interval_sentence_follows_the_site(make_site_config: ConfigFactory, clock: FakeClock) -> None:
    from responder.web.app import create_app

    settings = load(make_site_config(reply={"default_interval": "2d"}))
    with serving(create_app(settings, clock=clock)) as base_url:
        c = PageClient(base_url)
        c.sign_in(*ALICE)
        page = c.get(f"/vacation/{ALICE[0]}")
        c.close()
    assert text_of(page.text, "interval") == "Senders get one reply per sender every 2 days."


BAD_FIELDS = [
    ("start", {"start": "27.11.2026"}),
    ("end", {"end": "2026-13-01T00:00"}),
    ("end", {"start": "2026-12-24T17:00", "end": "2026-12-01T09:00"}),
    ("timezone", {"timezone": "Mars/Olympus_Mons"}),
    ("subject", {"subject": "Away\r\nBcc: everyone@example.com"}),
    ("subject", {"subject": "x" * 257}),
    ("message", {"message": "x" * (64 * 1024 + 1)}),
    ("message", {"message": "   "}),
]


@pytest.mark.parametrize(
    ("field", "overrides"),
    BAD_FIELDS,
    ids=[
        "bad-start",
        "bad-end",
        "end-before-start",
        "unknown-zone",
        "crlf-subject",
        "long-subject",
        "oversize-message",
        "empty-message",
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(
    client: PageClient, site: Site, field: str, overrides: dict[str, str]
) -> None:
    client.sign_in(*ALICE)
    response = _save(client, ALICE[0], **overrides)
    assert response.status_code == 422
    assert f'id="{field}-error"' in response.text
    assert f"Not saved: {field}" in response.text
    assert _stored(site, ALICE[0]) is None


def test_an_oversized_body_is_refused_before_it_is_read(client: PageClient, site: Site) -> None:
    client.sign_in(*ALICE)
    response = _save(client, ALICE[0], message="x" * (600 * 1024))
    assert response.status_code == 413
    assert _stored(site, ALICE[0]) is None


def test_page_text_is_escaped(client: PageClient) -> None:
    client.sign_in(*ALICE)
    page = f"/vacation/{ALICE[0]}"
    response = client.submit(
        page, page, _vacation_form(message="<script>alert(1)</script>", action="preview")
    )
    assert response.status_code == 200
    assert "<script>alert(1)" not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text


def test_preview_writes_nothing_and_shows_the_reply(client: PageClient, site: Site) -> None:
    client.sign_in(*ALICE)
    response = _save(client, ALICE[0], action="preview")
    assert response.status_code == 200
    assert _stored(site, ALICE[0]) is None
    assert text_of(response.text, "preview-subject") == "Out of the office"
    assert text_of(response.text, "preview-body").startswith("I am away until Christmas Eve.\n")
    assert "Auto-Submitted" in response.text


def test_the_preview_is_the_reply_deliver_sends(client: PageClient, site: Site, sink: SmtpSink) -> None:
    client.sign_in(*ALICE)
    _save(client, ALICE[0], subject="", start="", end=later(), message="Back on Monday.\nAsk Bob meanwhile.")
    page = client.get(f"/vacation/{ALICE[0]}").text
    raw = (
        b"From: Dora <dora@example.net>\r\nTo: alice@example.com\r\nSubject: Lunch?\r\n"
        b"Message-ID: <lunch@example.net>\r\n\r\nAre you free?\r\n"
    )
    result = run_hook(site.config, *deliver_args("dora@example.net", ALICE[0]), stdin=raw)
    assert result.returncode == 0, result.stderr.decode()
    [received] = sink.wait_for(1)
    # The preview's sample subject is "Sample subject": an empty subject answers "Auto: " + theirs.
    assert text_of(page, "preview-subject") == "Auto: Sample subject"
    assert received.message["Subject"] == "Auto: Lunch?"
    assert received.message.get_content().replace("\r\n", "\n") == text_of(page, "preview-body")


def test_a_retired_address_cannot_get_a_vacation(client: PageClient, site: Site) -> None:
    store = Store.open(site.settings.database.url)
    store.put_retirement(ALICE[0], site.clock(), message="Gone.", status="5.1.6", timezone="UTC")
    store.close()
    client.sign_in(*ALICE)
    response = _save(client, ALICE[0])
    assert response.status_code == 409
    assert _stored(site, ALICE[0]) is None


def test_switch_off_and_delete(client: PageClient, site: Site) -> None:
    client.sign_in(*ALICE)
    _save(client, ALICE[0])
    page = f"/vacation/{ALICE[0]}"
    assert client.submit(page, f"{page}/off", {}).status_code == 303
    assert _stored(site, ALICE[0]).enabled is False
    assert text_of(client.get(page).text, "banner") == "The out-of-office reply is off."
    assert client.submit(page, f"{page}/delete", {}).status_code == 303
    assert _stored(site, ALICE[0]) is None


# -- who may see what ------------------------------------------------------------------------------

ADDRESS_ROUTES = [(m, p) for m, p in pages.ROUTES if "{address}" in p]
ADMIN_ROUTES = [(m, p) for m, p in pages.ROUTES if p.startswith("/admin")]


def _fill(path: str, address: str) -> str:
    return path.replace("{address}", address).replace("{name}", "vacation.txt.j2")


def _try(client: PageClient, method: str, path: str, own_page: str) -> int:
    if method == "GET":
        return client.get(path).status_code
    token = csrf_of(client.get(own_page).text)
    return client.http.post(path, data={"csrf_token": token, **_vacation_form()}).status_code


def test_the_route_table_is_what_the_refusal_tests_cover() -> None:
    assert ("GET", "/vacation/{address}") in ADDRESS_ROUTES
    assert ("POST", "/vacation/{address}") in ADDRESS_ROUTES
    assert len(ADMIN_ROUTES) >= 10
    assert {p for _, p in pages.ROUTES} <= {p for _, p in ADDRESS_ROUTES + ADMIN_ROUTES} | {
        "/",
        "/signin",
        "/signin/token",
        "/signout",
        "/static/{name}",
        "/vacation",
    }


@pytest.mark.parametrize(("method", "path"), ADDRESS_ROUTES + ADMIN_ROUTES)
def test_a_user_is_refused_another_users_address_and_the_admin_pages(
    client: PageClient, site: Site, method: str, path: str
) -> None:
    client.sign_in(*ALICE)
    status = _try(client, method, _fill(path, BOB[0]), f"/vacation/{ALICE[0]}")
    assert status == 403
    assert _stored(site, BOB[0]) is None


@pytest.mark.parametrize(("method", "path"), ADDRESS_ROUTES)
def test_a_domain_admin_is_refused_addresses_of_other_domains(
    client: PageClient, site: Site, method: str, path: str
) -> None:
    client.sign_in_token(make_token(site, "helpdesk-com", domain="example.com"))
    status = _try(client, method, _fill(path, CAROL[0]), "/admin")
    assert status == 403
    assert _stored(site, CAROL[0]) is None


@pytest.mark.parametrize("path", ["/admin/templates", "/admin/templates/vacation.txt.j2"])
def test_templates_are_for_site_admins_only(client: PageClient, site: Site, path: str) -> None:
    client.sign_in_token(make_token(site, "helpdesk-com", domain="example.com"))
    assert client.get(path).status_code == 403


# -- admin pages -----------------------------------------------------------------------------------


@pytest.fixture
def admin(client: PageClient, site: Site) -> PageClient:
    client.sign_in_token(make_token(site, "root", admin=True))
    return client


def test_an_unknown_token_is_refused(client: PageClient) -> None:
    response = client.submit("/signin/token", "/signin/token", {"token": "rsp_not-a-token"})
    assert response.status_code == 401


def test_revoking_the_token_ends_the_admin_session(admin: PageClient, site: Site) -> None:
    assert admin.get("/admin").status_code == 200
    store = Store.open(site.settings.database.url)
    try:
        assert store.revoke_token("root")
    finally:
        store.close()
    assert admin.get("/admin").status_code == 303


def test_an_admin_sets_and_clears_a_vacation_for_someone(admin: PageClient, site: Site) -> None:
    found = admin.get("/admin", params={"q": BOB[0]})
    assert f'href="/vacation/{BOB[0]}"' in found.text
    response = _save(admin, BOB[0], subject="Bob is ill")
    assert response.status_code == 303
    assert _stored(site, BOB[0]).subject == "Bob is ill"
    listing = admin.get("/admin", params={"q": "bob"})
    assert BOB[0] in listing.text
    page = f"/vacation/{BOB[0]}"
    assert admin.submit(page, f"{page}/off", {}).status_code == 303
    assert _stored(site, BOB[0]).enabled is False


def test_a_domain_admin_sees_only_their_domain(client: PageClient, site: Site) -> None:
    store = Store.open(site.settings.database.url)
    for address in (BOB[0], CAROL[0]):
        store.put_vacation(address, site.clock(), None, enabled=True, message="Away.", timezone="UTC")
    store.close()
    client.sign_in_token(make_token(site, "helpdesk-com", domain="example.com"))
    listing = client.get("/admin").text
    assert BOB[0] in listing and CAROL[0] not in listing
    assert _save(client, BOB[0]).status_code == 303


def test_changes_on_the_pages_are_logged_with_who_made_them(client: PageClient, site: Site) -> None:
    client.sign_in(*ALICE)
    _save(client, ALICE[0])
    client.submit(f"/vacation/{ALICE[0]}", "/signout", {})
    client.sign_in_token(make_token(site, "helpdesk-com", domain="example.com"))
    _save(client, BOB[0], subject="Bob is ill")
    page = f"/vacation/{BOB[0]}"
    client.submit(page, f"{page}/off", {})
    store = Store.open(site.settings.database.url)
    try:
        logged = [(c.actor, c.via, c.address, c.action) for c in reversed(store.list_changes())]
    finally:
        store.close()
    assert logged == [
        (f"user:{ALICE[0]}", "web", ALICE[0], "vacation.set"),
        ("token:helpdesk-com", "web", BOB[0], "vacation.set"),
        ("token:helpdesk-com", "web", BOB[0], "vacation.off"),
    ]
    shown = client.get("/admin/changes").text
    assert "token:helpdesk-com" in shown and "Bob is ill" in shown
    assert client.get("/admin/changes", params={"address": BOB[0]}).text.count("<tr>") == 1 + 2


def test_a_template_that_does_not_render_is_refused(admin: PageClient, site: Site) -> None:
    page = "/admin/templates/vacation.txt.j2"
    broken = admin.submit(page, page, {"text": "{{ message }} {{ nonsense.attr }}", "action": "save"})
    assert broken.status_code == 422
    assert 'id="text-error"' in broken.text
    escape = admin.submit(page, page, {"text": "{{ ''.__class__.__mro__ }}", "action": "save"})
    assert escape.status_code == 422
    assert not (Path(site.settings.reply.templates_dir) / "vacation.txt.j2").exists()
    preview = admin.submit(page, page, {"text": "Away: {{ message }}", "action": "preview"})
    assert preview.status_code == 200
    assert text_of(preview.text, "rendered") == "Away: I am away."
    saved = admin.submit(page, page, {"text": "Away: {{ message }}\n", "action": "save"})
    assert saved.status_code == 303
    written = Path(site.settings.reply.templates_dir) / "vacation.txt.j2"
    assert written.read_text() == "Away: {{ message }}\n"


def test_retired_addresses(admin: PageClient, site: Site) -> None:
    new = admin.submit("/admin/retired", "/admin/retired", {"address": "Old@Example.com"})
    assert new.status_code == 303
    page = new.headers["location"]
    assert page == "/admin/retired/old@example.com"
    bad = admin.submit(
        page, page, {"message": "Write to new@example.com", "status": "4.0.0", "timezone": "UTC"}
    )
    assert bad.status_code == 422 and 'id="status-error"' in bad.text
    ok = admin.submit(
        page, page, {"message": "Write to new@example.com", "status": "5.1.6", "timezone": "UTC"}
    )
    assert ok.status_code == 303
    assert "old@example.com" in admin.get("/admin/retired").text
    assert admin.submit(page, f"{page}/delete", {}).status_code == 303
    assert "old@example.com" not in admin.get("/admin/retired").text


def test_audit_filters_and_explain(admin: PageClient, site: Site, sink: SmtpSink) -> None:
    _save(admin, ALICE[0], start="", end=later())
    raw = b"From: dora@example.net\r\nTo: alice@example.com\r\nSubject: Hi\r\nMessage-ID: <a@x>\r\n\r\nHi\r\n"
    for sender in ("dora@example.net", "erin@example.net"):
        result = run_hook(site.config, *deliver_args(sender, ALICE[0]), stdin=raw)
        assert result.returncode == 0, result.stderr.decode()
    # A second message from dora within the interval: no reply, the audit says why.
    run_hook(site.config, *deliver_args("dora@example.net", ALICE[0]), stdin=raw.replace(b"<a@x>", b"<b@x>"))
    everything = admin.get("/admin/audit").text
    assert everything.count("<tr>") == 1 + 3
    dora = admin.get("/admin/audit", params={"sender": "dora@example.net"}).text
    assert dora.count("<tr>") == 1 + 2 and "erin@" not in dora
    limited = admin.get("/admin/audit", params={"reason": "interval"}).text
    assert limited.count("<tr>") == 1 + 1
    future = admin.get("/admin/audit", params={"since": "2030-01-01T00:00", "timezone": "UTC"}).text
    assert "<tr>" not in future.replace("<thead><tr>", "")
    bad = admin.get("/admin/audit", params={"since": "yesterday"})
    assert bad.status_code == 422 and 'id="since-error"' in bad.text
    explained = admin.submit(
        "/admin/explain",
        "/admin/explain",
        {"sender": "frank@example.net", "recipient": ALICE[0], "message": raw.decode()},
    )
    assert explained.status_code == 200
    assert "Decision: reply" in explained.text
    assert re.search(r"Auto-Submitted: auto-replied", explained.text)
    assert len(sink.received()) == 2  # explain sent nothing


def test_a_domain_admin_reads_and_explains_only_their_domain(client: PageClient, site: Site) -> None:
    raw = b"From: dora@example.net\r\nTo: alice@example.com\r\nSubject: Hi\r\nMessage-ID: <c@x>\r\n\r\nHi\r\n"
    result = run_hook(site.config, *deliver_args("dora@example.net", ALICE[0]), stdin=raw)
    assert result.returncode == 0, result.stderr.decode()
    client.sign_in_token(make_token(site, "helpdesk-org", domain="example.org"))
    theirs = client.get("/admin/audit").text
    assert "dora@example.net" not in theirs and "No decisions match." in theirs
    asked = client.get("/admin/audit", params={"recipient": ALICE[0]}).text
    assert "dora@example.net" not in asked
    explained = client.submit(
        "/admin/explain",
        "/admin/explain",
        {"sender": "dora@example.net", "recipient": ALICE[0], "message": raw.decode()},
    )
    assert explained.status_code == 403


@pytest.mark.parametrize(
    ("wanted", "landing"),
    [
        (f"/vacation/{ALICE[0]}", f"/vacation/{ALICE[0]}"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
    ],
    ids=["own-page", "scheme-relative", "absolute"],
)
def test_sign_in_returns_only_to_a_page_of_this_site(client: PageClient, wanted: str, landing: str) -> None:
    response = client.submit(
        "/signin", "/signin", {"address": ALICE[0], "password": ALICE[1], "next": wanted}
    )
    assert response.status_code == 303
    assert response.headers["location"] == landing
