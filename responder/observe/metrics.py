"""The service's Prometheus metrics: the metric objects, the observer that feeds them, the scrape registry.

Multi-process: every process of the service (the parent and its forked workers) writes its values to
the directory named by PROMETHEUS_MULTIPROC_DIR (``observe.directory``), which must be set before this
module is imported; a scrape sums them with ``MultiProcessCollector``. Values computed at scrape time
(the outbox, the health of each dependency) come from collectors of the process that serves the scrape.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from responder.observe.events import DATABASE, RELAY, Observer
from responder.observe.health import Report, Verdict, judge

DEPENDENCIES = (DATABASE, RELAY)

DECISIONS = Counter(
    "responder_decisions",
    "Decisions made, one per decision log line, by action and reason (none for a reply or bounce sent).",
    ["action", "reason"],
    registry=None,
)
DECISION_SECONDS = Histogram(
    "responder_decision_duration_seconds",
    "Time from a message's end of data to one recipient's answer.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=None,
)
RESPONSES_SENT = Counter(
    "responder_responses_sent",
    "Responses the relay accepted (or got whole with its answer lost), by kind: reply or bounce.",
    ["kind"],
    registry=None,
)
RELAY_FAILURES = Counter(
    "responder_relay_failures",
    "Responses the relay did not take, by kind: refused (5xx), deferred (4xx), unreachable, timeout, "
    "unconfirmed (the answer to the data lost).",
    ["kind"],
    registry=None,
)
VERIFICATIONS = Counter(
    "responder_sender_verifications",
    "Results of sender verification checks, by method (spf, dkim, or authres for a trusted upstream "
    "Authentication-Results) and result (pass or fail).",
    ["method", "result"],
    registry=None,
)
DATABASE_FAULTS = Counter(
    "responder_database_faults",
    "Database faults, by kind: unavailable (down, locked past busy_timeout) or conflict (retried).",
    ["kind"],
    registry=None,
)
# Per process ("all" keeps the pid label): the health check needs each process's own view.
LAST_SUCCESS = Gauge(
    "responder_dependency_last_success_timestamp_seconds",
    "When the database answered or the relay took a response, per process.",
    ["dependency"],
    multiprocess_mode="all",
    registry=None,
)
LAST_FAILURE = Gauge(
    "responder_dependency_last_failure_timestamp_seconds",
    "When the database or the relay could last not be used, per process.",
    ["dependency"],
    multiprocess_mode="all",
    registry=None,
)
FAILING_SINCE = Gauge(
    "responder_dependency_failing_since_timestamp_seconds",
    "Since when a dependency has been failing in this process (0 when it last worked).",
    ["dependency"],
    multiprocess_mode="all",
    registry=None,
)

_TOKEN = re.compile(r"(?<![\w(])(spf|dkim)=([a-z]+)(\([^)]*\))?")
# Results that say no check was made: not counted.
_NOT_CHECKED = frozenset({"none", "skipped", "unchecked"})
# A success refreshes the timestamp at most this often per process and dependency.
_REFRESH = 1.0


def verification_results(summary: str) -> Iterator[tuple[str, str]]:
    """(method, pass or fail) for each check in a verification summary (``verify.sender``'s format)."""
    for match in _TOKEN.finditer(summary):
        method, result, detail = match.group(1), match.group(2), match.group(3) or ""
        if result in _NOT_CHECKED:
            continue
        yield ("authres" if "(via " in detail else method), ("pass" if result == "pass" else "fail")


class MetricsObserver(Observer):
    """The engine's events as metric values of this process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        # dependency -> (working, when that was last written)
        self._state: dict[str, tuple[bool, float]] = {}

    def decision(self, action: str, reason: str | None) -> None:
        DECISIONS.labels(action, reason or "none").inc()

    def decision_seconds(self, seconds: float) -> None:
        DECISION_SECONDS.observe(seconds)

    def response_sent(self, kind: str) -> None:
        RESPONSES_SENT.labels(kind).inc()

    def relay_failed(self, kind: str) -> None:
        RELAY_FAILURES.labels(kind).inc()

    def verified(self, summary: str) -> None:
        for method, result in verification_results(summary):
            VERIFICATIONS.labels(method, result).inc()

    def database_fault(self, kind: str) -> None:
        DATABASE_FAULTS.labels(kind).inc()

    def dependency_ok(self, dependency: str) -> None:
        now = self.clock()
        with self._lock:
            working, written = self._state.get(dependency, (False, 0.0))
            # Every statement reports: a working database costs a look-up, not a file write.
            if working and now - written < _REFRESH:
                return
            self._state[dependency] = (True, now)
        LAST_SUCCESS.labels(dependency).set(now)
        FAILING_SINCE.labels(dependency).set(0)

    def dependency_failed(self, dependency: str) -> None:
        now = self.clock()
        with self._lock:
            previous = self._state.get(dependency)
            self._state[dependency] = (False, now)
        LAST_FAILURE.labels(dependency).set(now)
        if previous is None or previous[0]:
            FAILING_SINCE.labels(dependency).set(now)


class OutboxState(NamedTuple):
    """What the outbox holds: responses not yet sent, and the age of the oldest in seconds (0: none)."""

    depth: int
    oldest_age: float


_outbox_source: Callable[[], OutboxState] | None = None


def set_outbox_source(source: Callable[[], OutboxState] | None) -> None:
    """The function a scrape asks for the outbox (a database query: it runs at scrape time only)."""
    global _outbox_source  # noqa: PLW0603 - set once by the service
    _outbox_source = source


def worker_exited(pid: int) -> None:
    """Tell the metrics that worker ``pid`` is gone (its counters stay in the sums)."""
    multiprocess.mark_process_dead(pid)


class _OutboxCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        source = _outbox_source
        if source is None:
            return
        try:
            state = source()
        except Exception:  # a database fault: the scrape shows the fault counter, not a broken page
            return
        yield GaugeMetricFamily(
            "responder_outbox_depth", "Responses in the outbox not sent yet.", value=state.depth
        )
        yield GaugeMetricFamily(
            "responder_outbox_oldest_age_seconds",
            "Age of the oldest response in the outbox not sent yet (0 when it is empty).",
            value=state.oldest_age,
        )


def reports(directory: str | None = None) -> dict[str, list[Report]]:
    """Every process's health report per dependency, read from the values directory."""
    fields = {
        "responder_dependency_last_success_timestamp_seconds": "last_success",
        "responder_dependency_last_failure_timestamp_seconds": "last_failure",
        "responder_dependency_failing_since_timestamp_seconds": "failing_since",
    }
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    by_process: dict[tuple[str, str], dict[str, float]] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            field = fields.get(sample.name)
            if field is None:
                continue
            key = (sample.labels["dependency"], sample.labels.get("pid", ""))
            by_process.setdefault(key, {})[field] = sample.value
    found: dict[str, list[Report]] = {dependency: [] for dependency in DEPENDENCIES}
    for (dependency, _pid), values in by_process.items():
        found.setdefault(dependency, []).append(Report(**values))
    return found


def verdicts(
    threshold: float, clock: Callable[[], float] = time.time, directory: str | None = None
) -> dict[str, Verdict]:
    """The health of each dependency now."""
    now = clock()
    return {name: judge(found, now, threshold) for name, found in reports(directory).items()}


class _HealthCollector(Collector):
    def __init__(self, threshold: float, directory: str | None) -> None:
        self.threshold = threshold
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "responder_dependency_healthy",
            "1 unless the dependency has been unusable for longer than server.health_threshold.",
            labels=["dependency"],
        )
        for name, verdict in verdicts(self.threshold, directory=self.directory).items():
            family.add_metric([name], 1.0 if verdict.healthy else 0.0)
        yield family


def scrape_registry(threshold: float, directory: str | None = None) -> CollectorRegistry:
    """The registry a scrape reads: every process's values, the outbox and the health verdicts."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    registry.register(_OutboxCollector())
    registry.register(_HealthCollector(threshold, directory))
    return registry
