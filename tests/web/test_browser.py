"""A real browser (Debian's Chromium under Playwright) signs in, sets a vacation, and gets the reply it saw.

Screenshots of every page go to ``$RESPONDER_TEST_ARTIFACTS/web`` (else the test's tmp directory).
Without Chromium these tests skip with the reason; under RESPONDER_TEST_INTEGRATION=require they fail.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from responder.config.load import load
from responder.store.database import Store
from tests.helpers import deliver_args, run_hook
from tests.sink import SmtpSink
from tests.web.pages_support import serving
from tests.web.users import ALICE, BOB, make_token_for

# Where the browser is; the skip test points it at a path that does not exist.
CHROMIUM = os.environ.get("RESPONDER_TEST_CHROMIUM", "/usr/bin/chromium")
BROWSER_ZONE = "America/New_York"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        reason = f"no Chromium at {CHROMIUM} (Debian package chromium, installed by .ci/install-mail-servers)"
        if os.environ.get("RESPONDER_TEST_INTEGRATION") == "require":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright starts Chromium with --no-sandbox unless told otherwise, which running as root needs.
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    base = os.environ.get("RESPONDER_TEST_ARTIFACTS")
    directory = Path(base) / "web" if base else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def live(site_config: Path) -> Iterator[tuple[Path, str]]:
    """The service on the real clock: the hook that answers afterwards runs on it too."""
    from responder.web.app import create_app

    config = site_config
    with serving(create_app(load(config))) as base_url:
        yield config, base_url


def _wall(days: float) -> str:
    """A wall time in the browser's zone, ``days`` from now, as a datetime-local input takes it."""
    from zoneinfo import ZoneInfo

    when = dt.datetime.now(ZoneInfo(BROWSER_ZONE)) + dt.timedelta(days=days)
    return when.strftime("%Y-%m-%dT%H:%M")


def test_a_user_sets_a_vacation_and_gets_the_reply_they_previewed(
    browser: Any, live: tuple[Path, str], sink: SmtpSink, artifacts: Path
) -> None:
    config, base_url = live
    # A phone-sized window in New York: the page must pick the browser's zone by itself.
    context = browser.new_context(
        base_url=base_url,
        timezone_id=BROWSER_ZONE,
        viewport={"width": 390, "height": 844},
        device_scale_factor=1,
    )
    page = context.new_page()
    page.goto("/signin")
    page.fill("#address", ALICE[0])
    page.fill("#password", ALICE[1])
    page.screenshot(path=artifacts / "signin.png", full_page=True)
    page.click("button[type=submit]")
    page.wait_for_url(f"**/vacation/{ALICE[0]}")
    assert page.input_value("#timezone") == BROWSER_ZONE

    start, end = _wall(-1), _wall(14)
    page.fill("#start", start)
    page.fill("#end", end)
    page.fill("#subject", "Away until the 15th")
    page.fill("#message", "I am travelling with little mail.\nFor urgent matters write to bob@example.com.")
    page.click("button[value=preview]")
    page.wait_for_selector("#preview-body")
    subject = page.inner_text("#preview-subject")
    body = page.inner_text("#preview-body")
    assert subject == "Away until the 15th"
    assert body.startswith("I am travelling with little mail.\n")
    assert f"({BROWSER_ZONE})" in body  # the template's "back on", in the zone picked
    page.screenshot(path=artifacts / "vacation-preview.png", full_page=True)

    page.click("button[value=save]")
    page.wait_for_selector("text=Saved.")
    banner = page.inner_text("#banner")
    assert banner.startswith("The out-of-office reply is on until ")
    assert banner.endswith(f"({BROWSER_ZONE}).")
    assert "one reply per sender every 7 days" in page.inner_text("#interval")
    page.screenshot(path=artifacts / "vacation.png", full_page=True)
    desk = context.new_page()
    desk.set_viewport_size({"width": 1280, "height": 900})
    desk.goto(f"/vacation/{ALICE[0]}")
    desk.screenshot(path=artifacts / "vacation-desk.png", full_page=True)
    # The one kept in the repository (README): a JPEG, small enough to commit.
    desk.screenshot(path=artifacts / "out-of-office.jpg", type="jpeg", quality=70, full_page=True)
    assert desk.inner_text("#preview-body") == body

    raw = (
        b"From: Dora Sender <dora@example.net>\r\nTo: alice@example.com\r\nSubject: Are you in?\r\n"
        b"Message-ID: <visit@example.net>\r\n\r\nCan we meet?\r\n"
    )
    result = run_hook(config, *deliver_args("dora@example.net", ALICE[0]), stdin=raw)
    assert result.returncode == 0, result.stderr.decode()
    [received] = sink.wait_for(1)
    assert received.message["Subject"] == subject
    assert received.message.get_content().replace("\r\n", "\n") == body

    # Someone else's page is refused, whatever is typed into the address bar.
    refused = page.goto(f"/vacation/{BOB[0]}")
    assert refused is not None and refused.status == 403
    page.screenshot(path=artifacts / "refused.png", full_page=True)
    context.close()


def test_an_admin_sets_a_vacation_for_someone_else(
    browser: Any, live: tuple[Path, str], artifacts: Path
) -> None:
    config, base_url = live
    token = make_token_for(config, "helpdesk", admin=True)
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto("/signin/token")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url("**/admin")
    page.fill("#q", BOB[0])
    page.click("form.search button")
    page.click(f"text=Out-of-office reply of {BOB[0]}")
    page.wait_for_url(f"**/vacation/{BOB[0]}")
    page.select_option("#timezone", "Europe/Berlin")
    page.fill("#end", "2030-01-10T08:00")
    page.fill("#subject", "Bob is ill")
    page.fill("#message", "Bob is ill this week; please write to the office.")
    page.click("button[value=save]")
    page.wait_for_selector("text=Saved.")
    page.screenshot(path=artifacts / "admin-vacation.png", full_page=True)
    store = Store.open(load(config).database.url)
    try:
        vacation = store.vacation_for([BOB[0]])
    finally:
        store.close()
    assert vacation is not None and vacation.subject == "Bob is ill"
    assert vacation.ends_at == dt.datetime(2030, 1, 10, 7, 0, tzinfo=dt.UTC)
    for name, path in [
        ("admin", "/admin"),
        ("audit", "/admin/audit"),
        ("explain", "/admin/explain"),
        ("templates", "/admin/templates/vacation.txt.j2"),
        ("retired", "/admin/retired"),
        ("changes", "/admin/changes"),
    ]:
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        page.screenshot(path=artifacts / f"admin-{name}.png", full_page=True)
    context.close()


def test_the_pages_work_without_javascript(browser: Any, live: tuple[Path, str], artifacts: Path) -> None:
    _, base_url = live
    context = browser.new_context(base_url=base_url, java_script_enabled=False, timezone_id=BROWSER_ZONE)
    page = context.new_page()
    page.goto("/signin")
    page.fill("#address", BOB[0])
    page.fill("#password", BOB[1])
    page.click("button[type=submit]")
    page.wait_for_url(f"**/vacation/{BOB[0]}")
    # No script: the zone select stays at UTC, and saying so is the page's job, not the browser's.
    assert page.input_value("#timezone") == "UTC"
    page.fill("#end", "2030-01-10T08:00")
    page.fill("#message", "Away without script.")
    page.click("button[value=save]")
    page.wait_for_selector("text=Saved.")
    assert page.inner_text("#banner").endswith("Thursday 10 January 2030, 08:00 (UTC).")
    page.screenshot(path=artifacts / "vacation-no-script.png", full_page=True)
    context.close()
