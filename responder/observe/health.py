"""Whether the database and the relay have been unusable for longer than server.health_threshold.

Each process reports, per dependency, when it last worked, when it last failed, and since when it has
been failing (0 once it works again). A dependency is unhealthy when some process's latest report is a
failure that no process has seen a success after, and that failure started (or, when another process
saw a success since it started, that success was) longer than the threshold ago. A service without
traffic keeps the state it last saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Report:
    """One process's view of one dependency, as Unix timestamps (0: never)."""

    last_success: float = 0.0
    last_failure: float = 0.0
    failing_since: float = 0.0


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    # How long it has been unusable, when it is failing now (whether or not past the threshold).
    failing_for: float | None = None


def judge(reports: Iterable[Report], now: float, threshold: float) -> Verdict:
    """The verdict on one dependency from the reports of every process."""
    reports = list(reports)
    last_success = max((r.last_success for r in reports), default=0.0)
    failing_for: float | None = None
    for report in reports:
        if not report.failing_since or report.last_failure <= last_success:
            continue
        since = max(report.failing_since, last_success)
        failing_for = max(failing_for or 0.0, now - since)
    if failing_for is None:
        return Verdict(True)
    return Verdict(failing_for <= threshold, failing_for)
