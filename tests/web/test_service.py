"""`responder web` and the app under uvicorn: who the caller is, body limits, TLS and UNIX sockets."""

from __future__ import annotations

import base64
import datetime as dt
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from responder.store.database import Store
from tests.certs import TlsFiles
from tests.helpers import hook_env, write_config
from tests.imapserver import USERS, ImapServer
from tests.web.conftest import ServeFactory, SettingsFactory


def basic(address: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{address}:{password}".encode()).decode()}


def test_whoami_with_the_mail_password_and_with_a_token(
    make_settings: SettingsFactory, serve: ServeFactory, store: Store
) -> None:
    served = serve(make_settings())
    with httpx.Client(base_url=served.url, timeout=30) as client:
        me = client.get("/api/v1/whoami", headers=basic("alice@example.com", USERS["alice@example.com"]))
        assert me.status_code == 200, me.text
        assert me.json() == {
            "kind": "user",
            "name": "alice@example.com",
            "address": "alice@example.com",
            "domain": None,
        }
        wrong = client.get("/api/v1/whoami", headers=basic("alice@example.com", "nope"))
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "unauthorized"
        store.add_token("helpdesk", "domain", "example.com", "rsp_test-token-value", dt.datetime.now(dt.UTC))
        token = client.get("/api/v1/whoami", headers={"Authorization": "Bearer rsp_test-token-value"})
        assert token.json() == {
            "kind": "domain",
            "name": "helpdesk",
            "address": None,
            "domain": "example.com",
        }
        bad = client.get("/api/v1/whoami", headers={"Authorization": "Bearer rsp_test-token-valuf"})
        assert bad.status_code == 401
        assert client.get("/api/v1/whoami").status_code == 401


def test_imap_down_is_503_try_again_later(make_settings: SettingsFactory, serve: ServeFactory) -> None:
    own = ImapServer().start()
    try:
        served = serve(make_settings(web={"imap": own.url, "imap_ca_file": str(own.tls.ca)}))
        own.stop()
        with httpx.Client(base_url=served.url, timeout=60) as client:
            answer = client.get("/api/v1/whoami", headers=basic("bob@example.com", USERS["bob@example.com"]))
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "unavailable"
    finally:
        own.close()


def test_throttled_sign_in_is_429_with_retry_after(
    make_settings: SettingsFactory, serve: ServeFactory
) -> None:
    served = serve(make_settings(web={"signin_per_account": "2/1h"}))
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for _ in range(2):
            assert client.get("/api/v1/whoami", headers=basic("bob@example.com", "x")).status_code == 401
        answer = client.get("/api/v1/whoami", headers=basic("bob@example.com", USERS["bob@example.com"]))
    assert answer.status_code == 429
    assert int(answer.headers["retry-after"]) > 0


def test_an_oversized_body_is_413(make_settings: SettingsFactory, serve: ServeFactory) -> None:
    served = serve(make_settings(web={"max_body": 1000}))
    with httpx.Client(base_url=served.url, timeout=30) as client:
        answer = client.put("/api/v1/vacations/alice@example.com", content=b"x" * 5000)
        chunked = client.post("/api/v1/explain", content=iter([b"x" * 600, b"y" * 600]))
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "too_large"
    assert chunked.status_code == 413


def test_https_with_the_configured_certificate(
    make_settings: SettingsFactory, serve: ServeFactory, web_tls: TlsFiles
) -> None:
    served = serve(make_settings(web={"tls_cert": str(web_tls.cert), "tls_key": str(web_tls.key)}))
    assert served.url.startswith("https://")
    with httpx.Client(
        base_url=served.url, timeout=30, verify=ssl.create_default_context(cafile=web_tls.ca)
    ) as client:
        assert client.get("/api/v1/openapi.json").status_code == 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(listen: str) -> bool:
    try:
        if listen.startswith("unix:"):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(listen[len("unix:") :])
        else:
            host, _, port = listen.rpartition(":")
            socket.create_connection((host, int(port)), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_responder_web_command_serves_and_stops_on_sigterm(
    where: str, tmp_path: Path, db_url: str, imap_server: ImapServer, secret_file: Path
) -> None:
    sock_path = tmp_path / "web.sock"
    listen = f"127.0.0.1:{_free_port()}" if where == "tcp" else f"unix:{sock_path}"
    config = write_config(
        tmp_path / "responder.toml",
        {
            "database": {"url": db_url},
            "web": {
                "listen": listen,
                "imap": imap_server.url,
                "secret_file": str(secret_file),
                "socket_mode": "0600",
            },
        },
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "responder", "--config", str(config), "web"],
        env=hook_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not _accepts(listen):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(process.communicate()[1].decode())
            time.sleep(0.1)
        transport = httpx.HTTPTransport(uds=str(sock_path)) if where == "unix" else None
        base = "http://web" if where == "unix" else f"http://{listen}"
        with httpx.Client(base_url=base, transport=transport, timeout=10) as client:
            answer = client.get("/api/v1/openapi.json")
        assert answer.status_code == 200
        assert answer.json()["info"]["title"] == "responder"
        if where == "unix":
            assert sock_path.stat().st_mode & 0o777 == 0o600
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        if where == "unix":
            assert not sock_path.exists()
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_responder_web_refuses_to_start_without_the_secret(
    tmp_path: Path, db_url: str, imap_server: ImapServer
) -> None:
    config = write_config(
        tmp_path / "responder.toml",
        {
            "database": {"url": db_url},
            "web": {"listen": "127.0.0.1:0", "secret_file": str(tmp_path / "none")},
        },
    )
    result = subprocess.run(
        [sys.executable, "-m", "responder", "--config", str(config), "web"],
        env=hook_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert b"web.secret_file" in result.stderr


@pytest.mark.parametrize("proxied", [True, False])
def test_forwarded_for_believed_only_from_proxy_hosts(
    make_settings: SettingsFactory, serve: ServeFactory, proxied: bool
) -> None:
    web: dict[str, object] = {"signin_per_client": "2/1h", "signin_per_account": "100/1h"}
    if proxied:
        web["proxy_hosts"] = ["127.0.0.1"]
    served = serve(make_settings(web=web))
    with httpx.Client(base_url=served.url, timeout=30) as client:

        def whoami(address: str, password: str, forwarded: str) -> int:
            headers = {**basic(address, password), "X-Forwarded-For": forwarded}
            return client.get("/api/v1/whoami", headers=headers).status_code

        assert whoami("x1@example.com", "guess", "203.0.113.5") == 401
        assert whoami("x2@example.com", "guess", "203.0.113.5") == 401
        assert whoami("alice@example.com", USERS["alice@example.com"], "203.0.113.5") == 429
        # Another client behind the proxy is its own; without proxy_hosts the header is ignored.
        other = whoami("alice@example.com", USERS["alice@example.com"], "203.0.113.6")
        assert other == (200 if proxied else 429)
