"""A large DKIM-signed message costs the hook about one copy of itself, not several."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import ConfigFactory
from tests.dnsserver import DNSServer
from tests.helpers import REPO, deliver_args, hook_env, vacation_set
from tests.sink import SmtpSink

ALICE = "alice@example.com"
BOB = "bob@example.org"
SIZE = 20 * 1024 * 1024


@pytest.fixture
def signer() -> Iterator[tuple[bytes, DNSServer]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with DNSServer() as server:
        server.add_txt("sel._domainkey.example.org", f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}")
        yield pem, server


def _signed(pem: bytes, body: bytes) -> bytes:
    message = (
        f"From: Bob <{BOB}>\r\nTo: {ALICE}\r\nSubject: the archive\r\n"
        f"Message-ID: <{len(body)}@example.org>\r\n"
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + body
    field = dkim.sign(
        message, b"sel", b"example.org", pem, canonicalize=(b"relaxed", b"relaxed"), include_headers=[b"from"]
    )
    return bytes(field) + message


# The hook's peak RSS as /usr/bin/time measures it: Linux counts the RSS of the process a child
# was forked from into the child's peak, so the hook is started by a small process of its own.
_MEASURE = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
_pid, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _peak_rss_kib(config: Path, message: bytes, log: Path) -> int:
    """Run the hook as a pipe(8) does (the message on a pipe); its peak RSS in KiB, after exit 0."""
    argv = [sys.executable, "-m", "responder", "--config", str(config), *deliver_args(BOB, ALICE)]
    with log.open("wb") as stderr:
        result = subprocess.run(
            [sys.executable, "-c", _MEASURE, *argv],
            input=message,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=hook_env(),
            cwd=REPO,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, log.read_text(errors="replace")
    return int(result.stdout)


def test_a_signed_message_costs_about_one_copy(
    make_config: ConfigFactory, sink: SmtpSink, signer: tuple[bytes, DNSServer], tmp_path: Path
) -> None:
    pem, server = signer
    config = make_config(
        verify={"require": "dkim", "dns_servers": [server.address], "budget": "60s"},
        deliver={"deadline": "120s"},
        reply={"min_interval": "0s"},
    )
    vacation_set(config, ALICE, "--message", "away", "--interval", "0s")
    line = b"QUJD" * 19 + b"\r\n"
    floor = _peak_rss_kib(config, _signed(pem, line), tmp_path / "small.log")
    big = _peak_rss_kib(config, _signed(pem, line * (SIZE // len(line))), tmp_path / "big.log")
    assert len(sink.wait_for(2)) == 2
    assert b"dkim=pass(d=example.org)" in (tmp_path / "big.log").read_bytes()
    # dkimpy alone makes five whole copies of the body; a bound well below two copies.
    assert (big - floor) * 1024 < 1.5 * SIZE, f"{big - floor} KiB over the floor of {floor} KiB"
