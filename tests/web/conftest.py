"""Fixtures of the web tests: the service on a loopback port over a fresh database, and a page client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from responder.config.load import load
from tests.conftest import ConfigFactory
from tests.helpers import FakeClock
from tests.web.pages_support import PageClient, serve
from tests.web.users import Site


@pytest.fixture
def site(make_config: ConfigFactory, tmp_path: Path, clock: FakeClock) -> Iterator[Site]:
    """The web service on the test's clock, its templates in a directory of the test's own."""
    from responder.web.app import create_app

    templates = tmp_path / "templates"
    templates.mkdir()
    config = make_config(reply={"templates_dir": str(templates)})
    settings = load(config)
    with serve(create_app(settings, clock=clock)) as base_url:
        yield Site(config=config, settings=settings, base_url=base_url, clock=clock)


@pytest.fixture
def client(site: Site) -> Iterator[PageClient]:
    c = PageClient(site.base_url)
    yield c
    c.close()
