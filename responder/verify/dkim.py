"""The DKIM route: dkimpy over the header block, the body hash streamed, key-cost policy (RFC 6376, 8301)."""

from __future__ import annotations

import base64
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import dkim
import dkim.canonicalization
import dkim.util

from responder.verify.dns import Dns, DnsTrouble, short_reason

MIN_RSA_BITS = 1024
# Verification is pure-Python modular exponentiation; bound what a published key can cost.
MAX_RSA_BITS = 8192
_MAX_KEY_RECORD = 8192  # bytes; an 8192-bit key record is about 1400
_MAX_RSA_EXPONENT_BITS = 32


class KeyRefused(Exception):
    """A published key refused before use; like ``DnsTrouble``, kept apart from dkimpy's errors."""


def _strip_trailing_whitespace(content: bytes) -> bytes:
    """dkimpy's ``re.sub(b"[\\t ]+\\r\\n", b"\\r\\n", content)`` in linear time.

    The regular expression backtracks quadratically over whitespace runs that do not end a
    line: 3 MB of 1000-byte lines of spaces cost 4 s of CPU, one 1 MB run costs minutes.
    Same output: whitespace directly before each CRLF goes, the part after the last CRLF stays.
    """
    lines = content.split(b"\r\n")
    return b"\r\n".join([line.rstrip(b"\t ") for line in lines[:-1]] + lines[-1:])


# Asserted, not assumed: if dkimpy renamed the helper, patching a new name would leave the quadratic
# one in use; better that importing this module fails.
if not callable(getattr(dkim.canonicalization, "strip_trailing_whitespace", None)):
    raise ImportError("dkimpy has no canonicalization.strip_trailing_whitespace to replace")
if not callable(getattr(dkim.DKIM, "verify_sig_process", None)):
    raise ImportError("dkimpy has no DKIM.verify_sig_process to check the body hash in")
dkim.canonicalization.strip_trailing_whitespace = _strip_trailing_whitespace


# The body is hashed in slices of about this size; a line longer than that is one slice.
_BODY_SLICE = 1 << 20
_WSP_RUN = re.compile(rb"[\t ]+")


def body_hash(raw: bytes, start: int, tags: dict[bytes, bytes], piece: int = _BODY_SLICE) -> bytes:
    """The c= canonicalized body hash of ``raw[start:]``, as dkimpy computes it, in bounded memory.

    dkimpy splits the whole message into lines and joins the body again, then makes up to four
    more whole copies while it canonicalizes: for a 60 MB message several hundred MB. Here the
    body goes through the same steps a slice of whole lines at a time (every step is line-local),
    except the removal of empty lines at the end, which holds back a trailing run of empty lines
    until more text follows: dkimpy's strip_trailing_lines keeps exactly one CRLF after the last
    text, and the relaxed algorithm turns a body of nothing but CRLF into nothing.
    """
    relaxed = tags.get(b"c", b"simple/simple").partition(b"/")[2].strip().lower() == b"relaxed"
    hasher = dkim.HASH_ALGORITHMS[tags[b"a"]]()
    limit = int(tags[b"l"]) if b"l" in tags else None
    fed = 0
    held = 0  # empty lines seen since the last text
    text_seen = False

    def feed(data: bytes) -> None:
        nonlocal fed
        if limit is not None:
            data = data[: max(0, limit - fed)]
        fed += len(data)
        hasher.update(data)

    view = memoryview(raw)
    position = start
    while position < len(raw):
        end = raw.rfind(b"\n", position, position + piece) + 1
        if end <= position:  # one line longer than a slice
            end = raw.find(b"\n", position + piece) + 1 or len(raw)
        text = bytes(view[position:end]).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        position = end
        if relaxed:
            text = _WSP_RUN.sub(b" ", _strip_trailing_whitespace(text))
        empty = _trailing_empty_lines(text)
        if empty * 2 < len(text):
            feed(b"\r\n" * held)
            feed(text[: len(text) - empty * 2] if empty else text)
            held, text_seen = empty, True
        else:
            held += empty
    if text_seen or not relaxed:
        feed(b"\r\n")
    return bytes(hasher.digest())


def _trailing_empty_lines(text: bytes) -> int:
    """How many CRLF pairs end ``text`` (line ends already CRLF; a CR may stand alone)."""
    tail = text[len(text.rstrip(b"\r\n")) :]
    if tail.endswith(b"\r"):
        return 0
    lone = tail.rfind(b"\r\r")  # a lone CR, then only pairs
    return (len(tail) - lone - 1) // 2 if lone >= 0 else len(tail) // 2


