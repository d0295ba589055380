"""Flask on gunicorn with sessions in every worker's memory.

Each worker builds its SessionCache when it imports this module (gunicorn
imports the app after forking), joined to the hub that ``run.py`` started.
"""

from __future__ import annotations

import os

from flask import Flask, request, session

from memsession import SessionCache
from memsession.bus import ZmqBus
from memsession.contrib.flask import MemSession

app = Flask(__name__)
app.config.update(
    SECRET_KEY=os.environ.get("SECRET_KEY", "change-me: examples only"),
    PERMANENT_SESSION_LIFETIME=30 * 60,  # idle timeout
    MEMSESSION_MAX_AGE=8 * 3600,  # absolute lifetime
)
MemSession(app, cache=SessionCache(bus=ZmqBus(runtime_dir=os.environ["MEMSESSION_RUNTIME_DIR"])))


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
