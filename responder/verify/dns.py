"""DNS for sender verification: one dnspython resolver, absolute names only, and a per-message deadline."""

from __future__ import annotations

import re
import time
from typing import Any

import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.resolver

from responder.config.settings import VerifySettings
from responder.config.values import parse_dns_server


class DnsTrouble(Exception):
    """A lookup that could not be answered: timeout, SERVFAIL, no server, budget spent.

    Deliberately not a ``dkim.DKIMException``: dkimpy turns those into a plain ``False``, and a
    temporary DNS failure must stay distinguishable from a bad signature.
    """


def make_resolver(settings: VerifySettings) -> dns.resolver.Resolver:
    """A resolver for ``settings``; thread-safe to share, as every query passes its own lifetime."""
    if settings.dns_servers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(host, port)
            for host, port in map(parse_dns_server, settings.dns_servers)
        ]
    else:
        resolver = dns.resolver.Resolver()
    # Every name we look up is absolute: a search domain could turn a failed lookup for
    # attacker-chosen names into a lookup in the local domain.
    resolver.search = []
    resolver.use_search_by_default = False
    resolver.domain = dns.name.root
    resolver.timeout = resolver.lifetime = max(0.001, float(settings.dns_timeout))
    # Large TXT records (4096-bit keys, long SPF) fit in EDNS UDP; TCP fallback covers the rest.
    resolver.use_edns(0, 0, 1232)
    resolver.cache = None
    return resolver


class Dns:
    """The shared resolver with the per-query timeout and a movable deadline."""

    def __init__(self, resolver: dns.resolver.Resolver, timeout: float, deadline: float) -> None:
        self.resolver = resolver
        self.timeout = max(0.001, timeout)
        self.deadline = deadline

    def query(self, name: str, rdtype: str) -> list[Any]:
        """Records of ``rdtype`` at ``name``; ``[]`` for NXDOMAIN, no data or an invalid name."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DnsTrouble("budget exhausted")
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, ValueError, UnicodeError):
            return []
        try:
            answer = self.resolver.resolve(
                qname,
                rdtype,
                search=False,
                raise_on_no_answer=False,
                lifetime=min(self.timeout, remaining),
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
            return []
        except dns.exception.Timeout:
            raise DnsTrouble("timeout" if time.monotonic() < self.deadline else "budget exhausted") from None
        except dns.resolver.NoNameservers:
            raise DnsTrouble("servfail") from None
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsTrouble(f"dns error {type(exc).__name__}") from None
        return list(answer.rrset) if answer.rrset is not None else []

    def txt(self, name: str) -> list[bytes]:
        return [b"".join(rdata.strings) for rdata in self.query(name, "TXT")]


def short_reason(text: str) -> str:
    """The first clause of a library message, printable, first letter lower-cased unless an acronym."""
    text = str(text).split(" (", 1)[0].split(": ", 1)[0].strip().rstrip(".")
    text = re.sub(r"[^\x20-\x7e]", "?", text)[:80]
    return text[:1].lower() + text[1:] if not text[1:2].isupper() else text
