"""The Flask app of the web benchmark; ``BENCH_SESSION`` picks the session backend.

``memsession`` (the embedded default: ``bench/web_gunicorn.py``'s hooks run a sidecar),
``cookie`` (Flask's signed-cookie sessions), ``redis`` (Flask-Session on the
server in ``BENCH_REDIS_URL``) or ``none`` (the same routes, no session).

``unreplicated`` is a floor, not a deployment: memsession with no bus and no
store, each worker keeping its own copy of one session made before the fork
(gunicorn ``--preload``), whose cookie ``/floor-cookie`` hands out. A request
then does all a memsession request does except replicate, so the distance to
``memsession`` is what replication costs.
"""

from __future__ import annotations

import os

from flask import Flask, session

KIND = os.environ.get("BENCH_SESSION", "none")

app = Flask(__name__)
app.config["SECRET_KEY"] = "bench-secret"

if KIND == "memsession":
    from memsession.contrib.flask import MemSession
    from memsession.contrib.process import session_cache

    MemSession(app, cache=session_cache())
elif KIND == "unreplicated":
    from memsession import SessionCache
    from memsession.contrib.flask import MemSession
    from memsession.contrib.workers import allow_unshared
    from memsession.session import new_id

    MemSession(app, cache=SessionCache())
    floor_manager = app.extensions["memsession"]
    allow_unshared(floor_manager.cache)  # a floor, not a deployment: each worker's copy on purpose
    _floor_sid = new_id()
    _floor_record = floor_manager.cache.set(_floor_sid, {"n": 0})
    # The cookie of the session as both workers inherit it: every later write on either
    # worker still reflects it, so no request waits for a change its worker can't get.
    FLOOR_COOKIE = floor_manager.signer.sign(_floor_sid, _floor_record.version, _floor_record.origin)

    @app.get("/floor-cookie")
    def floor_cookie():
        return FLOOR_COOKIE

elif KIND == "redis":
    import redis
    from flask_session import Session

    app.config.update(SESSION_TYPE="redis", SESSION_REDIS=redis.Redis.from_url(os.environ["BENCH_REDIS_URL"]))
    Session(app)
elif KIND not in ("cookie", "none"):
    raise SystemExit(f"unknown BENCH_SESSION={KIND!r}")

if KIND == "none":

    @app.get("/read")
    def read():
        return "0"

    @app.get("/write")
    def write():
        return "1"

else:

    @app.get("/read")
    def read():
        return str(session.get("n", 0))

    @app.get("/write")
    def write():
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])
