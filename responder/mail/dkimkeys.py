"""DKIM signing keys on disk: the file layout, the owner-only check, generation and the DNS record."""

from __future__ import annotations

import base64
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import dkim.crypto
import dkim.util

ALGORITHMS = ("rsa", "ed25519")
SIGNATURE_ALGORITHM = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}
MIN_RSA_BITS = 1024  # RFC 8301: verifiers refuse smaller keys
MAX_KEY_FILE = 64 * 1024
# The DER of a PKCS#8 ed25519 private key (RFC 8410) is this prefix, then the 32-byte seed.
_ED25519_PKCS8 = bytes.fromhex("302e020100300506032b657004220420")


class KeyProblem(Exception):
    """A key that cannot be used for signing; the message says what is wrong and what to do."""


class KeyMissing(KeyProblem):
    """There is no key file for the domain and selector."""


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: str
    path: Path
    # As dkimpy's sign() takes it: the PEM for RSA, the base64 seed for ed25519.
    private: bytes
    public: bytes  # the p= value of the DNS record, base64


def key_path(keys_dir: str | Path, domain: str, selector: str, algorithm: str) -> Path:
    """``KEYS_DIR/DOMAIN/SELECTOR.ALGORITHM.pem``, the domain in lower-case A-label form."""
    return Path(keys_dir) / domain.lower() / f"{selector}.{algorithm}.pem"


def dkim_domain(domain: str) -> str | None:
    """The A-label, lower-case form of a mail domain for d= and the key's directory, or None."""
    text = domain.strip().rstrip(".")
    try:
        alabel = text.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None
    labels = alabel.split(".")
    if len(labels) < 2 or not all(
        0 < len(label) <= 63
        and all(c.isalnum() or c in "-_" for c in label)
        and not label.startswith("-")
        and not label.endswith("-")
        for label in labels
    ):
        return None
    return alabel


