"""The web service's ASGI application: the API, JMAP and the pages over one store and one clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from responder.config.settings import Settings
from responder.store.database import Store
from responder.web import api, jmap, pages
from responder.web.context import PasswordCheck, WebContext, read_secret
from responder.web.errors import HANDLERS
from responder.web.imap import check_password
from responder.web.limits import BodyLimit
from responder.web.throttle import SignInThrottle


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], dt.datetime] | None = None,
    store: Store | None = None,
    imap: PasswordCheck | None = None,
) -> FastAPI:
    """The application for ``settings``; the store is opened here (pooled) unless one is given."""
    web = settings.web
    clock = clock or _now
    own_store = store is None
    opened = store or Store.open(settings.database.url, settings.database.busy_timeout, pooled=True)
    opened.check_schema()
    context = WebContext(
        settings=settings,
        store=opened,
        clock=clock,
        imap=imap or check_password,
        throttle=SignInThrottle(web.signin_per_account, web.signin_per_client, clock),
        secret=read_secret(web.secret_file),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if own_store:
            opened.close()

    app = FastAPI(
        title="responder",
        summary="Vacations, retired addresses, templates and the audit trail of the responder autoresponder",
        version="1",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
        exception_handlers=HANDLERS,
    )
    app.state.web = context
    app.include_router(api.router)
    app.include_router(jmap.router)
    app.include_router(pages.router)
    app.add_middleware(BodyLimit, max_body=web.max_body)
    return app
