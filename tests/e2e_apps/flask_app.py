"""The Flask app of the end-to-end tests: ``tests.e2e_apps.flask_app:app``."""

from __future__ import annotations

import os

from flask import Flask, jsonify, request, session

from memsession.contrib.flask import MemSession

from . import worker_cache

app = Flask(__name__)
app.config["SECRET_KEY"] = "e2e-flask-secret"
MemSession(app, cache=worker_cache())


@app.get("/me")
def me():
    return jsonify(pid=os.getpid(), session=dict(session))


@app.post("/login")
def login():
    session.regenerate()
    session["user"] = request.args["user"]
    return jsonify(pid=os.getpid())


@app.post("/write")
def write():
    session[request.args["key"]] = request.args["value"]
    return jsonify(pid=os.getpid())


@app.post("/logout")
def logout():
    session.clear()
    return jsonify(pid=os.getpid())
