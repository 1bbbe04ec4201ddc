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

This module orchestrates (the budget, the worker thread, the summary); the parts are in
``verify.dns`` (resolver), ``verify.spf``, ``verify.dkim``, ``verify.authres`` and
``verify.alignment``.

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

import ipaddress
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dkim
import dkim.util
import dns.resolver

from responder.config.settings import VerifySettings
from responder.mail.addresses import mailbox
from responder.mail.headers import header_span
from responder.mail.message import Inbound
from responder.observe import events
from responder.verify import alignment as align
from responder.verify.alignment import (
    ALIGNED,
    aligned_signature_present,
    normal_domain,
    split_sender,
)
from responder.verify.authres import Upstream, trusted_results, unfold
from responder.verify.dkim import (
    MAX_RSA_BITS,
    MIN_RSA_BITS,
    HeaderDKIM,
    Signature,
    check_signature,
    dkim_token,
)
from responder.verify.dns import Dns, make_resolver
from responder.verify.spf import check_host

__all__ = [
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "Upstream",
    "Verification",
    "trusted_results",
    "verify_sender",
]

# Each evaluated signature may cost a key lookup; a message can carry any number of them.
MAX_SIGNATURES = 5
# Time the worker gets past the DNS deadline to finish CPU work before the caller gives up on it.
_SLACK = 0.5
# dkimpy parses and canonicalizes every header line once per signature; real header blocks,
# long Received and ARC chains included, stay far below this.
_MAX_HEADER_BYTES = 1 << 20
_ROUTES = {"aligned": ("spf", "dkim"), "spf": ("spf",), "dkim": ("dkim",)}


@dataclass(frozen=True)
class Verification:
    """Whether the envelope sender is authenticated, and what was found (see the module doc)."""

    verified: bool
    summary: str


def verify_sender(
    inbound: Inbound, settings: VerifySettings, resolver: dns.resolver.Resolver | None = None
) -> Verification:
    """Decide whether the return path of ``inbound`` (a non-null envelope sender) is verified.

    Never raises. The checks run in a worker thread so that the caller regains control after
    ``settings.budget`` seconds even if parsing a huge message or DNS overruns; a worker still
    running then is abandoned (it is a daemon thread and only ever winds down). ``resolver`` is
    the long-lived one of a service; without it the check builds its own.

    Done once per message, sender, client and HELO: the recipients of one LMTP transaction share
    the message (``Inbound.for_recipient``), and the second to ask waits for the first's result.
    """
    try:
        env = inbound.envelope
        key = (_MEMO, inbound.return_path, env.client_address, env.helo, settings)
        with _MEMO_LOCK:
            memo = inbound.shared.get(key)
            if not isinstance(memo, _Memo):
                memo = inbound.shared[key] = _Memo()
        with memo.lock:
            if memo.result is None:
                memo.result = _verify(inbound, settings, resolver)
                events.observer.verified(memo.result.summary)
            return memo.result
    except Exception as exc:  # the gate must fail closed, never crash the hook
        return Verification(False, f"verify=error({type(exc).__name__})")


_MEMO = "responder.verify.sender"
_MEMO_LOCK = threading.Lock()


class _Memo:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.result: Verification | None = None


