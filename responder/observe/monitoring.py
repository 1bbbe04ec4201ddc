"""The service's monitoring as one thing to start and stop: values directory, observer, HTTP endpoint."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from responder.daemons.sockets import unlink
from responder.observe import directory, events

if TYPE_CHECKING:
    from collections.abc import Callable

    from responder.config.settings import ServerSettings
    from responder.observe.endpoint import Endpoint
    from responder.observe.metrics import OutboxState

log = logging.getLogger("responder")


class Monitoring:
    """Started by the service before it forks or takes mail; stopped after the last message."""

    def __init__(self, settings: ServerSettings, path: str, endpoint: Endpoint) -> None:
        self.settings = settings
        self.path = path
        self.endpoint = endpoint
        self.previous: events.Observer | None = None

    @classmethod
    def start(cls, settings: ServerSettings) -> Monitoring | None:
        """None when ``server.metrics_listen`` is not set: then nothing of the metrics is loaded.

        OSError when the endpoint's socket cannot be bound.
        """
        spec = settings.metrics_listen
        if spec is None:
            return None
        path = directory.prepare()
        try:
            # Only now: prometheus_client reads the directory from the environment when imported.
            from responder.observe import endpoint, metrics

            threshold = settings.health_threshold
            app = endpoint.make_app(
                metrics.scrape_registry(threshold, path), lambda: metrics.verdicts(threshold, directory=path)
            )
            sock = endpoint.bind(spec, settings.socket_mode)
        except BaseException:
            directory.remove(path)
            raise
        monitoring = cls(settings, path, endpoint.Endpoint(app, sock))
        monitoring.previous = events.install(metrics.MetricsObserver())
        monitoring.endpoint.start()
        log.info("metrics and health on %s (/metrics, /healthz)", endpoint.address(sock, spec))
        return monitoring

    def set_outbox_source(self, source: Callable[[], OutboxState] | None) -> None:
        """What a scrape asks for the outbox's depth and oldest age (in the process serving scrapes)."""
        from responder.observe import metrics

        metrics.set_outbox_source(source)

    def worker_exited(self, pid: int) -> None:
        """For the supervisor: worker ``pid`` is gone; its counts stay in the sums."""
        from responder.observe import metrics

        metrics.worker_exited(pid)

    def stop(self) -> None:
        self.endpoint.stop()
        assert self.settings.metrics_listen is not None
        unlink(self.settings.metrics_listen)
        if self.previous is not None:
            events.install(self.previous)
        directory.remove(self.path)
