"""The thin client's tomllib-free reader: the same values as tomllib, or None and tomllib reads the file."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from responder.config import early
from responder.config.settings import Settings
from tests.helpers import REPO

SERVICE = '[server]\nsocket = "unix:/run/responder/lmtp.sock"\n'


def _by_tomllib(text: str) -> dict[str, object] | None:
    """What Options reads from the file as tomllib parses it, None when either refuses it."""
    try:
        document = tomllib.loads(text)
        server = early.Options(document, "server")
        return {
            "socket": server.text("socket"),
            "connect_timeout": server.duration("connect_timeout"),
            "deadline": early.Options(document, "deliver").duration("deadline"),
        }
    except (tomllib.TOMLDecodeError, early.Invalid):
        return None


def _scanned(tmp_path: Path, text: str) -> dict[str, object] | None:
    path = tmp_path / "responder.toml"
    path.write_bytes(text.encode("utf-8"))
    return early.thin_client_keys(str(path))


# Files inside the plain subset: the reader must take them itself, and find what tomllib finds.
PLAIN = {
    "service only": SERVICE,
    "all three": SERVICE + 'connect_timeout = "2s"\n[deliver]\ndeadline = 30\n',
    "numbers": '[deliver]\ndeadline = 12.5\n[server]\nsocket = "127.0.0.1:24"\nconnect_timeout = 3\n',
    "literal string": "[server]\nsocket = 'unix:/run/x.sock' # a comment\n",
    "comments and blanks": '# top\n\n[server]   # the service\n  socket = "unix:/s"   \n\t\n',
    "crlf": '[server]\r\nsocket = "unix:/s"\r\nconnect_timeout = "1m"\r\n',
    "no service": '[database]\nurl = "sqlite:///x.sqlite3"\n',
    "empty": "",
    "other values": (
        '[verify]\ntrusted_authserv_ids = ["mx.example.com", "a#b"]\nrequire = "off"\n'
        "[reply]\nflag = true\nwhen = 1979-05-27T07:32:00Z\nmap = { a = 1, b = [2, 3] }\nn = -1\n" + SERVICE
    ),
    "a hash in a string": '[server]\nsocket = "unix:/run/a#b.sock"\n',
}

# Files beyond it (or not TOML at all): the reader answers None, tomllib decides.
BEYOND = {
    "multi-line string hiding a table": (
        '[reply]\nmessage = """\n[server]\nsocket = "unix:/evil"\n"""\n[server]\nsocket = "unix:/s"\n'
    ),
    "multi-line literal": "[reply]\nmessage = '''\n[server]\n'''\n" + SERVICE,
    "multi-line array": '[verify]\nids = [\n  "a",\n]\n' + SERVICE,
    "dotted root key": 'server.socket = "unix:/a"\n',
    "inline root table": 'server = { socket = "unix:/a" }\n',
    "dotted key in a table": '[server]\nsocket = "unix:/s"\n[log]\nserver.socket = "x"\n',
    "quoted key": '[server]\n"socket" = "unix:/s"\n',
    "table twice": SERVICE + '[server]\nconnect_timeout = "1s"\n',
    "key twice": SERVICE + 'socket = "unix:/t"\n',
    "escape in the socket": '[server]\nsocket = "unix:/run/\\u0073.sock"\n',
    "array of tables": '[[server]]\nsocket = "unix:/s"\n',
    "text after a string": '[server]\nsocket = "unix:/s" "x"\n',
    "bare word": "[server]\nsocket = unix\n",
    "unclosed string": '[server]\nsocket = "unix:/s\n',
    "byte-order mark": "\ufeff" + SERVICE,
    "not a duration": SERVICE + 'connect_timeout = "soon"\n',
    "negative": SERVICE + "connect_timeout = -1\n",
    "underscored number": SERVICE + "connect_timeout = 1_0\n",
    "not a string": "[server]\nsocket = 5\n",
    "garbage": "\x00\x01[[[ =\n",
    "cr alone": '[server]\rsocket = "unix:/s"\n',
}


@pytest.mark.parametrize("text", PLAIN.values(), ids=PLAIN.keys())
def test_plain_files_are_read_without_tomllib_and_as_tomllib_reads_them(tmp_path: Path, text: str) -> None:
    scanned = _scanned(tmp_path, text)
    assert scanned is not None
    assert scanned == _by_tomllib(text)


@pytest.mark.parametrize("text", BEYOND.values(), ids=BEYOND.keys())
def test_anything_beyond_the_plain_subset_is_left_to_tomllib(tmp_path: Path, text: str) -> None:
    assert _scanned(tmp_path, text) is None


def test_the_reference_configuration_is_plain(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("```toml responder.toml\n", 1)[1].split("\n```\n", 1)[0]
    text = block.replace('socket = ""', 'socket = "unix:/run/r.sock"', 1)
    scanned = _scanned(tmp_path, text)
    assert scanned == _by_tomllib(text)
    assert scanned is not None and scanned["socket"] == "unix:/run/r.sock"


def test_an_unreadable_or_huge_file_is_left_to_tomllib(tmp_path: Path) -> None:
    assert early.thin_client_keys(str(tmp_path / "missing.toml")) is None
    assert _scanned(tmp_path, SERVICE + "# " + "x" * (1 << 20) + "\n") is None


def test_every_early_key_is_a_key_of_the_configuration() -> None:
    settings = Settings()
    for section, keys in early.DEFAULTS.items():
        for key in keys:
            assert hasattr(getattr(settings, section), key), f"{section}.{key}"


def test_the_reader_imports_neither_tomllib_nor_re(tmp_path: Path) -> None:
    path = tmp_path / "responder.toml"
    path.write_text(PLAIN["all three"])
    code = (
        "import sys\nfrom responder.config.early import thin_client_keys\n"
        f"assert thin_client_keys({str(path)!r})['socket']\n"
        "print(sorted(m for m in ('tomllib', 're', 'typing') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
