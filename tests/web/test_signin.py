"""Sign-in with the mail password against a private Dovecot: STARTTLS, imaps, throttling, the server down."""

from __future__ import annotations

import asyncio
import socket

import pytest

from responder.config.settings import Settings
from responder.store.database import Store
from responder.web.auth import BadCredentials, ImapUnavailable, Principal, Throttled, may_manage, sign_in
from responder.web.context import WebContext
from responder.web.imap import check_password
from responder.web.throttle import SignInThrottle
from tests.helpers import FakeClock
from tests.imapserver import USERS, ImapServer
from tests.web.conftest import SettingsFactory


def _context(settings: Settings, store: Store, clock: FakeClock) -> WebContext:
    web = settings.web
    return WebContext(
        settings=settings,
        store=store,
        clock=clock,
        imap=check_password,
        throttle=SignInThrottle(web.signin_per_account, web.signin_per_client, clock),
        secret=b"x" * 32,
    )


def test_right_password_over_starttls_signs_in(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    assert asyncio.run(check_password(settings, "alice@example.com", USERS["alice@example.com"])) is True
    assert asyncio.run(check_password(settings, "alice@example.com", "wrong")) is False


def test_imaps_checks_passwords_too(make_settings: SettingsFactory, imap_server: ImapServer) -> None:
    settings = make_settings(web={"imap": imap_server.tls_url})
    assert asyncio.run(check_password(settings, "bob@example.com", USERS["bob@example.com"])) is True
    assert asyncio.run(check_password(settings, "bob@example.com", USERS["alice@example.com"])) is False


def test_an_untrusted_certificate_is_unavailable_not_signed_in(make_settings: SettingsFactory) -> None:
    settings = make_settings(web={"imap_ca_file": ""})  # the system CAs do not know the test CA
    with pytest.raises(ImapUnavailable):
        asyncio.run(check_password(settings, "alice@example.com", USERS["alice@example.com"]))


def test_line_breaks_never_reach_the_server(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    password = USERS["alice@example.com"] + "\r\nA2 LOGOUT"
    assert asyncio.run(check_password(settings, "alice@example.com", password)) is False


def test_sign_in_same_answer_for_unknown_user_and_wrong_password(
    make_settings: SettingsFactory, store: Store, clock: FakeClock
) -> None:
    ctx = _context(make_settings(), store, clock)
    found = asyncio.run(sign_in(ctx, " Alice@Example.COM ", USERS["alice@example.com"], "192.0.2.1"))
    assert found == Principal("user", "alice@example.com", address="alice@example.com")
    answers = []
    for address, password in (("alice@example.com", "wrong"), ("nobody@example.com", "wrong"), ("", "x")):
        with pytest.raises(BadCredentials) as caught:
            asyncio.run(sign_in(ctx, address, password, "192.0.2.1"))
        answers.append(str(caught.value))
    assert len(set(answers)) == 1


def test_sign_in_throttled_per_account_then_free_again(
    make_settings: SettingsFactory, store: Store, clock: FakeClock
) -> None:
    ctx = _context(make_settings(web={"signin_per_account": "3/10m"}), store, clock)
    for n in range(3):
        with pytest.raises(BadCredentials):
            asyncio.run(sign_in(ctx, "bob@example.com", f"wrong{n}", f"192.0.2.{n}"))
    # Even the right password is not tried while the account is throttled, from any client.
    with pytest.raises(Throttled) as caught:
        asyncio.run(sign_in(ctx, "bob@example.com", USERS["bob@example.com"], "198.51.100.7"))
    assert 0 < caught.value.retry_after <= 600
    # Another account from the same clients is not held up.
    assert asyncio.run(sign_in(ctx, "alice@example.com", USERS["alice@example.com"], "192.0.2.0"))
    clock.advance(seconds=601)
    assert asyncio.run(sign_in(ctx, "bob@example.com", USERS["bob@example.com"], "198.51.100.7"))


def test_sign_in_throttled_per_client_address(
    make_settings: SettingsFactory, store: Store, clock: FakeClock
) -> None:
    ctx = _context(make_settings(web={"signin_per_client": "4/1h"}), store, clock)
    for n in range(4):
        with pytest.raises(BadCredentials):
            asyncio.run(sign_in(ctx, f"user{n}@example.com", "guess", "203.0.113.9"))
    with pytest.raises(Throttled):
        asyncio.run(sign_in(ctx, "alice@example.com", USERS["alice@example.com"], "203.0.113.9"))
    assert asyncio.run(sign_in(ctx, "alice@example.com", USERS["alice@example.com"], "203.0.113.10"))


def test_imap_down_means_try_again_later_never_signed_in(
    make_settings: SettingsFactory, store: Store, clock: FakeClock
) -> None:
    own = ImapServer().start()
    try:
        ctx = _context(make_settings(web={"imap": own.url, "imap_ca_file": str(own.tls.ca)}), store, clock)
        assert asyncio.run(sign_in(ctx, "carol@example.org", USERS["carol@example.org"], "192.0.2.1"))
        own.stop()
        with pytest.raises(ImapUnavailable):
            asyncio.run(sign_in(ctx, "carol@example.org", USERS["carol@example.org"], "192.0.2.1"))
    finally:
        own.close()


def test_a_silent_imap_server_times_out(
    make_settings: SettingsFactory, store: Store, clock: FakeClock
) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"imap://127.0.0.1:{silent.getsockname()[1]}"
        settings = make_settings(web={"imap": url, "imap_timeout": "1s"})
        with pytest.raises(ImapUnavailable):
            asyncio.run(check_password(settings, "alice@example.com", USERS["alice@example.com"]))


@pytest.mark.parametrize(
    ("principal", "allowed", "refused"),
    [
        (
            Principal("user", "alice@example.com", address="alice@example.com"),
            "alice@example.com",
            "bob@example.com",
        ),
        (Principal("domain", "helpdesk", domain="example.com"), "bob@example.com", "carol@example.org"),
        (Principal("domain", "helpdesk", domain="example.com"), "x@example.com", "x@sub.example.com"),
    ],
)
def test_scope(principal: Principal, allowed: str, refused: str) -> None:
    assert may_manage(principal, allowed)
    assert not may_manage(principal, refused)
    assert may_manage(Principal("admin", "root"), refused)
