"""The Starlette app of the end-to-end tests: ``tests.e2e_apps.starlette_app:app``."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from memsession.contrib.asgi import SessionMiddleware

from . import worker_cache


async def me(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid(), "session": dict(request.session)})


async def login(request: Request) -> JSONResponse:
    request.session.regenerate()
    request.session["user"] = request.query_params["user"]
    return JSONResponse({"pid": os.getpid()})


async def write(request: Request) -> JSONResponse:
    request.session[request.query_params["key"]] = request.query_params["value"]
    return JSONResponse({"pid": os.getpid()})


async def logout(request: Request) -> JSONResponse:
    request.session.clear()
    return JSONResponse({"pid": os.getpid()})


ROUTES = [
    Route("/me", me),
    Route("/login", login, methods=["POST"]),
    Route("/write", write, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]

app = Starlette(routes=ROUTES,
                middleware=[Middleware(SessionMiddleware, secret_key="e2e-starlette-secret", cache=worker_cache())])
