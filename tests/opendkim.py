"""OpenDKIM's own tools (Debian opendkim-tools) as an independent verifier, with DNS the test controls.

``opendkim-testmsg`` and ``opendkim-testkey`` resolve through the C library's resolver, which reads
``/etc/resolv.conf`` and asks port 53. They run here in network and mount namespaces of their own
(``unshare``, as root): inside, a resolv.conf naming 127.0.0.1 is mounted over /etc/resolv.conf and
a tests.dnsserver instance with the test's TXT records answers on port 53 of the namespace's own
loopback. Nothing of the host (its ports, its files) is touched.

Run as ``python -m tests.opendkim SPEC.json`` inside the namespaces; ``run_opendkim`` does that.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTMSG = "/usr/sbin/opendkim-testmsg"
TESTKEY = "/usr/sbin/opendkim-testkey"


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def missing() -> str | None:
    """Why OpenDKIM cannot be run here, or None."""
    if not os.path.exists(TESTMSG) or not os.path.exists(TESTKEY):
        return "opendkim-tools is not installed (run .ci/install-mail-servers)"
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "OpenDKIM's DNS is redirected in a namespace of its own, which needs root and unshare"
    return None


def run_opendkim(command: Sequence[str], records: Mapping[str, Sequence[str]], stdin: bytes = b"") -> Result:
    """Run ``command`` with the TXT ``records`` ({name: [text, ...]}) as the only DNS there is."""
    with tempfile.TemporaryDirectory(prefix="responder-opendkim-") as work:
        base = Path(work)
        (base / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:2\n")
        (base / "stdin").write_bytes(stdin)
        spec = {
            "resolv": str(base / "resolv.conf"),
            "stdin": str(base / "stdin"),
            "records": {name: list(texts) for name, texts in records.items()},
            "command": list(command),
        }
        (base / "spec.json").write_text(json.dumps(spec))
        done = subprocess.run(
            [
                "unshare",
                "--net",
                "--mount",
                "--",
                sys.executable,
                "-m",
                "tests.opendkim",
                str(base / "spec.json"),
            ],
            cwd=REPO,
            capture_output=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the namespace runner failed: {done.stderr.decode(errors='replace')}")
        result = json.loads(done.stdout)
        return Result(result["returncode"], result["stdout"], result["stderr"])


def _inside(spec_path: str) -> None:
    from tests.dnsserver import DNSServer

    spec = json.loads(Path(spec_path).read_text())
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["mount", "--bind", spec["resolv"], "/etc/resolv.conf"], check=True)
    with DNSServer(port=53) as server:
        for name, texts in spec["records"].items():
            server.add_txt(name, *texts)
        done = subprocess.run(
            spec["command"],
            input=Path(spec["stdin"]).read_bytes(),
            capture_output=True,
            timeout=60,
            check=False,
        )
    out = {
        "returncode": done.returncode,
        "stdout": done.stdout.decode(errors="replace"),
        "stderr": done.stderr.decode(errors="replace"),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    _inside(sys.argv[1])
