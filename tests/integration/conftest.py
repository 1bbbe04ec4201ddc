"""Fixtures for the integration tests: the installed hook, the SMTP sink, a responder database."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.sink import SmtpSink

from .common import build_venv, missing_prerequisite, remove_tree, shared_tempdir
from .dovecot import SieveSetup
from .hook import ResponderInstance
from .postfix import PrivatePostfix

# Lines of a server log attached to a failing test's report.
LOG_TAIL = 80


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip with the reason what this machine lacks; under RESPONDER_TEST_INTEGRATION=require fail instead.

    CI sets "require", so that a machine that silently lost its mail servers cannot pass.
    """
    if item.get_closest_marker("integration") is None:
        return
    reason = missing_prerequisite()
    if reason is None:
        return
    if os.environ.get("RESPONDER_TEST_INTEGRATION") == "require":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the mail servers' logs to a failure: the assertion alone rarely says why mail went astray."""
    report = yield
    if report.failed and isinstance(item, pytest.Function):
        postfix = item.funcargs.get("postfix")
        if isinstance(postfix, PrivatePostfix):
            tail = postfix.maillog().splitlines()[-LOG_TAIL:]
            report.sections.append(("postfix maillog (tail)", "\n".join(tail)))
        sieve = item.funcargs.get("sieve")
        if isinstance(sieve, SieveSetup):
            tail = sieve.read_log().splitlines()[-LOG_TAIL:]
            report.sections.append(("dovecot log (tail)", "\n".join(tail)))
    return report


@pytest.fixture(scope="session")
def responder_executable() -> Iterator[Path]:
    """``responder`` installed from this checkout into a venv the hook user can run."""
    # Outside /root and readable by others: Postfix runs the hook as the responder user.
    venv = shared_tempdir("responder-venv-")
    try:
        yield build_venv(venv)
    finally:
        remove_tree(venv)


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    """The far end of every reply and of any bounce Postfix would send."""
    server = SmtpSink().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def responder(responder_executable: Path) -> Iterator[ResponderInstance]:
    """A config path and an empty state directory; the test module writes the config and migrates."""
    instance = ResponderInstance(responder_executable)
    try:
        yield instance
    finally:
        instance.close()