def _verify(
    inbound: Inbound, settings: VerifySettings, resolver: dns.resolver.Resolver | None
) -> Verification:
    try:
        if settings.require == "off":
            return Verification(True, "verify=off")
        if settings.require not in _ROUTES:
            return Verification(False, f"verify=error(unknown require {settings.require!r})")
        budget = max(0.0, float(settings.budget))
        env = inbound.envelope
        check = _Check(
            inbound=inbound,
            sender=inbound.return_path,
            client_address=env.client_address or None,
            helo=env.helo or None,
            settings=settings,
            deadline=time.monotonic() + budget,
            resolver=resolver,
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


# --- the check of one message ------------------------------------------------------------------


class _Check:
    """Everything about verifying one message; runs in the worker thread."""

    def __init__(
        self,
        inbound: Inbound,
        sender: str,
        client_address: str | None,
        helo: str | None,
        settings: VerifySettings,
        deadline: float,
        resolver: dns.resolver.Resolver | None = None,
    ) -> None:
        self.inbound = inbound
        self.raw = inbound.raw
        self.resolver = resolver
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
        self._dns: Dns | None = None
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
        split = split_sender(self.sender)
        if split is None:
            self._note("sender=invalid(no usable domain)")
            return False
        local, rpd = split
        # The fields the rules read (headers.parse_fields), unfolded for the Authentication-Results parser.
        headers = [(name, unfold(value)) for name, value in self.inbound.fields]
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
            resolver = self.resolver or make_resolver(self.settings)
        except Exception as exc:
            reason = "bad dns_servers" if isinstance(exc, ValueError) else f"dns error {type(exc).__name__}"
            if spf_pending:
                self._set_spf(f"spf=temperror({reason})")
            if dkim_pending:
                signed = any(name.strip().lower() == "dkim-signature" for name, _ in headers)
                self._set_dkim(0, f"dkim=temperror({reason})" if signed else "dkim=none")
            return False
        self._dns = Dns(resolver, self.settings.dns_timeout, self.deadline)

        if spf_pending:
            # Leave the DKIM route half of what remains if an aligned signature waits for a check.
            now = time.monotonic()
            waiting = dkim_pending and aligned_signature_present(headers, rpd)
            share = now + (self.deadline - now) / 2 if waiting else self.deadline
            if self._spf_route(local, rpd, share):
                return True
        if dkim_pending:
            if not any(name.strip().lower() == "dkim-signature" for name, _ in headers):
                self._set_dkim(0, "dkim=none")
                return False
            if len(self.inbound.header) > _MAX_HEADER_BYTES:
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
        if mailbox(found[0]) != mailbox(self.sender):
            return "From is not the sender"
        return None

    # SPF

    def _upstream_spf(self, upstream: Upstream, rpd: str) -> bool | None:
        for result, mailfrom, _helo in upstream.spf:
            if not mailfrom:
                continue  # a HELO-only result says nothing about the return path
            if normal_domain(mailfrom.rpartition("@")[2]) != rpd:
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
        try:
            helo = (self.helo or "").strip() or "unknown"
            result, problem = check_host(
                self._dns, str(ip), local, rpd, helo, self.settings.dns_timeout, querytime
            )
        finally:
            self._dns.deadline = self.deadline
        if result == "temperror" and time.monotonic() >= until:
            problem = "budget exhausted"
        self._set_spf(f"spf={result}({problem})" if problem else f"spf={result}")
        return bool(result == "pass")

    # DKIM

    def _upstream_dkim(self, upstream: Upstream, rpd: str) -> bool:
        via = f"via {upstream.authserv_id}"
        for index, (result, domain, algorithm) in enumerate(upstream.dkim):
            signer = normal_domain(domain) if domain else None
            if signer is None:
                self._set_dkim(index, f"dkim={result}({via})")
                continue
            outcome, notes = result, []
            alignment = align.alignment(signer, rpd)
            if result == "pass" and (algorithm or "").strip().lower() == "rsa-sha1":
                outcome, notes = "policy", ["rsa-sha1"]
            elif result == "pass" and alignment == "public suffix":
                outcome, notes = "policy", [alignment]
            elif result == "pass" and alignment == "not aligned":
                notes = [alignment]
            elif result == "pass" and self._from_problem:
                outcome, notes = "policy", [self._from_problem]
            self._set_dkim(index, f"dkim={outcome}({', '.join([f'd={signer}', *notes, via])})")
            if outcome == "pass" and alignment in ALIGNED:
                return True
        return False

    def _signatures(self, rpd: str) -> tuple[Any, list[Signature]]:
        try:
            message = HeaderDKIM(self.raw, *header_span(self.raw))
        except Exception:
            self._set_dkim(0, "dkim=permerror(malformed message)")
            return None, []
        values = [value for name, value in message.headers if name.lower() == b"dkim-signature"]
        if not values:
            self._set_dkim(0, "dkim=none")
            return message, []
        signatures: list[Signature] = []
        for index, value in enumerate(values):
            try:
                tags = dkim.util.parse_tag_value(value)
                domain = normal_domain(tags[b"d"].decode("ascii"))
            except Exception:
                domain, tags = None, {}
            signature = Signature(index, domain, tags)
            if domain is None:
                self._set_dkim(index, "dkim=permerror(malformed signature)")
                continue
            signature.alignment = align.alignment(domain, rpd)
            signatures.append(signature)
        return message, signatures

    def _dkim_route(self, message: Any, signatures: list[Signature]) -> bool:
        aligned = [s for s in signatures if s.alignment in ALIGNED]
        others = [s for s in signatures if s.alignment not in ALIGNED]
        looked_up = 0
        for signature in aligned:
            if self._from_problem:
                self._set_dkim(signature.index, dkim_token("policy", signature, self._from_problem))
                continue
            if looked_up >= MAX_SIGNATURES:
                self._set_dkim(signature.index, dkim_token("unchecked", signature, "limit"))
                continue
            assert self._dns is not None
            result, details, used_dns = check_signature(message, signature, self._dns, self.deadline)
            looked_up += used_dns
            self._set_dkim(signature.index, dkim_token(result, signature, *details))
            if result == "pass":
                return True
        # Not needed for the decision, but "pass, not aligned" is what an admin needs to see
        # to understand a drop (an ESP signing with its own domain); only while budget lasts.
        for signature in others:
            if signature.alignment == "public suffix":
                self._set_dkim(signature.index, dkim_token("policy", signature, "public suffix"))
                continue
            if looked_up >= MAX_SIGNATURES or time.monotonic() >= self.deadline:
                self._set_dkim(signature.index, dkim_token("unchecked", signature, "not aligned"))
                continue
            assert self._dns is not None
            result, details, used_dns = check_signature(message, signature, self._dns, self.deadline)
            looked_up += used_dns
            self._set_dkim(signature.index, dkim_token(result, signature, *details, "not aligned"))
        return False
