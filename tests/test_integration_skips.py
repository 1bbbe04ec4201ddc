"""Without the hook user the integration tests skip with the reason, or fail where CI requires them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

# Runs pytest on the Postfix tests as on a machine where the hook user was never created.
_RUN = """
import sys
import pytest
import tests.integration.common as common
common.HOOK_USER = "responder-never-created"
sys.exit(pytest.main(["-p", "no:cacheprovider", "-q", "-rsf", *sys.argv[1:]]))
"""


def run_postfix_tests(require: bool) -> subprocess.CompletedProcess[str]:
    # The inner run selects its own tests: the outer one's options (markers, basetemp) stay out.
    env = {k: v for k, v in os.environ.items() if k not in ("RESPONDER_TEST_INTEGRATION", "PYTEST_ADDOPTS")}
    if require:
        env["RESPONDER_TEST_INTEGRATION"] = "require"
    return subprocess.run(
        [sys.executable, "-c", _RUN, "tests/integration/test_postfix.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.skipif(not os.path.exists("/usr/sbin/postfix"), reason="the case is Postfix without the user")
def test_a_missing_hook_user_skips_with_the_reason() -> None:
    result = run_postfix_tests(require=False)
    assert result.returncode == 0, result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert "skipped" in summary, summary
    assert "error" not in summary and "passed" not in summary, summary
    expected = "responder-never-created" if os.geteuid() == 0 else "run them as root"
    assert expected in result.stdout


@pytest.mark.skipif(not os.path.exists("/usr/sbin/postfix"), reason="the case is Postfix without the user")
def test_ci_turns_the_skip_into_a_failure() -> None:
    result = run_postfix_tests(require=True)
    assert result.returncode == 1, result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert "error" in summary and "skipped" not in summary and "passed" not in summary, summary
