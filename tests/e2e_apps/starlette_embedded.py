"""The Starlette app on the embedded default: gunicorn's hooks (``gunicorn_embedded.conf.py``) start the sidecar.

Run under ``gunicorn -k uvicorn.workers.UvicornWorker``; ``session_cache()``
is made when a worker imports the app, after the hooks set the process's
cache factory, so it joins the sidecar.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from memsession.contrib.asgi import SessionMiddleware
from memsession.contrib.process import session_cache

from .starlette_app import login, logout, me, write

app = Starlette(
    routes=[
        Route("/me", me),
        Route("/login", login, methods=["POST"]),
        Route("/write", write, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ],
    middleware=[Middleware(SessionMiddleware, secret_key="e2e-starlette-secret", cache=session_cache())],
)
