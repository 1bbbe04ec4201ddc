"""Sender verification gate: is the envelope sender proven by SPF or by an aligned DKIM signature?

A response goes to the envelope sender (the return path), which anyone can forge. This module
decides whether that return path is authenticated, by analogy with DMARC identifier alignment
with the envelope sender domain (RPD) in place of the From domain:

* SPF route: ``check_host(client_address, RPD, sender)`` is ``pass`` (RFC 7208). The HELO
  identity is only used for the ``%{h}`` macro; a HELO-only pass never counts.
* DKIM route: a signature that verifies (RFC 6376), is not ``rsa-sha1`` and uses an RSA key of
  at least 1024 bits (RFC 8301), signs ``From``, and whose ``d=`` equals the RPD or shares its
  organizational domain (Public Suffix List) without itself being a public suffix.
* Trusted upstream results: see :func:`trusted_results` for what is believed and why.

``verify_sender`` never raises and returns within ``settings.budget`` (plus a fraction of a
second) whatever DNS does. One dnspython resolver serves every lookup; pyspf reaches it through
its module-level DNS hook and dkimpy through ``dnsfunc``. dkimpy is given the header block
only and checks the header signature; the body hash is computed here, a slice at a time, so
that a large message is held once. Importing this module also replaces one quadratic helper
of dkimpy's relaxed body canonicalization with a linear equivalent.

Summary format (for the audit table, the log line and ``explain``): space-separated
``method=result`` tokens, each optionally followed by ``(detail, detail)``; ``spf`` first, then
one ``dkim`` token per signature in header order, then notes, for example::

    spf=softfail dkim=pass(d=esp.example, not aligned)
    spf=pass(via mx.example.net)
    spf=skipped(no client address) dkim=fail(d=example.com, body hash mismatch)
    spf=temperror(timeout) dkim=temperror(d=example.com, budget exhausted) verify=timeout(budget 8s)

SPF results are RFC 7208 results plus ``skipped``; DKIM results are RFC 8601 results plus
``policy`` (verified or verifiable, but refused here: rsa-sha1, short key, From unsigned,
d= a public suffix) and ``unchecked`` (not looked up: limit or budget). Notes are
``sender=invalid(...)``, ``ar=ignored(...)``, ``verify=timeout(...)`` and ``verify=error(...)``.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import authres
import dkim
import dkim.canonicalization
import dkim.util
import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.resolver
import spf
from publicsuffixlist import PublicSuffixList

from responder.config.settings import VerifySettings
from responder.config.values import parse_dns_server
from responder.mail.addresses import mailbox

__all__ = [
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "Upstream",
    "Verification",
    "trusted_results",
    "verify_sender",
]

MIN_RSA_BITS = 1024
# Each evaluated signature may cost a key lookup; a message can carry any number of them.
MAX_SIGNATURES = 5
# Time the worker gets past the DNS deadline to finish CPU work before the caller gives up on it.
_SLACK = 0.5
# authres backtracks over comments; a real field is far shorter than this.
_MAX_AR_LENGTH = 8192
# dkimpy parses and canonicalizes every header line once per signature; real header blocks,
# long Received and ARC chains included, stay far below this.
_MAX_HEADER_BYTES = 1 << 20
# Verification is pure-Python modular exponentiation; bound what a published key can cost.
MAX_RSA_BITS = 8192
_MAX_KEY_RECORD = 8192  # bytes; an 8192-bit key record is about 1400
_MAX_RSA_EXPONENT_BITS = 32
_ROUTES = {"aligned": ("spf", "dkim"), "spf": ("spf",), "dkim": ("dkim",)}
_ALIGNED = ("strict", "relaxed")


@dataclass(frozen=True)
class Verification:
    """Whether the envelope sender is authenticated, and what was found (see the module doc)."""

    verified: bool
    summary: str


def verify_sender(
    raw: bytes,
    sender: str,
    client_address: str | None,
    helo: str | None,
    settings: VerifySettings,
) -> Verification:
    """Decide whether ``sender`` (a non-null envelope sender) is verified for message ``raw``.

    Never raises. The checks run in a worker thread so that the caller regains control after
    ``settings.budget`` seconds even if parsing a huge message or DNS overruns; a worker still
    running then is abandoned (it is a daemon thread and only ever winds down).
    """
    try:
        if settings.require == "off":
            return Verification(True, "verify=off")
        if settings.require not in _ROUTES:
            return Verification(False, f"verify=error(unknown require {settings.require!r})")
        budget = max(0.0, float(settings.budget))
        check = _Check(
            raw=raw if isinstance(raw, bytes) else bytes(raw),
            sender=str(sender),
            client_address=client_address,
            helo=helo,
            settings=settings,
            deadline=time.monotonic() + budget,
        )
        finished = _within(budget + _SLACK, check.run)
        verdict = check.verdict
        if not finished or verdict is None:
            return Verification(False, check.summary(f"verify=timeout(budget {budget:g}s)"))
        return Verification(verdict, check.summary())
    except Exception as exc:  # the gate must fail closed, never crash the hook
        return Verification(False, f"verify=error({type(exc).__name__})")


def _within(seconds: float, work: Callable[[], object]) -> bool:
    """Run ``work`` in a daemon thread; False when it is still running after ``seconds``."""
    worker = threading.Thread(target=work, name="responder-verify", daemon=True)
    worker.start()
    worker.join(seconds)
    return not worker.is_alive()


# --- DNS ---------------------------------------------------------------------------------------


class _KeyRefused(Exception):
    """A published key refused before use; like ``_DnsTrouble``, kept apart from dkimpy's errors."""


