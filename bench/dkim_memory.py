"""Peak RSS of ``responder deliver`` on one large DKIM-signed message, as ``/usr/bin/time -v`` reports it.

Not a test: it measures. It signs a message of ``--megabytes`` MB (base64 lines, the shape of a large
attachment) with a fresh 2048-bit key, serves the key from the loopback DNS server of the tests, and
runs the hook the way Postfix's pipe(8) does, message on a pipe, with ``require = "dkim"`` and a
loopback SMTP sink as the relay; then the same for a message of a few lines (the floor).

    python bench/dkim_memory.py --megabytes 60 --canonicalization relaxed
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.dnsserver import DNSServer
from tests.helpers import write_config
from tests.sink import SmtpSink

SENDER = "bob@example.org"
RECIPIENT = "alice@example.com"


def signed_message(pem: bytes, megabytes: float, canonicalization: bytes) -> bytes:
    line = base64.b64encode(os.urandom(57)) + b"\r\n"
    message = (
        f"From: Bob <{SENDER}>\r\nTo: {RECIPIENT}\r\nSubject: the archive\r\n"
        f"Message-ID: <{megabytes:g}mb@example.org>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + line * max(1, int(megabytes * 1024 * 1024) // len(line))
    field = dkim.sign(
        message,
        b"sel",
        b"example.org",
        pem,
        canonicalize=(canonicalization, canonicalization),
        include_headers=[b"from", b"to", b"subject", b"message-id"],
    )
    return bytes(field) + message


def peak_rss(config: Path, message: bytes) -> tuple[int, str]:
    """(maximum resident set size in KiB, the hook's decision line)."""
    argv = [sys.executable, "-m", "responder", "--config", str(config), "deliver"]
    result = subprocess.run(
        ["/usr/bin/time", "-v", *argv, "--sender", SENDER, "--recipient", RECIPIENT],
        input=message,
        capture_output=True,
        check=True,
    )
    err = result.stderr.decode(errors="replace")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    decision = next((line for line in err.splitlines() if "action=" in line), "?")
    return int(found.group(1)) if found else -1, decision.split("action=", 1)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--megabytes", type=float, default=60)
    parser.add_argument("--canonicalization", choices=("relaxed", "simple"), default="relaxed")
    args = parser.parse_args()
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    canonicalization = args.canonicalization.encode()
    with DNSServer() as server, tempfile.TemporaryDirectory() as directory:
        server.add_txt("sel._domainkey.example.org", f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}")
        sink = SmtpSink().start()
        try:
            config = write_config(
                Path(directory) / "responder.toml",
                {
                    "database": {"url": f"sqlite:///{directory}/responder.sqlite3"},
                    "smtp": {"port": sink.port, "hostname": "mx.example.net"},
                    "reply": {"min_interval": "0s"},
                    "verify": {"require": "dkim", "dns_servers": [server.address], "budget": "60s"},
                    "deliver": {"deadline": "120s"},
                },
            )
            base = [sys.executable, "-m", "responder", "--config", str(config)]
            subprocess.run([*base, "db", "upgrade"], check=True, capture_output=True)
            vacation = ["vacation", "set", RECIPIENT, "--message", "away", "--interval", "0s"]
            subprocess.run([*base, *vacation], check=True, capture_output=True)
            for label, size in (("floor", 0.0), (f"{args.megabytes:g} MB", args.megabytes)):
                rss, decision = peak_rss(config, signed_message(pem, size, canonicalization))
                print(f"{label:>8} {args.canonicalization}: peak RSS {rss / 1024:7.1f} MiB  {decision}")
        finally:
            sink.stop()


if __name__ == "__main__":
    main()
