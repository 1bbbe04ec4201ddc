"""``responder serve``: one process serving alone, or a supervisor over worker processes."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from responder.daemons.lmtp_service import ServeError, Service, run_worker
from responder.logsetup import setup_logging
from responder.observe.monitoring import Monitoring

if TYPE_CHECKING:
    from pathlib import Path

    from responder.config.settings import Settings
    from responder.observe.metrics import OutboxState


def serve(config_path: Path, settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; ServeError when the service cannot start.

    ``server.processes`` other than 1: a supervisor binds the socket and forks the workers (see
    responder.daemons.supervisor); 1: this process serves alone. The metrics endpoint, when
    configured, is started here first, so every worker inherits its values directory and one process
    answers the scrapes for all of them.
    """
    setup_logging(settings.log)
    monitoring = _start_monitoring(settings)
    try:
        if settings.server.process_count > 1:
            from responder.daemons import supervisor

            if monitoring is not None:
                supervisor.ON_WORKER_EXIT.append(monitoring.worker_exited)
            supervisor.Supervisor(config_path, settings).run()
            return
        run_worker(Service(config_path, settings))
    finally:
        if monitoring is not None:
            monitoring.stop()


def _start_monitoring(settings: Settings) -> Monitoring | None:
    try:
        monitoring = Monitoring.start(settings.server)
    except OSError as exc:
        listen = settings.server.metrics_listen
        raise ServeError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
    if monitoring is not None:
        url = settings.database.url
        monitoring.set_outbox_source(lambda: _outbox_state(url))
    return monitoring


def _outbox_state(url: str) -> OutboxState:
    """The outbox as a scrape sees it, through a connection of its own (the parent keeps none open
    across the forks of its workers)."""
    from responder.observe.metrics import OutboxState
    from responder.store.database import Store

    store = Store.open(url)
    try:
        depth, oldest = store.outbox_stats(dt.datetime.now(dt.UTC))
    finally:
        store.close()
    return OutboxState(depth, oldest)
