"""The SPF route: pyspf's check_host over the verification resolver (RFC 7208)."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import dns.name
import spf

from responder.verify.dns import Dns, DnsTrouble, short_reason

# pyspf looks up DNS through its module-level ``DNSLookup``; route it to the resolver of the
# check running in this thread, and leave any other caller with the original.
_ACTIVE_DNS: contextvars.ContextVar[Dns | None] = contextvars.ContextVar("responder_verify_dns", default=None)
# Asserted, not assumed: should pyspf rename its hook, every SPF check would quietly use the system
# resolver without the budget; better that importing this module fails.
if not callable(getattr(spf, "DNSLookup", None)):
    raise ImportError("pyspf has no DNSLookup to route through the verification resolver")
_PYSPF_LOOKUP: Callable[..., Any] = spf.DNSLookup


def _pyspf_lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list[Any]:
    resolver = _ACTIVE_DNS.get()
    if resolver is None:
        return list(_PYSPF_LOOKUP(name, qtype, strict, timeout))
    try:
        records = resolver.query(name, qtype)
    except DnsTrouble as exc:
        raise spf.TempError(str(exc)) from None
    key = (name, qtype)
    if qtype in ("A", "AAAA"):
        return [(key, rdata.address) for rdata in records]
    if qtype == "MX":
        # A null MX ("0 .") names no host to look up.
        return [
            (key, (rdata.preference, rdata.exchange.to_text(omit_final_dot=True)))
            for rdata in records
            if rdata.exchange != dns.name.root
        ]
    if qtype == "PTR":
        return [(key, rdata.target.to_text(omit_final_dot=True)) for rdata in records]
    if qtype in ("TXT", "SPF"):
        return [(key, list(rdata.strings)) for rdata in records]
    return []


spf.DNSLookup = _pyspf_lookup


def check_host(
    resolver: Dns, ip: str, local: str, rpd: str, helo: str, timeout: float, querytime: float
) -> tuple[str, str]:
    """(result, problem) of ``check_host(ip, rpd, local@rpd)``; problem is "" unless an error result."""
    token = _ACTIVE_DNS.set(resolver)
    try:
        query = spf.query(i=ip, s=f"{local}@{rpd}", h=helo, strict=True, timeout=timeout, querytime=querytime)
        # pyspf splits the sender at the first "@", wrong for a quoted local part.
        query.l, query.o, query.d = local or "postmaster", rpd, rpd
        result, _code, _explanation = query.check()
        problem = getattr(query, "prob", "") if result in ("permerror", "temperror") else ""
    except Exception as exc:  # pyspf asserts on some malformed policies
        result, problem = "permerror", f"internal error {type(exc).__name__}"
    finally:
        _ACTIVE_DNS.reset(token)
    return str(result), short_reason(problem) if problem else ""
