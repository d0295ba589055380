"""Flask on gunicorn with sessions in every worker's memory.

    gunicorn -c gunicorn.conf.py app:app      (from this directory)

``session_cache()`` is the worker's cache, joined to the sidecar that
gunicorn.conf.py's hooks start (outside gunicorn: a plain in-process cache).
"""

from __future__ import annotations

import os

from flask import Flask, request, session

from memsession.contrib.flask import MemSession
from memsession.contrib.process import session_cache

app = Flask(__name__)
app.config.update(
    SECRET_KEY=os.environ.get("SECRET_KEY", "change-me: examples only"),
)
MemSession(app, cache=session_cache(idle_timeout=30 * 60, max_age=8 * 3600))


@app.get("/whoami")
def whoami():
    return f"pid {os.getpid()} sees user={session.get('user')!r}"


@app.post("/login")
def login():
    session.regenerate()  # a new id at login: no session fixation
    session["user"] = request.args.get("user", "ada")
    return f"pid {os.getpid()}"


@app.post("/logout")
def logout():
    session.clear()
    return f"pid {os.getpid()}"
