"""A Flask app whose sessions every gunicorn worker shares.

    gunicorn -c examples/sidecar/gunicorn.conf.py examples.sidecar.app:app

``/`` counts visits in the session and says which worker answered: reload
it and the count keeps going whichever of the workers serves you.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request, session

from memsession.contrib.flask import MemSession
from memsession.contrib.process import session_cache

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "change-me-demo-only")
MemSession(app, cache=session_cache())


@app.get("/")
def index():
    session["visits"] = session.get("visits", 0) + 1
    return jsonify(worker=os.getpid(), visits=session["visits"], user=session.get("user"))


@app.post("/login")
def login():
    session.regenerate()
    session["user"] = request.args.get("user", "alice")
    return jsonify(worker=os.getpid(), user=session["user"])


@app.post("/set")
def set_value():
    session[request.args["key"]] = request.args["value"]
    return jsonify(worker=os.getpid(), session=dict(session))


@app.get("/me")
def me():
    # The session id is shown so the demo and the failure tests can find the session in the
    # store; a real app should never echo it.
    return jsonify(worker=os.getpid(), sid=getattr(session, "sid", None), session=dict(session))


@app.post("/logout")
def logout():
    session.destroy()
    return jsonify(worker=os.getpid())
