"""Test helpers for DKIM: keys made by ``responder dkim keygen``, published on the loopback DNS, checked."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import dkim
import dns.message
import dns.name
import dns.query
import dns.rdatatype

from responder.verify.alignment import alignment
from tests.dnsserver import DNSServer
from tests.helpers import run_admin

DOMAIN = "example.com"
RSA_SELECTOR = "responder"
ED_SELECTOR = "responder-ed25519"


def keygen(config: Path, *args: str) -> str:
    """Run ``responder dkim keygen ARGS`` and return the TXT text it prints, strings joined."""
    result = run_admin(config, "dkim", "keygen", *args)
    assert result.returncode == 0, result.stderr.decode()
    return record_from_output(result.stdout.decode())


def record_from_output(output: str) -> str:
    """The zone line's quoted strings, each at most 255 octets, joined as a resolver joins them."""
    [line] = [line for line in output.splitlines() if " IN TXT " in line]
    strings = re.findall(r'"([^"]*)"', line)
    assert strings and all(len(s.encode()) <= 255 for s in strings), line
    return "".join(strings)


def publish(server: DNSServer, selector: str, text: str, domain: str = DOMAIN) -> None:
    server.remove(f"{selector}._domainkey.{domain}", "TXT")
    server.add_txt(f"{selector}._domainkey.{domain}", text)


def dnsfunc(server: DNSServer) -> Callable[..., bytes | None]:
    """dkimpy's TXT lookup, asked of the loopback DNS server."""

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        query = dns.message.make_query(dns.name.from_text(name.decode()), dns.rdatatype.TXT)
        response = dns.query.tcp(query, server.host, port=server.port, timeout=timeout)
        for rrset in response.answer:
            for rdata in rrset:
                return b"".join(rdata.strings)
        return None

    return lookup


def signatures(data: bytes) -> list[dict[bytes, bytes]]:
    """The tags of each DKIM-Signature field, top first."""
    found = []
    parsed = dkim.DKIM(data)
    for name, value in parsed.headers:
        if name.lower() == b"dkim-signature":
            found.append(dkim.util.parse_tag_value(value))
    return found


def verify_each(data: bytes, server: DNSServer) -> list[bool]:
    """dkimpy's verdict on every signature of ``data``, top first."""
    verdicts = []
    for index in range(len(signatures(data))):
        try:
            verdicts.append(bool(dkim.DKIM(data).verify(index, dnsfunc=dnsfunc(server))))
        except dkim.DKIMException:  # a body hash mismatch is raised, not returned
            verdicts.append(False)
    return verdicts


def only_signature(data: bytes, keep: int) -> bytes:
    """``data`` with every DKIM-Signature field but the ``keep``-th removed (the rest is as it came)."""
    head, _, body = data.partition(b"\r\n\r\n")
    fields = re.split(rb"\r\n(?=[^ \t])", head)
    kept, index = [], 0
    for field in fields:
        if field.lower().startswith(b"dkim-signature:"):
            if index == keep:
                kept.append(field)
            index += 1
        else:
            kept.append(field)
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


def dmarc_passes(data: bytes, server: DNSServer, from_domain: str, org_domain: str) -> bool:
    """DMARC's DKIM half (RFC 7489 3.1.1, 6.6.3): a passing signature whose d= aligns as ``adkim`` asks.

    The policy record is looked up at the From domain, then at its organizational domain.
    """
    lookup = dnsfunc(server)
    record = lookup(f"_dmarc.{from_domain}.".encode()) or lookup(f"_dmarc.{org_domain}.".encode())
    assert record is not None and record.startswith(b"v=DMARC1"), record
    tags = {k.strip(): v.strip() for k, _, v in (t.partition(b"=") for t in record.split(b";")) if k.strip()}
    wanted = ("strict",) if tags.get(b"adkim", b"r") == b"s" else ("strict", "relaxed")
    return any(
        good and alignment(fields[b"d"].decode(), from_domain) in wanted
        for fields, good in zip(signatures(data), verify_each(data, server), strict=True)
    )
