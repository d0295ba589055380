"""The Starlette app on the embedded default: gunicorn's hooks (``gunicorn_embedded.conf.py``) start the sidecar.

Run under ``gunicorn -k uvicorn.workers.UvicornWorker``; ``session_cache()``
is made when a worker imports the app, after the hooks set the process's
cache factory, so it joins the sidecar.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware

from memsession.contrib.asgi import SessionMiddleware
from memsession.contrib.process import session_cache

from .starlette_app import ROUTES

app = Starlette(routes=ROUTES,
                middleware=[Middleware(SessionMiddleware, secret_key="e2e-starlette-secret", cache=session_cache())])
