"""The Flask app of the end-to-end tests: ``tests.e2e_apps.flask_app:app``, or ``create_app(cache)``."""

from __future__ import annotations

import os

from flask import Flask, jsonify, request, session

from memsession import SessionCache
from memsession.contrib.flask import MemSession


def me():
    return jsonify(pid=os.getpid(), session=dict(session))


def login():
    session.regenerate()
    session["user"] = request.args["user"]
    return jsonify(pid=os.getpid())


def write():
    session[request.args["key"]] = request.args["value"]
    return jsonify(pid=os.getpid())


def logout():
    session.clear()
    return jsonify(pid=os.getpid())


def create_app(cache: SessionCache) -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "e2e-flask-secret"
    MemSession(app, cache=cache)
    app.get("/me")(me)
    app.post("/login")(login)
    app.post("/write")(write)
    app.post("/logout")(logout)
    return app


def __getattr__(name: str) -> Flask:
    # ``flask_app:app`` builds the app only when asked, so importing
    # create_app alone doesn't make a cache.
    if name == "app":
        from . import worker_cache

        globals()["app"] = app = create_app(worker_cache())
        return app
    raise AttributeError(name)