_DKIM_LOG = logging.Logger("responder.verify.sender.dkimpy")
# dkimpy logs missing keys at ERROR level; the summary already carries every reason, and a
# detached, disabled logger keeps those lines out of the site's logs.
_DKIM_LOG.disabled = True


class HeaderDKIM(dkim.DKIM):  # type: ignore[misc]
    """dkimpy over the header block alone; the body hash is checked here, streaming ``raw``."""

    def __init__(self, raw: bytes, header_end: int, body_start: int) -> None:
        super().__init__(raw[:header_end] + b"\r\n\r\n", logger=_DKIM_LOG, minkey=0)
        self.raw = raw
        self.body_start = body_start

    def verify_sig_process(
        self, sig: dict[bytes, bytes], include_headers: list[bytes], sig_header: Any, dnsfunc: Any
    ) -> bool:
        if b"bh" in sig:
            expected = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
            if body_hash(self.raw, self.body_start, sig) != expected:
                raise dkim.ValidationError("body hash mismatch")
            # What dkimpy would hash instead is the empty body it was given.
            sig = {tag: value for tag, value in sig.items() if tag != b"bh"}
        return bool(super().verify_sig_process(sig, include_headers, sig_header, dnsfunc))


@dataclass
class Signature:
    index: int
    domain: str | None
    tags: dict[bytes, bytes] = field(default_factory=dict)
    alignment: str = "not aligned"


def check_signature(
    message: Any, signature: Signature, resolver: Dns, deadline: float
) -> tuple[str, list[str], int]:
    """(result, details, whether DNS was used) for one signature."""
    tags = signature.tags
    if tags.get(b"a", b"").strip().lower() == b"rsa-sha1":
        return "policy", ["rsa-sha1"], 0
    signed = {h.strip().lower() for h in tags.get(b"h", b"").split(b":")}
    if b"from" not in signed:
        return "policy", ["From not signed"], 0
    if time.monotonic() >= deadline:
        return "unchecked", ["budget exhausted"], 0
    found: list[bool] = []

    def dnsfunc(name: bytes, timeout: float = 5.0) -> bytes | None:
        records = resolver.txt(name.decode("ascii", "replace"))
        found.append(bool(records))
        if records:
            check_key_cost(name, records[0])
        return records[0] if records else None

    message.pk = None
    message.keysize = 0
    try:
        ok = message.verify(idx=signature.index, dnsfunc=dnsfunc)
    except DnsTrouble as exc:
        return "temperror", [str(exc)], 1
    except KeyRefused as exc:
        return "policy", [str(exc)], 1
    except dkim.ValidationError as exc:
        text = short_reason(str(exc))
        return (
            ("fail" if text.startswith("body hash mismatch") else "permerror"),
            [text],
            int(bool(found)),
        )
    except dkim.NaClNotFoundError:
        return "permerror", ["ed25519 not supported"], 1
    except Exception as exc:
        return "permerror", [short_reason(str(exc)) or type(exc).__name__], int(bool(found))
    if not ok:
        if not found or not found[0]:
            return "permerror", ["no key"], 1
        if message.pk is None:
            return "permerror", ["bad key"], 1
        return "fail", ["signature mismatch"], 1
    if message.ktag == b"rsa" and message.keysize < MIN_RSA_BITS:
        return "policy", [f"key {message.keysize} bits"], 1
    return "pass", [], 1


def check_key_cost(name: bytes, record: bytes) -> None:
    if len(record) > _MAX_KEY_RECORD:
        raise KeyRefused("key record too large")  # dkimpy's ASN.1 integer parsing is quadratic
    try:
        key, bits, kind, _tlsrpt = dkim.evaluate_pk(name, record)
    except Exception:
        return  # dkimpy reports unusable keys itself
    if kind == b"rsa" and bits > MAX_RSA_BITS:
        raise KeyRefused(f"key {bits} bits")
    if kind == b"rsa" and int(key["publicExponent"]).bit_length() > _MAX_RSA_EXPONENT_BITS:
        raise KeyRefused("RSA exponent too large")


def dkim_token(result: str, signature: Signature, *details: str) -> str:
    return f"dkim={result}({', '.join([f'd={signature.domain}', *details])})"
