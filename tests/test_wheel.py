"""A non-editable install from the built wheel finds its migrations and templates and works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO, sample, write_config


def _run(*args: str | Path, cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, input=stdin, capture_output=True, check=False, timeout=600
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")[-3000:]
    return result


def test_wheel_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, REPO, cwd=tmp_path)
    [wheel] = dist.glob("responder-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    _run(venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel, cwd=tmp_path)
    responder = venv / "bin" / "responder"
    config = write_config(
        tmp_path / "responder.toml",
        {"database": {"url": f"sqlite:///{tmp_path}/db.sqlite3"}, "verify": {"require": "off"}},
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    _run(responder, "--config", config, "db", "upgrade", cwd=work)
    _run(
        responder, "--config", config, "vacation", "set", "alice@example.com", "--message", "Away.", cwd=work
    )
    explained = _run(
        venv / "bin" / "python", "-m", "responder", "--config", config,
        "explain", "--sender", "bob@example.org", "--recipient", "alice@example.com",
        cwd=work, stdin=sample("personal.eml"),
    )  # fmt: skip
    out = explained.stdout.decode()
    assert out.startswith("action: reply\n")
    assert "Away." in out
    installed = _run(venv / "bin" / "python", "-c", "import responder; print(responder.__file__)", cwd=work)
    assert str(venv) in installed.stdout.decode()
