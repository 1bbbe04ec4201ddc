"""Fixtures of the web tests: a private Dovecot for passwords, web settings, the app under a real uvicorn."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from responder.config.load import load, settings_from_mapping
from responder.config.settings import Settings
from responder.config.values import SocketSpec
from responder.web.app import create_app
from responder.web.server import bind, uvicorn_config
from tests.certs import TlsFiles, make_tls
from tests.conftest import ConfigFactory
from tests.helpers import FakeClock
from tests.imapserver import ImapServer
from tests.sink import SmtpSink
from tests.web.pages_support import PageClient, serving
from tests.web.users import Site


@pytest.fixture(scope="session")
def imap_server() -> Iterator[ImapServer]:
    """One Dovecot for the session; tests that stop it make their own (``ImapServer().start()``)."""
    server = ImapServer().start()
    yield server
    server.close()


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "web-secret"
    path.write_text(secrets.token_urlsafe(48))
    path.chmod(0o600)
    return path


@pytest.fixture
def make_settings(db_url: str, sink: SmtpSink, imap_server: ImapServer, secret_file: Path) -> SettingsFactory:
    """Settings for the test database, sink and Dovecot; keyword sections merge over these."""

    def make(**sections: Mapping[str, object]) -> Settings:
        merged: dict[str, dict[str, object]] = {
            "database": {"url": db_url},
            "smtp": {"host": "127.0.0.1", "port": sink.port, "timeout": 10, "hostname": "mx.example.net"},
            "verify": {"require": "off"},
            "web": {
                "listen": "127.0.0.1:0",
                "imap": imap_server.url,
                "imap_ca_file": str(imap_server.tls.ca),
                "imap_timeout": 10,
                "secret_file": str(secret_file),
            },
        }
        for name, values in sections.items():
            merged.setdefault(name, {}).update(values)
        return settings_from_mapping(merged)

    return make


class Served:
    """The app under a real uvicorn in a thread, on a loopback port the system chose."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.sock = bind(SocketSpec(host="127.0.0.1", port=0), 0o600)
        self.port = int(self.sock.getsockname()[1])
        scheme = "https" if settings.web.tls_cert else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(settings, app))
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self) -> Served:
        self.thread.start()
        for _ in range(400):
            if self.server.started:
                return self
            if not self.thread.is_alive():
                break
            threading.Event().wait(0.025)
        raise RuntimeError("uvicorn did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


ServeFactory = Callable[..., Served]


@pytest.fixture
def serve() -> Iterator[ServeFactory]:
    """``serve(settings, **options)`` starts the app; all are stopped after the test."""
    started: list[Served] = []

    def start(settings: Settings, **options: Any) -> Served:
        served = Served(create_app(settings, **options), settings).start()
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


@pytest.fixture(scope="session")
def web_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("web-tls"))


@pytest.fixture
def api(make_settings: SettingsFactory, serve: ServeFactory, store: Any, tmp_path: Path) -> Iterator[Any]:
    """The app served with site templates in tmp_path/templates and two tokens; an Api helper on it."""
    import httpx

    from tests.web.apitools import Api, add_tokens

    templates = tmp_path / "templates"
    templates.mkdir()
    add_tokens(store)
    served = serve(make_settings(reply={"templates_dir": str(templates)}))
    with httpx.Client(base_url=served.url, timeout=60) as client:
        yield Api(client, store)


# -- the pages' fixtures: the service with a config file the hook reads too --------------------------


@pytest.fixture
def make_site_config(
    make_config: ConfigFactory, tmp_path: Path, imap_server: ImapServer, secret_file: Path
) -> ConfigFactory:
    """Config files for the test database, sink and Dovecot, which the hook reads as well as the service."""

    def make(**sections: Mapping[str, object]) -> Path:
        templates = tmp_path / "templates"
        templates.mkdir(exist_ok=True)
        web = {
            "listen": "127.0.0.1:0",
            "imap": imap_server.url,
            "imap_ca_file": str(imap_server.tls.ca),
            "imap_timeout": 10,
            "secret_file": str(secret_file),
            **sections.get("web", {}),
        }
        reply = {"templates_dir": str(templates), **sections.get("reply", {})}
        return make_config(**{**sections, "reply": reply, "web": web})

    return make


@pytest.fixture
def site_config(make_site_config: ConfigFactory) -> Path:
    return make_site_config()


@pytest.fixture
def site(site_config: Path, clock: FakeClock) -> Iterator[Site]:
    """The web service on the test's clock."""
    settings = load(site_config)
    with serving(create_app(settings, clock=clock)) as base_url:
        yield Site(config=site_config, settings=settings, base_url=base_url, clock=clock)


@pytest.fixture
def client(site: Site) -> Iterator[PageClient]:
    c = PageClient(site.base_url)
    yield c
    c.close()