class _DnsTrouble(Exception):
    """A lookup that could not be answered: timeout, SERVFAIL, no server, budget spent.

    Deliberately not a ``dkim.DKIMException``: dkimpy turns those into a plain ``False``, and a
    temporary DNS failure must stay distinguishable from a bad signature.
    """


def _make_resolver(settings: VerifySettings) -> dns.resolver.Resolver:
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


class _Dns:
    """The shared resolver with the per-query timeout and a movable deadline."""

    def __init__(self, resolver: dns.resolver.Resolver, timeout: float, deadline: float) -> None:
        self.resolver = resolver
        self.timeout = max(0.001, timeout)
        self.deadline = deadline

    def query(self, name: str, rdtype: str) -> list[Any]:
        """Records of ``rdtype`` at ``name``; ``[]`` for NXDOMAIN, no data or an invalid name."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _DnsTrouble("budget exhausted")
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
            raise _DnsTrouble("timeout" if time.monotonic() < self.deadline else "budget exhausted") from None
        except dns.resolver.NoNameservers:
            raise _DnsTrouble("servfail") from None
        except (dns.exception.DNSException, OSError) as exc:
            raise _DnsTrouble(f"dns error {type(exc).__name__}") from None
        return list(answer.rrset) if answer.rrset is not None else []

    def txt(self, name: str) -> list[bytes]:
        return [b"".join(rdata.strings) for rdata in self.query(name, "TXT")]


# pyspf looks up DNS through its module-level ``DNSLookup``; route it to the resolver of the
# check running in this thread, and leave any other caller with the original.
_ACTIVE_DNS: contextvars.ContextVar[_Dns | None] = contextvars.ContextVar(
    "responder_verify_dns", default=None
)
_PYSPF_LOOKUP: Callable[..., Any] = spf.DNSLookup


def _pyspf_lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list[Any]:
    resolver = _ACTIVE_DNS.get()
    if resolver is None:
        return list(_PYSPF_LOOKUP(name, qtype, strict, timeout))
    try:
        records = resolver.query(name, qtype)
    except _DnsTrouble as exc:
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


if getattr(spf, "DNSLookup", None) is not _pyspf_lookup:
    spf.DNSLookup = _pyspf_lookup


def _strip_trailing_whitespace(content: bytes) -> bytes:
    """dkimpy's ``re.sub(b"[\\t ]+\\r\\n", b"\\r\\n", content)`` in linear time.

    The regular expression backtracks quadratically over whitespace runs that do not end a
    line: 3 MB of 1000-byte lines of spaces cost 4 s of CPU, one 1 MB run costs minutes.
    Same output: whitespace directly before each CRLF goes, the part after the last CRLF stays.
    """
    lines = content.split(b"\r\n")
    return b"\r\n".join([line.rstrip(b"\t ") for line in lines[:-1]] + lines[-1:])


dkim.canonicalization.strip_trailing_whitespace = _strip_trailing_whitespace


# The body is hashed in slices of about this size; a line longer than that is one slice.
_BODY_SLICE = 1 << 20
_WSP_RUN = re.compile(rb"[\t ]+")


def _body_hash(raw: bytes, start: int, tags: dict[bytes, bytes], piece: int = _BODY_SLICE) -> bytes:
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


# --- domains and alignment ---------------------------------------------------------------------


@functools.cache
def _psl() -> PublicSuffixList:
    # Loaded once per process; unknown TLDs count as public suffixes (accept_unknown).
    return PublicSuffixList()


_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")


def _normal_domain(text: str) -> str | None:
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


def _split_sender(sender: str) -> tuple[str, str] | None:
    text = sender.strip()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return None
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    local, at, domain = text.rpartition("@")
    if not at:
        return None
    normal = _normal_domain(domain)
    return (local, normal) if normal else None


def _alignment(signer: str, rpd: str) -> str:
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


# --- message headers and trusted Authentication-Results ----------------------------------------


_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")


def _header_block(raw: bytes) -> bytes:
    """The top-level header block; attached messages are in the body."""
    end = _END_OF_HEADER.search(raw)
    return raw[: end.start()] if end else raw


def _top_headers(block: bytes) -> list[tuple[str, str]]:
    """The header fields (name, unfolded value) of a header block."""
    fields: list[tuple[str, str]] = []
    for number, line in enumerate(re.split(r"\r?\n", block.decode("utf-8", "replace"))):
        if line[:1] in (" ", "\t"):
            if fields:
                fields[-1] = (fields[-1][0], fields[-1][1] + " " + line.strip())
            continue
        if number == 0 and line.startswith("From "):
            continue  # mbox envelope line from a pipe(8) F flag
        name, colon, value = line.partition(":")
        if not colon or not name or any(c.isspace() for c in name):
            break  # not a header field: the header block ends here, as for MUAs
        fields.append((name, value.strip()))
    return fields


def _authserv_id(value: str) -> str:
    text = value.split(";", 1)[0]
    for _ in range(8):  # nested comments, innermost first
        text, count = _COMMENT.subn(" ", text)
        if not count:
            break
    words = text.split()
    return words[0].strip('"').lower() if words else ""


@dataclass(frozen=True)
class Upstream:
    """What the trusted Authentication-Results field says, reduced to what the routes need."""

    authserv_id: str
    spf: tuple[tuple[str, str | None, str | None], ...]  # (result, smtp.mailfrom, smtp.helo)
    dkim: tuple[tuple[str, str | None, str | None], ...]  # (result, header.d or i= domain, header.a)


def trusted_results(
    headers: Sequence[tuple[str, str]], trusted: Sequence[str], helo: str | None = None
) -> Upstream | str | None:
    """The topmost top-level Authentication-Results field whose authserv-id is trusted.

    Only the single topmost field with a trusted authserv-id is believed; every field below it
    is ignored, trusted id or not. RFC 8601 section 5 requires the site's border MTA to delete
    (or rename) fields that claim its own authserv-id before it adds its own, and an MTA adds
    its fields above everything it received, so the topmost trusted field is the genuine one
    when the MTA does its part; a forged copy can only lie below it. Lower fields are not merged
    in even when the top one lacks a method, because that is exactly where a forgery would fill
    the gap. The cost is that a site writing spf and dkim into two separate fields gets only the
    top one used; the other route then falls back to DNS, which is safe. Fields inside attached
    messages are never seen, because only the top-level header block is passed in.

    Within the field, the client's HELO name is the one text the client chose; an MTA that writes
    it unquoted lets ``x smtp.mailfrom=bob@example.org`` or ``x; spf=pass ...`` become results of
    its own. See :func:`_believed` for what is kept of a field that names a HELO.

    What remains trusted: that the MTA strips forged fields (if it adds none for a message and
    does not strip, a forged field becomes the topmost one), and its checks of key size,
    algorithm and signed headers, except that ``header.a=rsa-sha1`` is refused here.

    Returns None when no field is trusted, or a note when the trusted field cannot be parsed.
    """
    wanted = {t.strip().lower() for t in trusted if t.strip()}
    if not wanted:
        return None
    for name, value in headers:
        if name.strip().lower() != "authentication-results":
            continue
        authserv_id = _authserv_id(value)
        if authserv_id not in wanted:
            continue
        if len(value) > _MAX_AR_LENGTH:
            return f"ar=ignored(field too long, via {authserv_id})"
        try:
            parsed = authres.AuthenticationResultsHeader.parse_value(_before_helo(value, helo))
        except Exception:
            return f"ar=ignored(unparseable, via {authserv_id})"
        spf_results: list[tuple[str, str | None, str | None]] = []
        dkim_results: list[tuple[str, str | None, str | None]] = []
        for method, result, properties in _believed(parsed.results, helo):
            if method == "spf":
                spf_results.append((result, properties.get("smtp.mailfrom"), properties.get("smtp.helo")))
            elif method == "dkim":
                domain = properties.get("header.d")
                if not domain and properties.get("header.i"):
                    domain = properties["header.i"].rpartition("@")[2]
                dkim_results.append((result, domain, properties.get("header.a")))
        return Upstream(authserv_id, tuple(spf_results), tuple(dkim_results))
    return None


# authres's <ptext>: a property value made of these needs no quoting, so it cannot hold other results.
_PTEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+")


def _before_helo(value: str, helo: str | None) -> str:
    """The field up to the client's HELO name, when that name could read as more of the field.

    Wherever the MTA wrote it (a property, a comment), what follows may be the client's text.
    """
    if helo and not _PTEXT.fullmatch(helo):
        at = value.find(helo)
        if at >= 0:
            return value[:at]
    return value


def _believed(results: Sequence[Any], helo: str | None) -> list[tuple[str, str, dict[str, str]]]:
    """(method, result, properties) of the parsed results, up to a HELO value that may run on.

    An ``smtp.helo`` value is known to end where the parser ended it only when it is the HELO
    name the MTA reported to us and that name needs no quoting. Any other (our HELO unknown, a
    different one, a name cut short by the parser) may be followed by the client's own text: the
    properties after it and the results after its result are dropped, and the route they would
    have decided falls back to DNS.
    """
    believed: list[tuple[str, str, dict[str, str]]] = []
    clean = helo.strip() if helo and _PTEXT.fullmatch(helo.strip()) else None
    for result in results:
        properties: dict[str, str] = {}
        ended = False
        for prop in getattr(result, "properties", []):
            key = f"{prop.type}.{prop.name}".lower()
            properties.setdefault(key, str(prop.value))
            if key == "smtp.helo" and (clean is None or str(prop.value).lower() != clean.lower()):
                ended = True
                break
        believed.append((str(getattr(result, "method", "")).lower(), str(result.result).lower(), properties))
        if ended:
            break
    return believed


# --- the check of one message ------------------------------------------------------------------


_DKIM_LOG = logging.Logger("responder.verify.sender.dkimpy")
# dkimpy logs missing keys at ERROR level; the summary already carries every reason, and a
# detached, disabled logger keeps those lines out of the site's logs.
_DKIM_LOG.disabled = True


class _HeaderDKIM(dkim.DKIM):  # type: ignore[misc]
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
            if _body_hash(self.raw, self.body_start, sig) != expected:
                raise dkim.ValidationError("body hash mismatch")
            # What dkimpy would hash instead is the empty body it was given.
            sig = {tag: value for tag, value in sig.items() if tag != b"bh"}
        return bool(super().verify_sig_process(sig, include_headers, sig_header, dnsfunc))


@dataclass
class _Signature:
    index: int
    domain: str | None
    tags: dict[bytes, bytes] = field(default_factory=dict)
    alignment: str = "not aligned"


class _Check:
    """Everything about verifying one message; runs in the worker thread."""

    def __init__(
        self,
        raw: bytes,
        sender: str,
        client_address: str | None,
        helo: str | None,
        settings: VerifySettings,
        deadline: float,
    ) -> None:
        self.raw = raw
        self.sender = sender
        self.client_address = client_address
        self.helo = helo
        self.settings = settings
        self.deadline = deadline
        self.routes = _ROUTES[settings.require]
        self.verdict: bool | None = None
        self._lock = threading.Lock()
        self._spf: str | None = None
        self._dkim: dict[int, str] = {}
        self._notes: list[str] = []
        self._dns: _Dns | None = None
        self._from_problem: str | None = None

    # results, readable from the calling thread while the worker is still busy

    def _set_spf(self, token: str) -> None:
        with self._lock:
            self._spf = token

    def _set_dkim(self, index: int, token: str) -> None:
        with self._lock:
            self._dkim[index] = token

    def _note(self, token: str) -> None:
        with self._lock:
            self._notes.append(token)

    def summary(self, *extra: str) -> str:
        with self._lock:
            tokens = [self._spf] if self._spf else []
            tokens += [self._dkim[i] for i in sorted(self._dkim)]
            tokens += self._notes
        return " ".join([*tokens, *extra]) or "verify=none"

    # the decision

    def run(self) -> None:
        try:
            self.verdict = self._decide()
        except Exception as exc:
            self._note(f"verify=error({type(exc).__name__})")
            self.verdict = False

    def _decide(self) -> bool:
        split = _split_sender(self.sender)
        if split is None:
            self._note("sender=invalid(no usable domain)")
            return False
        local, rpd = split
        block = _header_block(self.raw)
        headers = _top_headers(block[:_MAX_HEADER_BYTES])
        self._from_problem = self._signed_from_problem(headers)
        upstream = trusted_results(headers, self.settings.trusted_authserv_ids, self.helo)
        if isinstance(upstream, str):
            self._note(upstream)
            upstream = None

        spf_pending = "spf" in self.routes
        dkim_pending = "dkim" in self.routes
        if upstream is not None:
            if spf_pending:
                decided = self._upstream_spf(upstream, rpd)
                if decided is not None:
                    if decided:
                        return True
                    spf_pending = False
            if dkim_pending and upstream.dkim:
                if self._upstream_dkim(upstream, rpd):
                    return True
                dkim_pending = False
        if not (spf_pending or dkim_pending):
            return False

        try:
            resolver = _make_resolver(self.settings)
        except Exception as exc:
            reason = "bad dns_servers" if isinstance(exc, ValueError) else f"dns error {type(exc).__name__}"
            if spf_pending:
                self._set_spf(f"spf=temperror({reason})")
            if dkim_pending:
                signed = any(name.strip().lower() == "dkim-signature" for name, _ in headers)
                self._set_dkim(0, f"dkim=temperror({reason})" if signed else "dkim=none")
            return False
        self._dns = _Dns(resolver, self.settings.dns_timeout, self.deadline)

        if spf_pending:
            # Leave the DKIM route half of what remains if an aligned signature waits for a check.
            now = time.monotonic()
            waiting = dkim_pending and _aligned_signature_present(headers, rpd)
            share = now + (self.deadline - now) / 2 if waiting else self.deadline
            if self._spf_route(local, rpd, share):
                return True
        if dkim_pending:
            if not any(name.strip().lower() == "dkim-signature" for name, _ in headers):
                self._set_dkim(0, "dkim=none")
                return False
            if len(block) > _MAX_HEADER_BYTES:
                self._set_dkim(0, "dkim=unchecked(header over 1 MiB)")
                return False
            if time.monotonic() >= self.deadline:
                self._set_dkim(0, "dkim=unchecked(budget exhausted)")
                return False
            message, signatures = self._signatures(rpd)
            return bool(signatures) and self._dkim_route(message, signatures)
        return False

    def _signed_from_problem(self, headers: Sequence[tuple[str, str]]) -> str | None:
        """Why a DKIM signature cannot speak for this envelope sender, or None when it can.

        A signature proves its d= domain, not the mailbox: any message the domain signed, replayed
        with another envelope sender of the domain, would verify that sender. So the signed From
        must name the envelope sender (both BATV-untagged, SRS-unwrapped, case-folded), unless
        ``dkim_identity = "domain"``. One From field, as dkimpy then signs that one field.
        """
        if self.settings.dkim_identity == "domain":
            return None
        from email.utils import getaddresses

        values = [value for name, value in headers if name.strip().lower() == "from"]
        if len(values) != 1:
            return f"{len(values)} From fields"
        found = [addr for _name, addr in getaddresses(values) if addr]
        if len(found) != 1:
            return "From is not one mailbox"
        if mailbox(found[0]) != mailbox(self.sender.strip().strip("<>")):
            return "From is not the sender"
        return None

    # SPF

    def _upstream_spf(self, upstream: Upstream, rpd: str) -> bool | None:
        for result, mailfrom, _helo in upstream.spf:
            if not mailfrom:
                continue  # a HELO-only result says nothing about the return path
            if _normal_domain(mailfrom.rpartition("@")[2]) != rpd:
                continue
            self._set_spf(f"spf={result}(via {upstream.authserv_id})")
            return result == "pass"
        return None

    def _spf_route(self, local: str, rpd: str, until: float) -> bool:
        address = (self.client_address or "").strip()
        if not address:
            self._set_spf("spf=skipped(no client address)")
            return False
        try:
            ip = ipaddress.ip_address(address.removeprefix("IPv6:").strip("[]"))
        except ValueError:
            self._set_spf("spf=skipped(bad client address)")
            return False
        assert self._dns is not None
        querytime = until - time.monotonic()
        if querytime <= 0:
            self._set_spf("spf=temperror(budget exhausted)")
            return False
        self._dns.deadline = until
        token = _ACTIVE_DNS.set(self._dns)
        try:
            query = spf.query(
                i=str(ip),
                s=f"{local}@{rpd}",
                h=(self.helo or "").strip() or "unknown",
                strict=True,
                timeout=self.settings.dns_timeout,
                querytime=querytime,
            )
            # pyspf splits the sender at the first "@", wrong for a quoted local part.
            query.l, query.o, query.d = local or "postmaster", rpd, rpd
            result, _code, _explanation = query.check()
            problem = getattr(query, "prob", "") if result in ("permerror", "temperror") else ""
        except Exception as exc:  # pyspf asserts on some malformed policies
            result, problem = "permerror", f"internal error {type(exc).__name__}"
        finally:
            _ACTIVE_DNS.reset(token)
            self._dns.deadline = self.deadline
        if result == "temperror" and time.monotonic() >= until:
            problem = "budget exhausted"
        self._set_spf(f"spf={result}({_short(problem)})" if problem else f"spf={result}")
        return bool(result == "pass")

    # DKIM

    def _upstream_dkim(self, upstream: Upstream, rpd: str) -> bool:
        via = f"via {upstream.authserv_id}"
        for index, (result, domain, algorithm) in enumerate(upstream.dkim):
            signer = _normal_domain(domain) if domain else None
            if signer is None:
                self._set_dkim(index, f"dkim={result}({via})")
                continue
            outcome, notes = result, []
            alignment = _alignment(signer, rpd)
            if result == "pass" and (algorithm or "").strip().lower() == "rsa-sha1":
                outcome, notes = "policy", ["rsa-sha1"]
            elif result == "pass" and alignment == "public suffix":
                outcome, notes = "policy", [alignment]
            elif result == "pass" and alignment == "not aligned":
                notes = [alignment]
            elif result == "pass" and self._from_problem:
                outcome, notes = "policy", [self._from_problem]
            self._set_dkim(index, f"dkim={outcome}({', '.join([f'd={signer}', *notes, via])})")
            if outcome == "pass" and alignment in _ALIGNED:
                return True
        return False

    def _signatures(self, rpd: str) -> tuple[Any, list[_Signature]]:
        end = _END_OF_HEADER.search(self.raw)
        try:
            message = _HeaderDKIM(self.raw, *(end.span() if end else (len(self.raw), len(self.raw))))
        except Exception:
            self._set_dkim(0, "dkim=permerror(malformed message)")
            return None, []
        values = [value for name, value in message.headers if name.lower() == b"dkim-signature"]
        if not values:
            self._set_dkim(0, "dkim=none")
            return message, []
        signatures: list[_Signature] = []
        for index, value in enumerate(values):
            try:
                tags = dkim.util.parse_tag_value(value)
                domain = _normal_domain(tags[b"d"].decode("ascii"))
            except Exception:
                domain, tags = None, {}
            signature = _Signature(index, domain, tags)
            if domain is None:
                self._set_dkim(index, "dkim=permerror(malformed signature)")
                continue
            signature.alignment = _alignment(domain, rpd)
            signatures.append(signature)
        return message, signatures

    def _dkim_route(self, message: Any, signatures: list[_Signature]) -> bool:
        aligned = [s for s in signatures if s.alignment in _ALIGNED]
        others = [s for s in signatures if s.alignment not in _ALIGNED]
        looked_up = 0
        for signature in aligned:
            if self._from_problem:
                self._set_dkim(signature.index, _dkim_token("policy", signature, self._from_problem))
                continue
            if looked_up >= MAX_SIGNATURES:
                self._set_dkim(signature.index, _dkim_token("unchecked", signature, "limit"))
                continue
            result, details, used_dns = self._verify_signature(message, signature)
            looked_up += used_dns
            self._set_dkim(signature.index, _dkim_token(result, signature, *details))
            if result == "pass":
                return True
        # Not needed for the decision, but "pass, not aligned" is what an admin needs to see
        # to understand a drop (an ESP signing with its own domain); only while budget lasts.
        for signature in others:
            if signature.alignment == "public suffix":
                self._set_dkim(signature.index, _dkim_token("policy", signature, "public suffix"))
                continue
            if looked_up >= MAX_SIGNATURES or time.monotonic() >= self.deadline:
                self._set_dkim(signature.index, _dkim_token("unchecked", signature, "not aligned"))
                continue
            result, details, used_dns = self._verify_signature(message, signature)
            looked_up += used_dns
            self._set_dkim(signature.index, _dkim_token(result, signature, *details, "not aligned"))
        return False

    def _verify_signature(self, message: Any, signature: _Signature) -> tuple[str, list[str], int]:
        """(result, details, whether DNS was used) for one signature."""
        tags = signature.tags
        if tags.get(b"a", b"").strip().lower() == b"rsa-sha1":
            return "policy", ["rsa-sha1"], 0
        signed = {h.strip().lower() for h in tags.get(b"h", b"").split(b":")}
        if b"from" not in signed:
            return "policy", ["From not signed"], 0
        assert self._dns is not None
        resolver = self._dns
        if time.monotonic() >= self.deadline:
            return "unchecked", ["budget exhausted"], 0
        found: list[bool] = []

        def dnsfunc(name: bytes, timeout: float = 5.0) -> bytes | None:
            records = resolver.txt(name.decode("ascii", "replace"))
            found.append(bool(records))
            if records:
                _check_key_cost(name, records[0])
            return records[0] if records else None

        message.pk = None
        message.keysize = 0
        try:
            ok = message.verify(idx=signature.index, dnsfunc=dnsfunc)
        except _DnsTrouble as exc:
            return "temperror", [str(exc)], 1
        except _KeyRefused as exc:
            return "policy", [str(exc)], 1
        except dkim.ValidationError as exc:
            text = _short(str(exc))
            return (
                ("fail" if text.startswith("body hash mismatch") else "permerror"),
                [text],
                int(bool(found)),
            )
        except dkim.NaClNotFoundError:
            return "permerror", ["ed25519 not supported"], 1
        except Exception as exc:
            return "permerror", [_short(str(exc)) or type(exc).__name__], int(bool(found))
        if not ok:
            if not found or not found[0]:
                return "permerror", ["no key"], 1
            if message.pk is None:
                return "permerror", ["bad key"], 1
            return "fail", ["signature mismatch"], 1
        if message.ktag == b"rsa" and message.keysize < MIN_RSA_BITS:
            return "policy", [f"key {message.keysize} bits"], 1
        return "pass", [], 1


def _check_key_cost(name: bytes, record: bytes) -> None:
    if len(record) > _MAX_KEY_RECORD:
        raise _KeyRefused("key record too large")  # dkimpy's ASN.1 integer parsing is quadratic
    try:
        key, bits, kind, _tlsrpt = dkim.evaluate_pk(name, record)
    except Exception:
        return  # dkimpy reports unusable keys itself
    if kind == b"rsa" and bits > MAX_RSA_BITS:
        raise _KeyRefused(f"key {bits} bits")
    if kind == b"rsa" and int(key["publicExponent"]).bit_length() > _MAX_RSA_EXPONENT_BITS:
        raise _KeyRefused("RSA exponent too large")


def _aligned_signature_present(headers: Sequence[tuple[str, str]], rpd: str) -> bool:
    for name, value in headers:
        if name.strip().lower() == "dkim-signature":
            match = re.search(r"(?:^|;)\s*d\s*=\s*([^;\s]+)", value)
            signer = _normal_domain(match.group(1)) if match else None
            if signer and _alignment(signer, rpd) in _ALIGNED:
                return True
    return False


def _dkim_token(result: str, signature: _Signature, *details: str) -> str:
    return f"dkim={result}({', '.join([f'd={signature.domain}', *details])})"


def _short(text: str) -> str:
    """The first clause of a library message, printable, first letter lower-cased unless an acronym."""
    text = str(text).split(" (", 1)[0].split(": ", 1)[0].strip().rstrip(".")
    text = re.sub(r"[^\x20-\x7e]", "?", text)[:80]
    return text[:1].lower() + text[1:] if not text[1:2].isupper() else text
