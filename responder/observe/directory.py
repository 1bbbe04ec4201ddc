"""The private directory where every process of the service keeps its metric values for the scrape."""

from __future__ import annotations

import os
import shutil
import tempfile

# prometheus_client reads it when first imported: set before the metrics module is loaded.
ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"


def prepare() -> str:
    """A fresh, owner-only directory named in the environment, which forked workers inherit.

    Fresh at every start: values left by an earlier run (a counter of a process long gone) would be
    summed into this one's.
    """
    path = tempfile.mkdtemp(prefix="responder-metrics-")
    os.environ[ENVIRONMENT] = path
    return path


def remove(path: str) -> None:
    """At stop: the directory and the values in it."""
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(ENVIRONMENT) == path:
        del os.environ[ENVIRONMENT]
