"""The SPF route of the verification gate, against a real DNS server on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from responder.config.settings import VerifySettings
from tests.dnsserver import DNSServer
from tests.verifying import verify

MESSAGE = b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"
INSIDE = "192.0.2.1"  # authorised by pass.example
OUTSIDE = "198.51.100.7"  # authorised by nobody


@pytest.fixture(scope="module")
def server() -> Iterator[DNSServer]:
    with DNSServer() as running:
        txt = running.add_txt
        txt("pass.example", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8:25::/48 -all")
        txt("fail.example", "v=spf1 ip4:203.0.113.0/24 -all")
        txt("softfail.example", "v=spf1 ~all")
        txt("neutral.example", "v=spf1 ?all")
        txt("nospf.example", "google-site-verification=abc", "not spf")
        txt("two.example", "v=spf1 -all", "v=spf1 +all")
        txt(
            "toomany.example", "v=spf1 " + " ".join(f"a:h{i}.toomany.example" for i in range(1, 12)) + " -all"
        )
        txt(
            "ten.example",
            "v=spf1 " + " ".join(f"a:h{i}.toomany.example" for i in range(1, 10)) + " a:in.ten.example -all",
        )
        for i in range(1, 12):
            running.add(f"h{i}.toomany.example", "A", f"203.0.113.{i}")
        running.add("in.ten.example", "A", INSIDE)
        txt("void.example", "v=spf1 a:nx1.void.example a:nx2.void.example a:nx3.void.example -all")
        txt("twovoid.example", "v=spf1 a:nx1.void.example a:nx2.void.example ip4:192.0.2.0/24 -all")
        running.silence("slow.example")
        running.fail("broken.example")
        txt("chain.example", "v=spf1 include:_a.chain.example -all")
        txt("_a.chain.example", "v=spf1 include:_spf.relay.example ~all")
        txt("_spf.relay.example", "v=spf1 ip4:203.0.113.0/24 ip6:2001:db8:77::/48 -all")
        txt("incslow.example", "v=spf1 include:slow.example -all")
        txt("incnone.example", "v=spf1 include:nospf.example -all")
        txt("redirect.example", "v=spf1 redirect=pass.example")
        txt("v6.example", "v=spf1 a:mail6.v6.example -all")
        running.add("mail6.v6.example", "AAAA", "2001:db8:66::25")
        txt("mx.example", "v=spf1 mx -all")
        running.add("mx.example", "MX", "10 mail.mx.example.", "20 backup.mx.example.")
        running.add("mail.mx.example", "A", "192.0.2.77")
        running.add("backup.mx.example", "A", "192.0.2.78")
        txt("macro.example", "v=spf1 exists:%{l}.users.macro.example -all")
        running.add("alice.users.macro.example", "A", "127.0.0.2")
        running.add("cname.example", "CNAME", "pass.example.")
        txt(
            "long.example",
            "v=spf1 "
            + " ".join(f"ip4:10.0.{i // 250}.{i % 250}" for i in range(120))
            + " ip4:192.0.2.0/24 -all",
        )
        txt("helo.example", "v=spf1 ip4:192.0.2.0/24 -all")
        yield running
        assert not running.errors


def settings(server: DNSServer, require: str = "spf", **overrides: float) -> VerifySettings:
    values: dict[str, float] = {"dns_timeout": 0.3, "budget": 3.0, **overrides}
    return VerifySettings(require=require, dns_servers=(server.address,), **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sender", "client", "summary"),
    [
        ("bounce@pass.example", INSIDE, "spf=pass"),
        ("bounce@pass.example", OUTSIDE, "spf=fail"),
        ("bounce@fail.example", INSIDE, "spf=fail"),
        ("bounce@softfail.example", INSIDE, "spf=softfail"),
        ("bounce@neutral.example", INSIDE, "spf=neutral"),
        ("bounce@nospf.example", INSIDE, "spf=none"),
        ("bounce@nonexistent.example", INSIDE, "spf=none"),
        ("bounce@two.example", INSIDE, "spf=permerror(two or more type TXT spf records found)"),
        ("bounce@toomany.example", INSIDE, "spf=permerror(too many DNS lookups)"),
        ("bounce@ten.example", INSIDE, "spf=pass"),  # exactly ten DNS-querying terms are allowed
        ("bounce@void.example", INSIDE, "spf=permerror(void lookup limit of 2 exceeded)"),
        ("bounce@twovoid.example", INSIDE, "spf=pass"),  # two void lookups are allowed
        ("bounce@slow.example", INSIDE, "spf=temperror(timeout)"),
        ("bounce@broken.example", INSIDE, "spf=temperror(servfail)"),
        ("bounce@chain.example", "203.0.113.9", "spf=pass"),
        ("bounce@chain.example", "2001:db8:77::1", "spf=pass"),
        ("bounce@chain.example", INSIDE, "spf=fail"),
        ("bounce@incslow.example", INSIDE, "spf=temperror(timeout)"),
        ("bounce@incnone.example", INSIDE, "spf=permerror(no valid SPF record for included domain)"),
        ("bounce@redirect.example", INSIDE, "spf=pass"),
        ("bounce@pass.example", "2001:db8:25::1", "spf=pass"),
        ("bounce@pass.example", "2001:db8:26::1", "spf=fail"),
        ("bounce@pass.example", "::ffff:192.0.2.5", "spf=pass"),
        ("bounce@v6.example", "2001:db8:66::25", "spf=pass"),
        ("bounce@v6.example", "2001:db8:66::26", "spf=fail"),
        ("bounce@mx.example", "192.0.2.78", "spf=pass"),
        ("bounce@mx.example", "192.0.2.79", "spf=fail"),
        ("alice@macro.example", INSIDE, "spf=pass"),
        ("mallory@macro.example", INSIDE, "spf=fail"),
        ("bounce@cname.example", INSIDE, "spf=pass"),
        ("bounce@long.example", INSIDE, "spf=pass"),
        ("<Bounce@PASS.Example.>", INSIDE, "spf=pass"),
        ("bounce@pass.example", None, "spf=skipped(no client address)"),
        ("bounce@pass.example", "", "spf=skipped(no client address)"),
        ("bounce@pass.example", "unknown", "spf=skipped(bad client address)"),
        ("bounce@pass.example", "IPv6:2001:db8:25::1", "spf=pass"),
    ],
)
def test_spf_results(server: DNSServer, sender: str, client: str | None, summary: str) -> None:
    result = verify(MESSAGE, sender, client, "mx.client.example", settings(server))
    assert result.summary == summary
    assert result.verified is (summary == "spf=pass")


def test_helo_only_pass_never_counts(server: DNSServer) -> None:
    # The HELO name would pass for this client, the sender domain has no SPF record.
    result = verify(MESSAGE, "bounce@nospf.example", INSIDE, "helo.example", settings(server))
    assert result == result.__class__(False, "spf=none")
    assert not server.queried("helo.example")


def test_missing_helo_is_fine(server: DNSServer) -> None:
    assert verify(MESSAGE, "bounce@pass.example", INSIDE, None, settings(server)).verified


def test_large_record_comes_over_tcp(server: DNSServer) -> None:
    # 120 ip4 terms are longer than the 1232-byte EDNS limit: the resolver must retry over TCP.
    verify(MESSAGE, "bounce@long.example", INSIDE, None, settings(server))
    assert "tcp" in {q.transport for q in server.queried("long.example")}


def test_aligned_mode_uses_spf(server: DNSServer) -> None:
    result = verify(MESSAGE, "bounce@pass.example", INSIDE, None, settings(server, require="aligned"))
    assert result.verified
    assert result.summary == "spf=pass"


def test_dkim_mode_does_no_spf(server: DNSServer) -> None:
    before = len(server.queried("pass.example"))
    result = verify(MESSAGE, "bounce@pass.example", INSIDE, None, settings(server, require="dkim"))
    assert result == result.__class__(False, "dkim=none")
    assert len(server.queried("pass.example")) == before


def test_lookups_are_absolute_names(server: DNSServer) -> None:
    # No search domain is ever appended, even for a single-label sender domain.
    result = verify(MESSAGE, "root@localhost", INSIDE, None, settings(server))
    assert result.summary == "spf=none"
    assert [q.name for q in server.queried("localhost")] == ["localhost"]
