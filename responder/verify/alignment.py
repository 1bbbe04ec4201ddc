"""Identifier alignment of a signing domain with the return-path domain, by the Public Suffix List."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import dns.exception
import dns.name
from publicsuffixlist import PublicSuffixList

# Alignments that let a signature speak for the return-path domain (DMARC's strict and relaxed).
ALIGNED = ("strict", "relaxed")


@functools.cache
def _psl() -> PublicSuffixList:
    # Loaded once per process; unknown TLDs count as public suffixes (accept_unknown).
    return PublicSuffixList()


_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")


def normal_domain(text: str) -> str | None:
    """Lower-case A-label form without the final dot, or None when it is not a host name."""
    text = text.strip().rstrip(".")
    # dnspython reads an escape such as "\." as a dot inside a label; no mail domain has one.
    if not text or "\\" in text or text.startswith("["):
        return None
    try:
        name = dns.name.from_text(text).to_text(omit_final_dot=True).lower()
    except (dns.exception.DNSException, ValueError, UnicodeError):
        return None
    if not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        return None
    return name


def split_sender(sender: str) -> tuple[str, str] | None:
    """(local part, normal domain) of an envelope sender, or None when it has no usable domain."""
    text = sender.strip()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return None
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    local, at, domain = text.rpartition("@")
    if not at:
        return None
    normal = normal_domain(domain)
    return (local, normal) if normal else None


def alignment(signer: str, rpd: str) -> str:
    """``strict``, ``relaxed``, ``public suffix`` (signer is one) or ``not aligned``."""
    psl = _psl()
    if psl.is_public(signer):
        return "public suffix"
    if signer == rpd:
        return "strict"
    org = psl.privatesuffix(signer)
    if org is not None and org == psl.privatesuffix(rpd):
        return "relaxed"
    return "not aligned"


def aligned_signature_present(headers: Sequence[tuple[str, str]], rpd: str) -> bool:
    """Whether a DKIM-Signature field names a d= aligned with ``rpd`` (before any is checked)."""
    for name, value in headers:
        if name.strip().lower() == "dkim-signature":
            match = re.search(r"(?:^|;)\s*d\s*=\s*([^;\s]+)", value)
            signer = normal_domain(match.group(1)) if match else None
            if signer and alignment(signer, rpd) in ALIGNED:
                return True
    return False