def read_key(keys_dir: str | Path, domain: str, selector: str, algorithm: str) -> SigningKey:
    """The key for ``domain`` and ``selector``; KeyProblem when it is missing, exposed or unreadable."""
    path = key_path(keys_dir, domain, selector, algorithm)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
    except FileNotFoundError:
        raise KeyMissing(f"no {algorithm} key {path}") from None
    except OSError as exc:
        raise KeyProblem(f"key {path} cannot be read by uid {os.geteuid()}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise KeyProblem(f"key {path} is not a regular file")
        if info.st_mode & 0o077:
            # A key others can read can sign for the domain: refused, like ssh refuses such keys.
            raise KeyProblem(
                f"key {path} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"only the responder user may read it: chmod 600 {path}"
            )
        data = handle.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise KeyProblem(f"key {path} is too large to be a key")
    private, public = parse_key(data, algorithm, path)
    return SigningKey(domain, selector, algorithm, path, private, public)


def _pem_body(data: bytes, label: bytes) -> bytes | None:
    begin, end = b"-----BEGIN " + label + b"-----", b"-----END " + label + b"-----"
    start = data.find(begin)
    stop = data.find(end, start + 1)
    if start < 0 or stop < 0:
        return None
    try:
        return base64.b64decode(b"".join(data[start + len(begin) : stop].split()), validate=True)
    except ValueError:
        return None


def parse_key(data: bytes, algorithm: str, path: Path | str = "the key") -> tuple[bytes, bytes]:
    """(the private key as dkimpy signs with it, the public key as the DNS record's p= value)."""
    if algorithm == "ed25519":
        der = _pem_body(data, b"PRIVATE KEY")
        if der is None or len(der) != 48 or not der.startswith(_ED25519_PKCS8):
            raise KeyProblem(f"{path} is not an unencrypted PKCS#8 PEM ed25519 private key")
        import nacl.signing

        seed = der[len(_ED25519_PKCS8) :]
        public = bytes(nacl.signing.SigningKey(seed).verify_key)
        return base64.b64encode(seed), base64.b64encode(public)
    # dkimpy reads PKCS#1 and PKCS#8 PEM; its own parser is what signs, so it is what must accept it.
    normal = data.replace(b"\r\n", b"\n")
    try:
        key = dkim.crypto.parse_pem_private_key(normal)
    except (dkim.crypto.UnparsableKeyError, ValueError, IndexError, TypeError) as exc:
        raise KeyProblem(f"{path} is not an unencrypted PEM RSA private key ({exc})") from None
    bits = int(key["modulus"]).bit_length()
    if bits < MIN_RSA_BITS:
        raise KeyProblem(f"{path} is an RSA key of {bits} bits; receivers refuse fewer than {MIN_RSA_BITS}")
    return normal, base64.b64encode(_rsa_public_der(int(key["modulus"]), int(key["publicExponent"])))


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _der_int(n: int) -> bytes:
    return _der(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big"))


def _rsa_public_der(modulus: int, exponent: int) -> bytes:
    """SubjectPublicKeyInfo of an RSA key (RFC 5280, RFC 8017), the form DKIM records publish."""
    rsa_key = _der(0x30, _der_int(modulus) + _der_int(exponent))
    algorithm = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + b"\x05\x00")
    return _der(0x30, algorithm + _der(0x03, b"\x00" + rsa_key))


def generate(algorithm: str, bits: int = 2048) -> bytes:
    """A new private key as unencrypted PKCS#8 PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_key(
    keys_dir: str | Path, domain: str, selector: str, algorithm: str, pem: bytes, force: bool
) -> Path:
    """Write ``pem`` owner-only into the layout, owned like ``keys_dir`` (the responder user's).

    Written as root, a key root owns would be unreadable for the responder: the file and its
    domain directory take the owner and group of ``keys_dir``.
    """
    base = Path(keys_dir)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = base.stat()
    path = key_path(base, domain, selector, algorithm)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; --force replaces it (and the DNS record must change too)")
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        if os.geteuid() == 0:
            os.chown(path.parent, owner.st_uid, owner.st_gid)
            os.chown(temporary, owner.st_uid, owner.st_gid)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def record_text(key: SigningKey) -> str:
    """The TXT record's text: ``v=DKIM1; k=rsa; p=...``."""
    return f"v=DKIM1; k={key.algorithm}; p={key.public.decode('ascii')}"


def record_name(domain: str, selector: str) -> str:
    return f"{selector}._domainkey.{domain}"


def txt_strings(text: str) -> list[str]:
    """``text`` cut into the at most 255-octet character-strings a TXT record is made of."""
    data = text.encode("ascii")
    return [data[i : i + 255].decode("ascii") for i in range(0, len(data), 255)] or [""]


def zone_line(key: SigningKey) -> str:
    """The record as a zone file line (BIND syntax), every string quoted."""
    strings = " ".join(f'"{s}"' for s in txt_strings(record_text(key)))
    return f"{record_name(key.domain, key.selector)}. IN TXT ( {strings} )"


MATCH = "match"
MISMATCH = "mismatch"
NO_RECORD = "no record"
NOT_DKIM = "not a DKIM record"


def compare_records(key: SigningKey, texts: list[bytes]) -> tuple[str, str]:
    """(one of MATCH, MISMATCH, NO_RECORD, NOT_DKIM; what was found) for the TXT texts at the name."""
    if not texts:
        return NO_RECORD, "no TXT record"
    found: list[str] = []
    for text in texts:
        tags = _dkim_tags(text)
        if tags is None:
            continue
        kind = tags.get(b"k", b"rsa").decode("ascii", "replace").strip().lower()
        public = b"".join(tags.get(b"p", b"").split())
        if not public:
            found.append("a revoked key (empty p=)")
        elif kind != key.algorithm:
            found.append(f"a {kind} key, not {key.algorithm}")
        elif _same_public(key, public):
            return MATCH, f"the published {kind} key is this key"
        else:
            found.append(f"another {kind} key")
    if not found:
        return NOT_DKIM, "TXT " + "; ".join(repr(t.decode("ascii", "replace")[:60]) for t in texts)
    return MISMATCH, "published: " + "; ".join(found)


def _dkim_tags(text: bytes) -> dict[bytes, bytes] | None:
    """The tags of a DKIM key record (RFC 6376 section 3.6.1), or None when it is something else."""
    try:
        tags: dict[bytes, bytes] = dkim.util.parse_tag_value(text)
    except (dkim.util.InvalidTagValueList, ValueError):
        return None
    version = tags.get(b"v")
    if version is not None and version.strip() != b"DKIM1":
        return None
    if version is None and b"p" not in tags:
        return None
    return tags if b"p" in tags else None


def _same_public(key: SigningKey, published: bytes) -> bool:
    try:
        theirs = base64.b64decode(published, validate=True)
    except ValueError:
        return False
    ours = base64.b64decode(key.public)
    if key.algorithm == "ed25519":
        return theirs == ours
    # Published as SubjectPublicKeyInfo or as a bare RSAPublicKey: compare the numbers.
    try:
        a, b = dkim.crypto.parse_public_key(theirs), dkim.crypto.parse_public_key(ours)
    except (dkim.crypto.UnparsableKeyError, ValueError, IndexError, TypeError):
        return False
    return bool(a["modulus"] == b["modulus"] and a["publicExponent"] == b["publicExponent"])
