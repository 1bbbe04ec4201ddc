"""Sender keys: one stable identity per human sender, for intervals and rate limits.

The key is only ever used for counting; the reply always goes to the envelope sender as given.
"""

from __future__ import annotations

import re

from responder.mail.message import normalize_address

# BATV (draft-levine-smtp-batv): prvs=KDDDSSSSSS=local, also seen as msprvs1= / btv1==...==.
_BATV = re.compile(r"^(?:prvs|msprvs\d*|btv\d*)=+[^=]+=+(?P<local>.+)$", re.IGNORECASE)
# SRS (libsrs2 / postsrsd): SRS0=HHHH=TT=orig-domain=orig-local@forwarder. The first separator may be
# "=", "+" or "-"; the hash is base64 and the timestamp base32, neither holds "=", so the original
# local part is everything after the fourth "=" and may itself contain "=".
_SRS0 = re.compile(r"^srs0[=+\-][^=]*=[^=]*=(?P<domain>[^=]+)=(?P<local>.+)$", re.IGNORECASE)
# SRS1=HHHH=first-forwarder==HHHH=TT=orig-domain=orig-local@second-forwarder: the part after the
# first forwarder is the SRS0 local part without its "SRS0" (it starts with the SRS0 separator).
_SRS1 = re.compile(r"^srs1[=+\-][^=]*=[^=]+=(?P<srs0>[=+\-].+)$", re.IGNORECASE)


# Mail routing through the local part, still honoured by MTAs (Postfix: resolve_dequoted_address,
# allow_percent_hack, swap_bangpath): "a@b"@relay, a%b@relay and b!a@relay all reach a@b from relay.
ROUTING_OPERATORS = "@%!"


def routing_operator(address: str) -> str | None:
    """Which routing operator the local part of ``address`` holds (quoted or not), or None.

    A source route (``@relay:user@domain``) shows as an ``@`` before the last one.
    """
    local, at, _domain = address.strip().strip("<>").strip().rpartition("@")
    found = [operator for operator in ROUTING_OPERATORS if operator in local]
    return f"{found[0]} in the local part" if at and found else None


def strip_batv(local: str) -> str:
    """The local part without a BATV signature tag."""
    match = _BATV.match(local)
    return match.group("local") if match else local


def unwrap_srs(local: str) -> tuple[str, str] | None:
    """The original (local, domain) of an SRS0 or SRS1 local part, or None for any other local part."""
    srs1 = _SRS1.match(local)
    if srs1:
        local = "srs0" + srs1.group("srs0")
    srs0 = _SRS0.match(local)
    if srs0 is None:
        return None
    return srs0.group("local"), srs0.group("domain")


def strip_subaddress(local: str) -> str:
    """The local part without a ``+tag`` extension; quoted and ``+``-leading local parts stay whole."""
    if local.startswith('"'):
        return local
    base, plus, _tag = local.partition("+")
    return base if plus and base else local


def mailbox(address: str) -> str:
    """The mailbox ``address`` stands for: normalized, without a BATV tag, SRS unwrapped."""
    normalized = normalize_address(address) or address
    local, _, domain = normalized.rpartition("@")
    local = strip_batv(local)
    original = unwrap_srs(local)
    if original is not None:
        inner = normalize_address(f"{original[0]}@{original[1]}")
        if inner is not None:
            local, _, domain = inner.rpartition("@")
            local = strip_batv(local)
    return f"{local}@{domain}"


def sender_key(address: str) -> str:
    """The key under which replies to ``address`` are counted.

    BATV tags are stripped, SRS0/SRS1 addresses stand for the original sender they encode, the
    ``+tag`` extension is dropped and the domain is lower-case ASCII (IDNA), so that every variant of
    one mailbox counts against the same intervals and limits.
    """
    local, _, domain = mailbox(address).rpartition("@")
    return f"{strip_subaddress(local)}@{domain}"


def sender_domain(key: str) -> str:
    """The domain part of a sender key."""
    return key.rpartition("@")[2]
