"""Without Chromium the browser tests skip with the reason, or fail where CI requires them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


def run_browser_tests(require: bool) -> subprocess.CompletedProcess[str]:
    # The inner run selects its own tests: the outer one's options (markers, basetemp) stay out.
    env = {k: v for k, v in os.environ.items() if k not in ("RESPONDER_TEST_INTEGRATION", "PYTEST_ADDOPTS")}
    env["RESPONDER_TEST_CHROMIUM"] = "/nonexistent/chromium"
    if require:
        env["RESPONDER_TEST_INTEGRATION"] = "require"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rsf", "tests/web/test_browser.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.timeout(300)
def test_a_missing_browser_skips_with_the_reason() -> None:
    result = run_browser_tests(require=False)
    assert result.returncode == 0, result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert "skipped" in summary and "passed" not in summary and "error" not in summary, summary
    assert "no Chromium at /nonexistent/chromium" in result.stdout


@pytest.mark.timeout(300)
def test_ci_turns_the_missing_browser_into_a_failure() -> None:
    result = run_browser_tests(require=True)
    assert result.returncode == 1, result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert "skipped" not in summary and "passed" not in summary, summary
    assert "no Chromium at /nonexistent/chromium" in result.stdout
