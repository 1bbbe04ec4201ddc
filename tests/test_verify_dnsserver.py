"""The loopback DNS server used by the verification tests, and DNS server address parsing."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from responder.config.values import parse_dns_server
from tests.dnsserver import DNSServer


@pytest.fixture(scope="module")
def server() -> Iterator[DNSServer]:
    with DNSServer() as running:
        running.add_txt("example.com", "v=spf1 -all", "other text")
        running.add("example.com", "A", "192.0.2.1")
        running.add("example.com", "AAAA", "2001:db8::1")
        running.add("example.com", "MX", "10 mx.example.com.")
        running.add("alias.example.com", "CNAME", "example.com.")
        running.add("deep.below.example.net", "A", "192.0.2.2")
        running.add_txt("big.example.com", "x" * 3000)
        running.silence("silent.example")
        running.fail("broken.example")
        yield running


def _ask(server: DNSServer, name: str, rdtype: str, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, server.host, port=server.port, timeout=2)
    return dns.query.udp(query, server.host, port=server.port, timeout=2)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_same_port_answers_over_udp_and_tcp(server: DNSServer, tcp: bool) -> None:
    response = _ask(server, "example.com", "TXT", tcp=tcp)
    assert response.flags & dns.flags.AA
    texts = sorted(b"".join(r.strings) for r in response.answer[0])
    assert texts == [b"other text", b"v=spf1 -all"]
    assert server.queried("example.com")[-1].transport == ("tcp" if tcp else "udp")


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode", "answers"),
    [
        ("example.com", "A", dns.rcode.NOERROR, 1),
        ("example.com", "AAAA", dns.rcode.NOERROR, 1),
        ("example.com", "MX", dns.rcode.NOERROR, 1),
        ("EXAMPLE.com", "A", dns.rcode.NOERROR, 1),
        ("example.com", "PTR", dns.rcode.NOERROR, 0),  # NODATA
        ("below.example.net", "A", dns.rcode.NOERROR, 0),  # empty non-terminal
        ("missing.example.com", "A", dns.rcode.NXDOMAIN, 0),
        ("alias.example.com", "A", dns.rcode.NOERROR, 2),  # CNAME + A
        ("broken.example", "A", dns.rcode.SERVFAIL, 0),
        ("www.broken.example", "TXT", dns.rcode.SERVFAIL, 0),
    ],
)
def test_answers(server: DNSServer, name: str, rdtype: str, rcode: int, answers: int) -> None:
    response = _ask(server, name, rdtype)
    assert response.rcode() == rcode
    assert len(response.answer) == answers


def test_large_answer_is_truncated_over_udp_and_complete_over_tcp(server: DNSServer) -> None:
    udp = _ask(server, "big.example.com", "TXT")
    assert udp.flags & dns.flags.TC
    assert not udp.answer
    tcp = _ask(server, "big.example.com", "TXT", tcp=True)
    assert b"".join(tcp.answer[0][0].strings) == b"x" * 3000


def test_resolver_falls_back_to_tcp(server: DNSServer) -> None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port
    answer = resolver.resolve("big.example.com", "TXT", lifetime=2)
    assert len(b"".join(answer[0].strings)) == 3000
    assert {q.transport for q in server.queried("big.example.com")} >= {"udp", "tcp"}


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_silent_zone_never_answers(server: DNSServer, tcp: bool) -> None:
    started = time.monotonic()
    query = dns.message.make_query("www.silent.example", "TXT")
    with pytest.raises(dns.exception.Timeout):
        if tcp:
            dns.query.tcp(query, server.host, port=server.port, timeout=0.3)
        else:
            dns.query.udp(query, server.host, port=server.port, timeout=0.3)
    assert time.monotonic() - started < 2
    assert server.queried("silent.example")


def test_records_change_at_runtime(server: DNSServer) -> None:
    assert _ask(server, "runtime.example.org", "A").rcode() == dns.rcode.NXDOMAIN
    server.add("runtime.example.org", "A", "192.0.2.9")
    assert _ask(server, "runtime.example.org", "A").answer
    server.remove("runtime.example.org")
    assert _ask(server, "runtime.example.org", "A").rcode() == dns.rcode.NXDOMAIN


def test_garbage_query_is_ignored_and_server_keeps_running(server: DNSServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x00garbage", (server.host, server.port))
    assert _ask(server, "example.com", "A").answer


def test_ipv6_loopback_server() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = DNSServer("::1").start()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        server.add("example.com", "A", "192.0.2.1")
        assert server.address == f"[::1]:{server.port}"
        response = dns.query.udp(
            dns.message.make_query("example.com", "A"), "::1", port=server.port, timeout=2
        )
        assert response.answer
    finally:
        server.stop()


def test_stop_releases_the_port() -> None:
    server = DNSServer().start()
    port = server.port
    server.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        (" 192.0.2.1:53 ", ("192.0.2.1", 53)),
        ("::1", ("::1", 53)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        ("[2001:db8::53]", ("2001:db8::53", 53)),
        ("[::1]:5353", ("::1", 5353)),
    ],
)
def test_parse_dns_server(text: str, expected: tuple[str, int]) -> None:
    assert parse_dns_server(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "dns.example", "dns.example:53", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:x", "[::1", "[::1]x"],
)
def test_parse_dns_server_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_dns_server(text)
