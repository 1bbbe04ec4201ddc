"""Sender keys: one stable identity per human sender, for intervals and rate limits."""

from __future__ import annotations

import re

# BATV (draft-levine-smtp-batv): prvs=KDDDSSSSSS=local, also seen as msprvs1= / btv1==...==.
_BATV = re.compile(r"^(?:prvs|msprvs\d*|btv\d*)=[^=]+=+(?P<local>.+)$", re.IGNORECASE)


def strip_batv(local: str) -> str:
    """The local part without a BATV signature tag."""
    match = _BATV.match(local)
    return match.group("local") if match else local


def sender_key(normalized: str) -> str:
    """The key under which replies to a normalized address are counted."""
    local, _, domain = normalized.rpartition("@")
    return f"{strip_batv(local)}@{domain}"
