"""The built wheel is this project under its own name, installs into a fresh venv and works there."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path

from tests.helpers import REPO, sample, write_config
from tests.integration.common import DOC_EXECUTABLE, pipe_argv, snippet

# "responder" on the package index is an unrelated HTTP framework; this is ours.
DISTRIBUTION = "responder-autoreply"
WHEEL_PREFIX = "responder_autoreply-"


def _run(
    *args: str | Path, cwd: Path, stdin: bytes = b"", check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, input=stdin, capture_output=True, check=False, timeout=600
    )
    if check:
        assert result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")[-3000:]
    return result


def _metadata(wheel: Path) -> tuple[dict[str, str], str]:
    """The wheel's METADATA fields and its ``responder`` script."""
    with zipfile.ZipFile(wheel) as archive:
        [info] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        [script] = [n for n in archive.namelist() if n.endswith(".data/scripts/responder")]
        fields = HeaderParser().parsestr(archive.read(info).decode())
        return dict(fields.items()), archive.read(script).decode()


def test_wheel_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, REPO, cwd=tmp_path)
    [wheel] = dist.glob("*.whl")
    assert wheel.name.startswith(WHEEL_PREFIX), wheel.name
    fields, script = _metadata(wheel)
    assert fields["Name"] == DISTRIBUTION
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    # The web pages' templates and style sheet are package data, not only source files.
    assert {"responder/web/templates/vacation.html", "responder/web/static/style.css"} <= shipped
    # The command is a script of ours (the installer points its shebang at the venv's interpreter),
    # not the installer's console-script wrapper, which imports re.
    assert script.startswith("#!python\n") and "from responder.entry import main" in script, script
    assert not re.search(r"^import re$", script, re.MULTILINE)
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    _run(venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel, cwd=tmp_path)
    responder = venv / "bin" / "responder"
    assert responder.read_text(encoding="utf-8").startswith(f"#!{venv / 'bin' / 'python'}")
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
    package = Path(installed.stdout.decode().strip()).parent
    assert package.is_relative_to(venv)
    listed = _run(venv / "bin" / "pip", "show", DISTRIBUTION, cwd=work)
    assert f"Name: {DISTRIBUTION}\n" in listed.stdout.decode()

    # The upgrade window: pip has removed the package directory and not yet written the new one.
    # The documented master.cf command must defer (75), never let Python's 1 through to Postfix.
    package.rename(package.with_name("responder.moved"))
    argv = pipe_argv(
        snippet("master.cf").replace(DOC_EXECUTABLE, str(responder)),
        {"sender": "bob@example.org", "user": "alice", "nexthop": "example.com"},
    )
    assert _run(responder, "--version", cwd=work, check=False).returncode == 1  # the bare console script
    deferred = _run(*argv, cwd=work, stdin=sample("personal.eml"), check=False)
    assert deferred.returncode == 75, deferred
    assert not re.match(rb"\s*[245]\.\d", deferred.stdout), deferred.stdout


# An install line names a requirement after `pip install`: a bare `responder` (with or without extras)
# would fetch the unrelated project of that name from the index.
_PIP_INSTALL = re.compile(r"pip install (?P<args>[^\n`]*)")
_FOREIGN = re.compile(r"""(?:^|\s)['"]?responder(?:\[[^\]]*\])?['"]?(?:\s|$)""")


def test_readme_installs_only_this_project() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    lines = [m["args"] for m in _PIP_INSTALL.finditer(readme)]
    assert lines, "the README has no pip install line"
    assert [args for args in lines if _FOREIGN.search(args)] == []
    assert _FOREIGN.search("'responder[postgresql]'")  # the pattern does catch the old line
    assert DISTRIBUTION in readme


def test_pyspf_compiles_from_source_under_the_warning_filters() -> None:
    """Without a cached .pyc (PYTHONDONTWRITEBYTECODE=1) pyspf is compiled at import, under "error"."""
    import spf

    source = Path(spf.__file__)
    assert source.suffix == ".py"
    # compile() warns exactly as an import without a .pyc does; the filters in force are the suite's.
    compile(source.read_bytes(), str(source), "exec")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_distribution_is_declared() -> None:
    """A fresh venv has only what pyproject.toml declares: the runtime dependencies and the test extra."""
    import ast
    import importlib.metadata
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    declared = {_canonical(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in requirements}
    imported: set[str] = set()
    for folder in ("responder", "tests", "migrations", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_bytes())):
                if isinstance(node, ast.Import):
                    imported.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    first_party = {"responder", "tests", "__future__"} | {p.stem for p in (REPO / "bench").glob("*.py")}
    third_party = imported - set(sys.stdlib_module_names) - first_party
    providers = importlib.metadata.packages_distributions()
    undeclared = {
        module: providers.get(module)
        for module in third_party
        if not declared & {_canonical(d) for d in providers.get(module, [])}
    }
    assert undeclared == {}
