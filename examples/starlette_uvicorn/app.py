"""Starlette on uvicorn with sessions in every worker's memory.

uvicorn starts each worker as a fresh process that imports this module, so
each builds its own SessionCache, joined to the hub that ``run.py`` started.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from memsession import SessionCache
from memsession.bus import ZmqBus
from memsession.contrib.asgi import SessionMiddleware


async def whoami(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"pid {os.getpid()} sees user={request.session.get('user')!r}")


async def login(request: Request) -> PlainTextResponse:
    request.session.regenerate()  # a new id at login: no session fixation
    request.session["user"] = request.query_params.get("user", "ada")
    return PlainTextResponse(f"pid {os.getpid()}")


async def logout(request: Request) -> PlainTextResponse:
    request.session.clear()
    return PlainTextResponse(f"pid {os.getpid()}")


app = Starlette(
    routes=[
        Route("/whoami", whoami),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ],
    middleware=[
        Middleware(
            SessionMiddleware,
            secret_key=os.environ.get("SECRET_KEY", "change-me: examples only"),
            # The cache's timeouts are the sessions' (and the cookie's): no max_age here.
            cache=SessionCache(idle_timeout=30 * 60, bus=ZmqBus(runtime_dir=os.environ["MEMSESSION_RUNTIME_DIR"])),
        )
    ],
)
