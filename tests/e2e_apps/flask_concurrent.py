"""The Flask app of the concurrent-requests test: ``tests.e2e_apps.flask_concurrent:app``.

The embedded default (``gunicorn_embedded.conf.py``'s hooks), with the routes
of ``flask_app`` plus these:

- ``POST /start?k=v...``: a new session holding every query parameter.
- ``POST /set?key=K&value=V`` and ``POST /delete?key=K``: change one key, after
  holding the request a moment with its session already loaded.
- ``GET /whoami``: the worker's pid, the session id and the session's data.

The hold is what makes two requests of one user, sent at the same moment, run
on two sync workers at once: a sync worker serves one request at a time, so
the second is accepted by another worker while the first is held, and each
changes the copy it loaded before the other saved.
"""

from __future__ import annotations

import os
import time

from flask import Response, jsonify, request, session

from memsession.contrib.process import session_cache

from .flask_app import create_app

__all__ = ["HOLD", "app"]

#: Seconds a changing request is held. The same for every request, so twins sent together also
#: save together: each from the copy it loaded, neither having heard of the other's change yet.
HOLD = 0.04


def _hold() -> None:
    time.sleep(HOLD)


def start() -> Response:
    session.update(request.args.to_dict())
    return jsonify(pid=os.getpid())


def set_key() -> Response:
    _hold()
    session[request.args["key"]] = request.args["value"]
    return jsonify(pid=os.getpid())


def delete_key() -> Response:
    _hold()
    del session[request.args["key"]]
    return jsonify(pid=os.getpid())


def whoami() -> Response:
    # The id is shown so the test can find the session in the store; a real app never echoes it.
    return jsonify(pid=os.getpid(), sid=getattr(session, "sid", None), session=dict(session))


app = create_app(session_cache())
app.post("/start")(start)
app.post("/set")(set_key)
app.post("/delete")(delete_key)
app.get("/whoami")(whoami)
