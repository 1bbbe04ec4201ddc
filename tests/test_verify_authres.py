"""Trusted Authentication-Results: which upstream results the verification gate believes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from responder.config.settings import VerifySettings
from responder.verify.sender import Upstream, Verification, trusted_results
from tests.dnsserver import DNSServer
from tests.verifying import verify

TRUSTED = "mx.example.net"
BODY = b"\r\nHello.\r\n"
ORIGINAL = b"From: Bounce <bounce@example.com>\r\nTo: bob@example.org\r\nSubject: hi\r\n"


def message(*fields: str, body: bytes = BODY) -> bytes:
    """The site's MTA prepends its fields above the fields that arrived with the message."""
    return "".join(f"{f}\r\n" for f in fields).encode() + ORIGINAL + body


def ar(value: str) -> str:
    return f"Authentication-Results: {value}"


@pytest.fixture(scope="module")
def server() -> Iterator[DNSServer]:
    with DNSServer() as running:
        running.add_txt("example.com", "v=spf1 ip4:192.0.2.0/24 -all")
        running.add_txt("sel._domainkey.example.com", "v=DKIM1; k=rsa; p=")
        yield running
        assert not running.errors


def settings(
    server: DNSServer, require: str = "aligned", trusted: tuple[str, ...] = (TRUSTED,)
) -> VerifySettings:
    return VerifySettings(
        require=require,
        trusted_authserv_ids=trusted,
        dns_servers=(server.address,),
        dns_timeout=0.3,
        budget=3.0,
    )


SPF_PASS = f"{TRUSTED}; spf=pass smtp.mailfrom=bounce@example.com"
DKIM_PASS = f"{TRUSTED}; dkim=pass header.d=example.com header.s=sel"

