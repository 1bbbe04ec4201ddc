"""Test parts for the metrics endpoint: the service with metrics on, a scrape, promtool."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lmtp_support import ServiceProcess

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def require_promtool() -> str:
    """promtool's path; skip with the reason without it, or fail where CI requires the integration tools."""
    if os.path.exists(PROMTOOL):
        return PROMTOOL
    reason = "promtool is not installed (Debian package prometheus; .ci/install-mail-servers installs it)"
    if os.environ.get("RESPONDER_TEST_INTEGRATION") == "require":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def metrics_address(service: ServiceProcess) -> str:
    """``http://HOST:PORT`` of the service's metrics endpoint, from its log."""
    found = re.search(r"metrics and health on (\S+) ", service.wait_log("metrics and health on"))
    assert found is not None
    return f"http://{found.group(1)}"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def samples(text: str) -> Iterator[Sample]:
    """The samples of an exposition, read by prometheus_client's own parser."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield Sample(sample.name, dict(sample.labels), sample.value)


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_promtool(), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
