"""DKIM-sign a composed response as its From domain: keys read once per process, warnings once an hour."""

from __future__ import annotations

import dataclasses
import logging
import os
import quopri
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim

from responder.config.settings import DkimSettings
from responder.mail.dkimkeys import (
    SIGNATURE_ALGORITHM,
    KeyMissing,
    KeyProblem,
    SigningKey,
    dkim_domain,
    read_key,
)
from responder.mail.reply import Outgoing

log = logging.getLogger("responder")

# One warning per domain within this time, across the processes of the host (a stamp file).
WARN_EVERY = 3600.0
# A key that was missing or refused is looked for again after this long (a service picks up a new key).
RETRY_PROBLEM = 60.0
CANONICALIZATION = (b"relaxed", b"relaxed")
_STAMPS = ".warned"


@dataclass(frozen=True)
class Signed:
    """The response, signed when ``signed``; ``note`` says what was not done as configured."""

    outgoing: Outgoing
    signed: bool
    note: str = ""


class Signer:
    """Signs responses with the keys under ``dkim.keys_dir``; shared by the threads of a process."""

    def __init__(self, settings: DkimSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._keys: dict[tuple[str, str, str], SigningKey | tuple[KeyProblem, float]] = {}
        self._warned: dict[str, float] = {}
        # Keys whose published DNS record was found not to match (a service looks at start).
        self._unpublished: dict[tuple[str, str, str], str] = {}
        self._lock = threading.Lock()

    def key(self, domain: str, selector: str, algorithm: str) -> SigningKey:
        """The key, read on first use and kept; KeyProblem (remembered for a minute) when unusable."""
        index = (domain, selector, algorithm)
        with self._lock:
            known = self._keys.get(index)
            if isinstance(known, SigningKey):
                return known
            if known is not None and self.clock() - known[1] < RETRY_PROBLEM:
                raise known[0]
            try:
                key = read_key(self.settings.keys_dir, domain, selector, algorithm)
            except KeyProblem as exc:
                self._keys[index] = (exc, self.clock())
                raise
            self._keys[index] = key
            return key

    def warm(self) -> list[str]:
        """Read every key of the configured selectors now (a service, before taking mail); the problems."""
        problems: list[str] = []
        base = Path(self.settings.keys_dir)
        try:
            domains = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as exc:
            return [f"dkim.keys_dir {base} cannot be listed: {exc.strerror}"]
        for domain in domains:
            for selector, algorithm in self._selectors():
                try:
                    self.key(domain, selector, algorithm)
                except KeyMissing:
                    pass
                except KeyProblem as exc:
                    problems.append(str(exc))
        return problems

    def check_records(self, lookup: Callable[[str], list[bytes]]) -> list[str]:
        """Compare the DNS record of every key read so far; what does not match, said and remembered.

        ``lookup`` returns the TXT texts at a name and raises for a lookup that failed, which
        leaves that key unjudged. A key that does not match is still used (a receiver then treats
        the response as unsigned, no worse than not signing), and each decision's detail says so.
        """
        from responder.mail.dkimkeys import MATCH, compare_records, record_name, record_text

        with self._lock:
            keys = [key for key in self._keys.values() if isinstance(key, SigningKey)]
        problems: list[str] = []
        for key in keys:
            name = record_name(key.domain, key.selector)
            try:
                texts = lookup(name)
            except Exception:  # noqa: S112 - DNS down: nothing known, nothing said
                continue
            verdict, found = compare_records(key, texts)
            if verdict == MATCH:
                continue
            with self._lock:
                self._unpublished[(key.domain, key.selector, key.algorithm)] = (
                    f"the {key.algorithm} key's DNS record at {name}: {verdict}"
                )
            problems.append(
                f"{verdict} at {name} ({found}): receivers cannot verify the {key.algorithm} signatures "
                f"of {key.domain}; publish {record_text(key)} (see responder dkim check {key.domain})"
            )
        return problems

    def _selectors(self) -> list[tuple[str, str]]:
        found = [(self.settings.selector, "rsa")]
        if self.settings.ed25519:
            found.append((self.settings.ed25519_selector, "ed25519"))
        return found

    def sign(self, outgoing: Outgoing) -> Signed:
        """``outgoing`` with a DKIM-Signature by its From domain (and an ed25519 one where configured)."""
        message = outgoing.message
        domain = from_domain(message)
        if domain is None:
            return self._unsigned(outgoing, "", "the From field names no one domain to sign as")
        seven_bit(message)
        data = message.as_bytes(policy=policy.SMTP)
        headers = signed_headers(message, self.settings)
        signatures: list[bytes] = []
        notes: list[str] = []
        for selector, algorithm in self._selectors():
            try:
                key = self.key(domain, selector, algorithm)
                signatures.append(sign_bytes(data, key, headers))
                unpublished = self._unpublished.get((domain, selector, algorithm))
                if unpublished:
                    notes.append(unpublished)
            except (KeyProblem, dkim.DKIMException) as exc:
                if algorithm == "rsa":
                    return self._unsigned(outgoing, domain, _problem(exc))
                notes.append(f"no ed25519 signature: {_problem(exc)}")
                self._warn(domain, f"responses from {domain} get no ed25519 signature: {_problem(exc)}")
        signed = dataclasses.replace(outgoing, data=b"".join(signatures) + data)
        return Signed(signed, True, "; ".join(notes))

    def _unsigned(self, outgoing: Outgoing, domain: str, why: str) -> Signed:
        what = "dropped (dkim.require)" if self.settings.require else "sent unsigned"
        self._warn(domain, f"responses from {domain or 'this From'} are {what}: {why}")
        return Signed(outgoing, False, f"not DKIM-signed: {why}")

    def _warn(self, domain: str, text: str) -> None:
        now = self.clock()
        with self._lock:
            last = self._warned.get(domain)
            if last is not None and now - last < WARN_EVERY:
                return
            self._warned[domain] = now
        if _stamp_is_fresh(Path(self.settings.keys_dir), domain or "-"):
            return  # another process of this host warned within the hour
        log.warning("%s", text)


# Asserted, not assumed: if dkimpy renamed its signing primitive, replacing a new name would leave the
# slow one in use silently; better that importing this module fails.
if not callable(getattr(dkim, "RSASSA_PKCS1_v1_5_sign", None)):
    raise ImportError("dkimpy has no RSASSA_PKCS1_v1_5_sign to hand to OpenSSL")
_openssl_keys: dict[int, Any] = {}


def _openssl_rsa_sign(digest: Any, private_key: dict[str, int]) -> bytes:
    """dkimpy's RSASSA-PKCS1-v1_5 signature (RFC 8017 8.2.1) computed by OpenSSL, with the same result.

    dkimpy computes it in Python: about 8 ms of CPU for a 2048-bit key, holding the interpreter lock
    the service's worker threads share. OpenSSL takes well under one and releases the lock.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

    key = _openssl_keys.get(private_key["modulus"])
    if key is None:
        public = rsa.RSAPublicNumbers(private_key["publicExponent"], private_key["modulus"])
        key = rsa.RSAPrivateNumbers(
            p=private_key["prime1"],
            q=private_key["prime2"],
            d=private_key["privateExponent"],
            dmp1=private_key["exponent1"],
            dmq1=private_key["exponent2"],
            iqmp=private_key["coefficient"],
            public_numbers=public,
        ).private_key()
        _openssl_keys[private_key["modulus"]] = key
    if digest.name.lower() != "sha256":  # responses are signed rsa-sha256 only (RFC 8301)
        raise ValueError(f"not an rsa-sha256 digest: {digest.name}")
    signature: bytes = key.sign(digest.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    return signature


def use_openssl_for_rsa() -> None:
    """Sign RSA through OpenSSL from now on, in this process (a service: it pays the import once).

    Not for the pipe hook: importing OpenSSL's bindings costs it more than the one signature saves.
    """
    dkim.RSASSA_PKCS1_v1_5_sign = _openssl_rsa_sign


def _problem(exc: Exception) -> str:
    if isinstance(exc, KeyProblem):
        return str(exc)
    return f"dkimpy cannot sign: {exc}"


def _stamp_is_fresh(keys_dir: Path, domain: str) -> bool:
    """Whether a process warned about ``domain`` within WARN_EVERY; else mark that this one does.

    The pipe hook is one process per message: without the stamp it would warn for every one.
    A stamp that cannot be written (a read-only keys_dir) means a warning every time, never none.
    """
    stamp = keys_dir / _STAMPS / domain
    try:
        if time.time() - stamp.stat().st_mtime < WARN_EVERY:
            return True
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        # Stamps are the responder user's (the owner of keys_dir): an admin's explain leaves none.
        if keys_dir.stat().st_uid != os.geteuid():
            return False
        stamp.parent.mkdir(mode=0o700, exist_ok=True)
        stamp.touch(mode=0o600)
        os.utime(stamp)
    except OSError:
        pass
    return False


def from_domain(message: EmailMessage) -> str | None:
    """The d= domain: the domain of the one address in From."""
    try:
        field = message["From"]
        addresses: tuple[Address, ...] = field.addresses if field is not None else ()
    except (AttributeError, IndexError, ValueError):
        return None
    if len(addresses) != 1 or not addresses[0].domain:
        return None
    return dkim_domain(addresses[0].domain)


def signed_headers(message: EmailMessage, settings: DkimSettings) -> list[bytes]:
    """h=: each configured field as often as it occurs, the oversigned ones once more (RFC 6376 8.15)."""
    present: dict[str, int] = {}
    for name in message:
        present[name.lower()] = present.get(name.lower(), 0) + 1
    oversign = {name.lower() for name in settings.oversign}
    names: list[bytes] = []
    for name in settings.headers:
        lower = name.lower()
        count = present.get(lower, 0) + (1 if lower in oversign else 0)
        names += [lower.encode("ascii")] * count
    for lower in sorted(oversign - {name.lower() for name in settings.headers}):
        names += [lower.encode("ascii")] * (present.get(lower, 0) + 1)
    return names


def sign_bytes(data: bytes, key: SigningKey, headers: list[bytes]) -> bytes:
    """The DKIM-Signature field (ending in CRLF) of ``data`` with ``key``, relaxed/relaxed."""
    signer = dkim.DKIM(data, linesep=b"\r\n")
    field: bytes = signer.sign(
        key.selector.encode("ascii"),
        key.domain.encode("ascii"),
        key.private,
        signature_algorithm=SIGNATURE_ALGORITHM[key.algorithm],
        canonicalize=CANONICALIZATION,
        include_headers=headers,
    )
    return field


def seven_bit(message: EmailMessage) -> None:
    """Re-encode 8-bit leaf parts as quoted-printable, before signing (RFC 6376 section 5.3).

    A relay that meets a next hop without 8BITMIME converts 8-bit bodies, which breaks the body
    hash; quoted-printable passes every relay unchanged.
    """
    for part in message.walk():
        if part.is_multipart():
            continue
        if str(part.get("Content-Transfer-Encoding", "")).strip().lower() not in ("8bit", "binary"):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        del part["Content-Transfer-Encoding"]
        part.set_payload(quopri.encodestring(payload.replace(b"\r\n", b"\n")).decode("ascii"))
        part["Content-Transfer-Encoding"] = "quoted-printable"