CASES: list[tuple[str, bytes, str | None, bool, str]] = [
    # id, message, client address, verified, summary
    ("trusted-spf-pass", message(ar(SPF_PASS)), None, True, f"spf=pass(via {TRUSTED})"),
    (
        "trusted-spf-pass-domain-only",
        message(ar(f"{TRUSTED}; spf=pass smtp.mailfrom=example.com")),
        None,
        True,
        f"spf=pass(via {TRUSTED})",
    ),
    (
        "authserv-id-is-case-insensitive",
        message(ar("MX.Example.NET 1; spf=pass smtp.mailfrom=bounce@EXAMPLE.com")),
        None,
        True,
        f"spf=pass(via {TRUSTED})",
    ),
    (
        "untrusted-authserv-id-ignored",
        message(ar("mx.attacker.example; spf=pass smtp.mailfrom=bounce@example.com")),
        None,
        False,
        "spf=skipped(no client address) dkim=none",
    ),
    (
        "trusted-spf-fail-means-no-dns",
        message(ar(f"{TRUSTED}; spf=fail smtp.mailfrom=bounce@example.com")),
        "192.0.2.1",
        False,
        f"spf=fail(via {TRUSTED}) dkim=none",
    ),
    (
        "forged-copy-below-the-trusted-field",
        message(
            ar(f"{TRUSTED}; spf=softfail smtp.mailfrom=bounce@example.com"),
            "Received: from client.example by mx.example.net",
            ar(SPF_PASS),
        ),
        None,
        False,
        f"spf=softfail(via {TRUSTED}) dkim=none",
    ),
    (
        "forged-copy-cannot-fill-a-missing-method",
        message(
            ar(f"{TRUSTED}; dkim=pass header.d=esp.example"),
            ar(SPF_PASS),
        ),
        "198.51.100.1",
        False,
        f"spf=fail dkim=pass(d=esp.example, not aligned, via {TRUSTED})",
    ),
    (
        "untrusted-field-above-does-not-hide-the-trusted-one",
        message(ar("mx.attacker.example; spf=fail smtp.mailfrom=bounce@example.com"), ar(SPF_PASS)),
        None,
        True,
        f"spf=pass(via {TRUSTED})",
    ),
    (
        "inside-an-attached-message",
        message(
            "MIME-Version: 1.0",
            'Content-Type: multipart/mixed; boundary="b"',
            body=(
                b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
                b"--b\r\nContent-Type: message/rfc822\r\n\r\n"
                + f"Authentication-Results: {SPF_PASS}\r\n".encode()
                + ORIGINAL
                + b"\r\nold\r\n--b--\r\n"
            ),
        ),
        None,
        False,
        "spf=skipped(no client address) dkim=none",
    ),
    (
        "helo-only-pass-never-counts",
        message(ar(f"{TRUSTED}; spf=pass smtp.helo=mx.example.com")),
        None,
        False,
        "spf=skipped(no client address) dkim=none",
    ),
    (
        "result-for-another-mailfrom-is-not-ours",
        message(ar(f"{TRUSTED}; spf=pass smtp.mailfrom=bounce@other.example")),
        "192.0.2.1",
        True,
        "spf=pass",
    ),
    ("trusted-dkim-aligned", message(ar(DKIM_PASS)), None, True, f"dkim=pass(d=example.com, via {TRUSTED})"),
    (
        "trusted-dkim-relaxed",
        message(ar(f"{TRUSTED}; dkim=pass header.d=mail.example.com")),
        None,
        True,
        f"dkim=pass(d=mail.example.com, via {TRUSTED})",
    ),
    (
        "trusted-dkim-identity-only",
        message(ar(f"{TRUSTED}; dkim=pass header.i=@example.com")),
        None,
        True,
        f"dkim=pass(d=example.com, via {TRUSTED})",
    ),
    (
        "trusted-dkim-rsa-sha1",
        message(ar(f"{TRUSTED}; dkim=pass header.d=example.com header.a=rsa-sha1")),
        None,
        False,
        f"spf=skipped(no client address) dkim=policy(d=example.com, rsa-sha1, via {TRUSTED})",
    ),
    (
        "trusted-dkim-public-suffix",
        message(ar(f"{TRUSTED}; dkim=pass header.d=co.uk")),
        None,
        False,
        f"spf=skipped(no client address) dkim=policy(d=co.uk, public suffix, via {TRUSTED})",
    ),
    (
        "trusted-dkim-second-result-aligned",
        message(ar(f"{TRUSTED}; dkim=pass header.d=esp.example; dkim=pass header.d=example.com")),
        None,
        True,
        f"dkim=pass(d=esp.example, not aligned, via {TRUSTED}) dkim=pass(d=example.com, via {TRUSTED})",
    ),
    (
        "trusted-dkim-fail-means-no-dns",
        message(
            ar(f"{TRUSTED}; dkim=fail header.d=example.com"),
            "DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; h=from; bh=AA==; b=AA==",
        ),
        None,
        False,
        f"spf=skipped(no client address) dkim=fail(d=example.com, via {TRUSTED})",
    ),
    (
        "both-methods-in-one-field",
        message(
            ar(f"{TRUSTED}; spf=softfail smtp.mailfrom=bounce@example.com; dkim=pass header.d=example.com")
        ),
        None,
        True,
        f"spf=softfail(via {TRUSTED}) dkim=pass(d=example.com, via {TRUSTED})",
    ),
    (
        "trusted-none",
        message(ar(f"{TRUSTED}; none")),
        "192.0.2.1",
        True,
        "spf=pass",
    ),
    (
        "unparseable-trusted-field-falls-back-to-dns",
        message(ar(f"{TRUSTED}; spf")),
        "192.0.2.1",
        True,
        f"spf=pass ar=ignored(unparseable, via {TRUSTED})",
    ),
    (
        "damaged-property-is-dropped-and-dns-decides",
        message(ar(f"{TRUSTED}; spf=pass smtp.mailfrom=bounce@example.com ((unbalanced")),
        "198.51.100.1",
        False,
        "spf=fail dkim=none",
    ),
    (
        "folded-field",
        message(
            f"Authentication-Results: {TRUSTED};\r\n\tspf=pass (sender SPF authorized)"
            "\r\n\tsmtp.mailfrom=bounce@example.com"
        ),
        None,
        True,
        f"spf=pass(via {TRUSTED})",
    ),
    (
        "comment-before-the-authserv-id",
        message(ar(f"(by the border) {TRUSTED}; spf=pass smtp.mailfrom=bounce@example.com")),
        None,
        True,
        f"spf=pass(via {TRUSTED})",
    ),
]


