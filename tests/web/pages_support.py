"""The web service on a loopback port for page tests, and a browser-less client that fills in forms."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` under uvicorn in a thread, on a port the OS picks; yields the base URL.

    uvicorn believes X-Forwarded-Proto from loopback only, as a site's config does for its own proxy.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", proxy_headers=True, forwarded_allow_ips="127.0.0.1", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started:
                break
            thread.join(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        listener.close()


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)


class PageClient:
    """A browser without a browser: keeps the cookie, reads each form's CSRF token from its page."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, follow_redirects=False, timeout=30)

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def submit(self, page: str, action: str, fields: Mapping[str, str], **kwargs: Any) -> httpx.Response:
        """GET ``page`` for its token, then POST ``fields`` to ``action`` as its form would."""
        token = csrf_of(self.http.get(page).text)
        return self.http.post(action, data={"csrf_token": token, **fields}, **kwargs)

    def sign_in(self, address: str, password: str) -> httpx.Response:
        response = self.submit("/signin", "/signin", {"address": address, "password": password})
        assert response.status_code == 303, response.text
        return response

    def sign_in_token(self, token: str) -> httpx.Response:
        response = self.submit("/signin/token", "/signin/token", {"token": token})
        assert response.status_code == 303, response.text
        return response


def text_of(html: str, element_id: str) -> str:
    """The text inside the element with ``id`` (pages escape it; this unescapes)."""
    import html as html_module

    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</', html, re.S)
    assert found, f"no #{element_id} on the page"
    return html_module.unescape(re.sub(r"<[^>]+>", "", found.group(1)))
