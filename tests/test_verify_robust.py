"""The verification gate never raises, never outlasts its budget, and fails closed."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from responder.config.settings import VerifySettings
from responder.mail.message import Envelope, Inbound
from responder.verify.sender import Verification, _within, verify_sender
from tests.dnsserver import DNSServer
from tests.verifying import verify

TRUSTED = "mx.example.net"
PLAIN = b"From: Bounce <bounce@example.com>\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"


def signature(domain: str, selector: str = "sel") -> bytes:
    """A well-formed DKIM-Signature whose key lookup is what matters, not its cryptography."""
    return (
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s={selector};\r\n"
        "\th=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
        "\tb=dGhpcyBpcyBub3QgYSBzaWduYXR1cmU=\r\n"
    ).encode()


@pytest.fixture(scope="module")
def server() -> Iterator[DNSServer]:
    with DNSServer() as running:
        running.add_txt("example.com", "v=spf1 ip4:192.0.2.0/24 -all")
        running.add_txt("slowinclude.example", "v=spf1 include:a.slow.example include:b.slow.example -all")
        running.silence("slow.example")
        running.silence("_domainkey.slowinclude.example")
        yield running
        assert not running.errors


def settings(server: DNSServer, **overrides: Any) -> VerifySettings:
    values: dict[str, Any] = {
        "trusted_authserv_ids": (TRUSTED,),
        "dns_servers": (server.address,),
        "dns_timeout": 0.3,
        "budget": 2.0,
        **overrides,
    }
    return VerifySettings(**values)


def timed(*args: Any) -> tuple[Verification, float]:
    started = time.monotonic()
    result = verify(*args)
    return result, time.monotonic() - started


# --- never raises ------------------------------------------------------------------------------

_noise = random.Random(3834)
GARBAGE: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("blank-lines", b"\r\n\r\n\n\n"),
    ("nul-bytes", b"\x00" * 1000),
    ("random-bytes", _noise.randbytes(200_000)),
    ("no-header", b"just some text without any header\r\n"),
    ("mbox-from-line", b"From bounce@example.com Mon Jun  2 10:00:00 2025\r\n" + PLAIN),
    ("8-bit-headers", b"Subject: \xff\xfe\xe9\r\nFrom: \xe9t\xe9@example.com\r\n\r\n\xff\x00\x80"),
    ("line-without-colon", b"From: a@example.com\r\nthis is not a header\r\nSubject: x\r\n\r\nbody"),
    ("leading-continuation", b" folded first\r\nFrom: a@example.com\r\n\r\n"),
    ("bare-cr", b"From: a@example.com\rSubject: x\r\rbody"),
    ("huge-header-line", b"X-Long: " + b"a" * 1_000_000 + b"\r\n" + PLAIN),
    ("many-headers", b"X-H: v\r\n" * 50_000 + PLAIN),
    ("dkim-8-bit", b"DKIM-Signature: \xff\xfe; d=\xe9.example\r\n" + PLAIN),
    (
        "dkim-bad-base64",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s; h=from; bh=!!; b=!!\r\n" + PLAIN,
    ),
    (
        "dkim-unknown-algorithm",
        b"DKIM-Signature: v=1; a=rot13; d=example.com; s=s; h=from; bh=AA==; b=AA==\r\n" + PLAIN,
    ),
    ("dkim-empty", b"DKIM-Signature:\r\n" + PLAIN),
    ("dkim-huge-count", signature("example.com") * 500 + PLAIN),
    ("ar-nested-comments", f"Authentication-Results: {TRUSTED}; ".encode() + b"(" * 20_000 + b"\r\n" + PLAIN),
    (
        "ar-huge",
        f"Authentication-Results: {TRUSTED}; spf=pass ".encode() + b"x=y " * 10_000 + b"\r\n" + PLAIN,
    ),
    (
        "ar-8-bit",
        f"Authentication-Results: {TRUSTED}; spf=pass smtp.mailfrom=\xff@example.com\r\n".encode() + PLAIN,
    ),
    ("ar-empty", b"Authentication-Results:\r\nAuthentication-Results: ;;;\r\n" + PLAIN),
    ("nul-in-name", b"From\x00: a@example.com\r\n\r\n"),
]


@pytest.mark.parametrize("raw", [g[1] for g in GARBAGE], ids=[g[0] for g in GARBAGE])
def test_garbage_messages(server: DNSServer, raw: bytes) -> None:
    result, elapsed = timed(raw, "bounce@example.com", "198.51.100.1", "helo", settings(server))
    assert isinstance(result, Verification)
    assert result.verified is False
    assert result.summary
    assert elapsed < 3.0


@pytest.mark.parametrize(
    "sender",
    [
        "",
        "no-at-sign",
        "@",
        "a@",
        "a@.",
        "a@..example.com",
        "a@[192.0.2.1]",
        "a@-.example",
        "a@" + "x" * 300 + ".example",
        "a@" + ".".join(["x" * 63] * 5),
        "a@exa mple.com",
        "a@evil\\.example.com",  # an escaped dot must not put the sender under example.com
        "a@exa\\046mple.com",
        "\x00@example.com",
        "<>",
        "MAILER-DAEMON",
    ],
)
def test_garbage_senders(server: DNSServer, sender: str) -> None:
    result = verify(PLAIN, sender, "192.0.2.1", None, settings(server))
    assert isinstance(result, Verification)
    assert result.verified is False


@pytest.mark.parametrize(
    ("sender", "verified"),
    [
        ('"a@b"@example.com', True),
        ("a%b@example.com", True),
        ("üser@example.com", True),
        ("a@bücher.example", False),
        ("{}%{l}%%@example.com", True),
        ("a@b@example.com", True),  # the domain after the last "@" is what gets authenticated
    ],
)
def test_unusual_but_valid_senders(server: DNSServer, sender: str, verified: bool) -> None:
    result = verify(PLAIN, sender, "192.0.2.1", None, settings(server))
    assert result.verified is verified


@pytest.mark.parametrize(
    "client",
    ["unknown", "999.1.1.1", "192.0.2.1/24", "\x00", "2001:db8::1%eth0", "[", " ", "192.0.2.1 198.51.100.1"],
)
def test_garbage_client_addresses(server: DNSServer, client: str) -> None:
    result = verify(PLAIN, "bounce@example.com", client, "\x00\xff", settings(server))
    assert result.verified is False


@pytest.mark.parametrize(
    ("overrides", "summary"),
    [
        ({"require": "bogus"}, "verify=error(unknown require 'bogus')"),
        ({"dns_servers": ("dns.example",)}, "spf=temperror(bad dns_servers) dkim=none"),
        ({"budget": 0.0}, "spf=temperror(budget exhausted) dkim=none"),
        ({"budget": -5.0}, "spf=temperror(budget exhausted) dkim=none"),
        ({"trusted_authserv_ids": ("", " ")}, "spf=pass"),
    ],
)
def test_odd_settings(server: DNSServer, overrides: dict[str, Any], summary: str) -> None:
    result = verify(PLAIN, "bounce@example.com", "192.0.2.1", None, settings(server, **overrides))
    assert result.summary == summary


def test_a_zero_dns_timeout_is_the_shortest_wait_not_an_error(server: DNSServer) -> None:
    # Clamped to 1 ms: loopback usually answers within it, a busy machine not; either is a clean result.
    result = verify(
        PLAIN, "bounce@example.com", "192.0.2.1", None, settings(server, dns_timeout=0.0, budget=0.5)
    )
    assert result.summary in ("spf=pass", "spf=temperror(timeout) dkim=none")


@pytest.mark.parametrize(
    ("inbound", "settings_value"),
    [
        ("a str, not a message", VerifySettings()),
        (None, VerifySettings()),
        (PLAIN, VerifySettings()),
        (Inbound(Envelope("bounce@example.com", "alice@example.com"), PLAIN), None),
        (Inbound(Envelope("bounce@example.com", "alice@example.com"), PLAIN), object()),
    ],
)
def test_wrong_types_do_not_raise(inbound: Any, settings_value: Any) -> None:
    result = verify_sender(inbound, settings_value)
    assert result.verified is False
    assert result.summary.startswith("verify=error(")


def test_off_verifies_anything_without_looking() -> None:
    result = verify(b"\x00garbage", "", None, None, VerifySettings(require="off"))
    assert result == Verification(True, "verify=off")


def test_bytearray_and_memoryview_are_accepted(server: DNSServer) -> None:
    for raw in (bytearray(PLAIN), memoryview(PLAIN)):
        result = verify(raw, "bounce@example.com", "192.0.2.1", None, settings(server))  # type: ignore[arg-type]
        assert result.verified


# --- never outlasts the budget ----------------------------------------------------------------


def test_every_lookup_times_out_within_budget(server: DNSServer) -> None:
    # Per-query timeout above the whole budget: only the budget can end this.
    plain = PLAIN.replace(b"@example.com", b"@slow.example")
    raw = signature("slow.example") + signature("mail.slow.example") + signature("other.slow.example") + plain
    result, elapsed = timed(
        raw,
        "bounce@slow.example",
        "192.0.2.1",
        "helo.slow.example",
        settings(server, dns_timeout=5.0, budget=2.0),
    )
    assert elapsed < 2.0 + 1.0
    assert elapsed > 1.5  # it did wait for DNS, it did not give up early
    assert result.verified is False
    assert result.summary.startswith(
        "spf=temperror(budget exhausted) dkim=temperror(d=slow.example, budget exhausted)"
    )


def test_many_slow_lookups_within_budget(server: DNSServer) -> None:
    plain = PLAIN.replace(b"@example.com", b"@slowinclude.example")
    raw = b"".join(signature("slowinclude.example", f"s{i}") for i in range(20)) + plain
    result, elapsed = timed(
        raw, "bounce@slowinclude.example", "192.0.2.1", None, settings(server, budget=1.0)
    )
    assert elapsed < 1.0 + 1.0
    assert result.verified is False
    assert result.summary.startswith("spf=temperror(timeout) dkim=temperror(d=slowinclude.example, timeout)")
    assert "dkim=unchecked(d=slowinclude.example, budget exhausted)" in result.summary


def test_dead_dns_server_within_budget() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never read: queries vanish
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        dead = VerifySettings(dns_servers=(address,), dns_timeout=5.0, budget=1.0)
        raw = signature("example.com") + PLAIN
        result, elapsed = timed(raw, "bounce@example.com", "192.0.2.1", None, dead)
    assert elapsed < 1.0 + 1.0
    assert result.verified is False


def test_work_past_the_deadline_is_abandoned() -> None:
    # The backstop behind every bound: whatever a library does, the caller gets control back.
    release = threading.Event()
    started = time.monotonic()
    assert _within(0.2, lambda: release.wait(10)) is False
    assert time.monotonic() - started < 1.0
    release.set()
    assert _within(1.0, lambda: None) is True


def test_oversized_header_block_skips_dkim(server: DNSServer) -> None:
    raw = (
        signature("example.com") + b"X-Filler: " + b"x" * 70 + b"\r\n" * 1 + b"X-Pad: v\r\n" * 140_000 + PLAIN
    )
    result, elapsed = timed(raw, "bounce@example.com", None, None, settings(server))
    assert result == Verification(False, "spf=skipped(no client address) dkim=unchecked(header over 1 MiB)")
    assert elapsed < 2.0


def test_concurrent_checks_use_their_own_resolver() -> None:
    # pyspf's DNS hook is module-wide; each check must still reach only its own servers.
    with DNSServer() as passing, DNSServer() as failing:
        passing.add_txt("example.com", "v=spf1 ip4:192.0.2.0/24 -all")
        failing.add_txt("example.com", "v=spf1 -all")
        results: dict[str, list[bool]] = {"pass": [], "fail": []}

        def check(name: str, server: DNSServer) -> None:
            for _ in range(20):
                outcome = verify(PLAIN, "bounce@example.com", "192.0.2.1", None, settings(server))
                results[name].append(outcome.verified)

        threads = [
            threading.Thread(target=check, args=(name, srv))
            for name, srv in (("pass", passing), ("fail", failing)) * 3
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results["pass"] == [True] * 60
    assert results["fail"] == [False] * 60


@pytest.mark.parametrize(
    ("setup", "name", "module"),
    [
        ("import spf; del spf.DNSLookup", "DNSLookup", "responder.verify.spf"),
        (
            "import dkim.canonicalization; del dkim.canonicalization.strip_trailing_whitespace",
            "strip_trailing_whitespace",
            "responder.verify.dkim",
        ),
        (
            "import dkim; del dkim.DomainSigner.verify_sig_process",
            "verify_sig_process",
            "responder.verify.dkim",
        ),
    ],
)
def test_a_renamed_library_hook_fails_the_import(setup: str, name: str, module: str) -> None:
    # Patching a name the library no longer uses would silently bring back what the patch removes.
    code = f"{setup}\nimport {module}\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "ImportError" in result.stderr and name in result.stderr, result.stderr