@pytest.mark.parametrize(
    ("raw", "client", "verified", "summary"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_authentication_results(
    server: DNSServer, raw: bytes, client: str | None, verified: bool, summary: str
) -> None:
    result = verify(raw, "bounce@example.com", client, None, settings(server))
    assert result == Verification(verified, summary)


def test_trusted_spf_result_does_no_dns(server: DNSServer) -> None:
    before = len(server.queried("example.com"))
    raw = message(ar(f"{TRUSTED}; spf=fail smtp.mailfrom=bounce@example.com; dkim=none"))
    result = verify(raw, "bounce@example.com", "192.0.2.1", None, settings(server))
    assert not result.verified
    assert len(server.queried("example.com")) == before


def test_nothing_is_trusted_by_default(server: DNSServer) -> None:
    result = verify(message(ar(SPF_PASS)), "bounce@example.com", None, None, settings(server, trusted=()))
    assert result == Verification(False, "spf=skipped(no client address) dkim=none")


def test_spf_mode_ignores_trusted_dkim(server: DNSServer) -> None:
    result = verify(message(ar(DKIM_PASS)), "bounce@example.com", None, None, settings(server, "spf"))
    assert result == Verification(False, "spf=skipped(no client address)")


def test_dkim_mode_ignores_trusted_spf(server: DNSServer) -> None:
    result = verify(message(ar(SPF_PASS)), "bounce@example.com", None, None, settings(server, "dkim"))
    assert result == Verification(False, "dkim=none")


def test_trusted_results_reads_only_the_topmost_trusted_field() -> None:
    headers = [
        ("Authentication-Results", "other.example; spf=fail smtp.mailfrom=a@example.com"),
        ("Authentication-Results", f"{TRUSTED}; dkim=pass header.d=example.com header.a=rsa-sha256"),
        ("Authentication-Results", f"{TRUSTED}; spf=pass smtp.mailfrom=a@example.com"),
    ]
    assert trusted_results(headers, [TRUSTED.upper()]) == Upstream(
        TRUSTED, spf=(), dkim=(("pass", "example.com", "rsa-sha256"),)
    )
    assert trusted_results(headers, []) is None
    assert trusted_results(headers, ["nobody.example"]) is None


def test_trusted_dkim_pass_verifies_only_the_signed_mailbox(server: DNSServer) -> None:
    replayed = message(ar(DKIM_PASS)).replace(b"<bounce@example.com>", b"<carol@example.com>")
    result = verify(replayed, "bounce@example.com", None, None, settings(server, "dkim"))
    assert result == Verification(False, f"dkim=policy(d=example.com, From is not the sender, via {TRUSTED})")


# The trusted MTA writes the client's HELO name unquoted; a client chooses that name to add results.
HELO_CASES: list[tuple[str, str, str | None, bool, str]] = [
    # id, field value, HELO name the MTA reports to us, verified, summary (client 198.51.100.1 fails SPF)
    (
        "semicolon-adds-a-result",
        f"{TRUSTED}; spf=fail smtp.helo=evil;spf=pass smtp.mailfrom=bounce@example.com",
        None,
        False,
        "spf=fail dkim=none",
    ),
    (
        "semicolon-adds-a-result-helo-known",
        f"{TRUSTED}; spf=fail smtp.helo=evil;spf=pass smtp.mailfrom=bounce@example.com",
        "evil;spf=pass",
        False,
        "spf=fail dkim=none",
    ),
    (
        "space-adds-a-property",
        f"{TRUSTED}; spf=pass smtp.helo=evil smtp.mailfrom=bounce@example.com",
        None,
        False,
        "spf=fail dkim=none",
    ),
    (
        "space-adds-a-property-helo-known",
        f"{TRUSTED}; spf=pass smtp.helo=evil smtp.mailfrom=bounce@example.com",
        "evil smtp.mailfrom=bounce@example.com",
        False,
        "spf=fail dkim=none",
    ),
    (
        "adds-a-dkim-result",
        f"{TRUSTED}; spf=none smtp.helo=evil; dkim=pass header.d=example.com",
        None,
        False,
        "spf=fail dkim=none",
    ),
    (
        "closes-a-comment-helo-known",
        f"{TRUSTED}; spf=fail (client helo=x); spf=pass smtp.mailfrom=bounce@example.com ()"
        " smtp.mailfrom=bounce@example.com",
        "x); spf=pass smtp.mailfrom=bounce@example.com (",
        False,
        f"spf=fail dkim=none ar=ignored(unparseable, via {TRUSTED})",
    ),
    (
        "helo-reported-and-plain-the-rest-is-believed",
        f"{TRUSTED}; spf=none smtp.helo=mail.example.com; spf=pass smtp.mailfrom=bounce@example.com",
        "mail.example.com",
        True,
        f"spf=pass(via {TRUSTED})",
    ),
    (
        "helo-not-reported-the-rest-falls-back-to-dns",
        f"{TRUSTED}; spf=none smtp.helo=mail.example.com; spf=pass smtp.mailfrom=bounce@example.com",
        None,
        False,
        "spf=fail dkim=none",
    ),
    (
        "another-helo-than-reported",
        f"{TRUSTED}; spf=none smtp.helo=filter.example.com; spf=pass smtp.mailfrom=bounce@example.com",
        "mail.example.com",
        False,
        "spf=fail dkim=none",
    ),
    (
        "mailfrom-before-the-helo-is-believed",
        f"{TRUSTED}; spf=pass smtp.mailfrom=bounce@example.com smtp.helo=mail.example.com",
        None,
        True,
        f"spf=pass(via {TRUSTED})",
    ),
]


@pytest.mark.parametrize(
    ("value", "helo", "verified", "summary"), [c[1:] for c in HELO_CASES], ids=[c[0] for c in HELO_CASES]
)
def test_a_helo_name_cannot_add_results(
    server: DNSServer, value: str, helo: str | None, verified: bool, summary: str
) -> None:
    result = verify(message(ar(value)), "bounce@example.com", "198.51.100.1", helo, settings(server))
    assert result == Verification(verified, summary)
