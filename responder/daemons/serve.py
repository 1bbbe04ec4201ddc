"""``responder serve``: one process serving alone, or a supervisor over worker processes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from responder.daemons.lmtp_service import Service, run_worker
from responder.logsetup import setup_logging

if TYPE_CHECKING:
    from pathlib import Path

    from responder.config.settings import Settings


def serve(config_path: Path, settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; ServeError when the service cannot start.

    ``server.processes`` other than 1: a supervisor binds the socket and forks the workers (see
    responder.daemons.supervisor); 1: this process serves alone.
    """
    setup_logging(settings.log)
    if settings.server.process_count > 1:
        from responder.daemons.supervisor import Supervisor

        Supervisor(config_path, settings).run()
        return
    run_worker(Service(config_path, settings))
