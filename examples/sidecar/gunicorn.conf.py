"""The embedded shape: gunicorn starts everything, no other service to run.

    gunicorn -c examples/sidecar/gunicorn.conf.py examples.sidecar.app:app

The master spawns ``memsession sidecar`` (hub + JSON file store) as its child;
the workers share every session through it; sessions survive a restart in
``MEMSESSION_STORE`` (default ``./sessions.json``; any store URL works, e.g.
``postgresql://app@db/app``).

Optional: ``MEMSESSION_RUNTIME_DIR`` pins the sidecar's socket folder (then
``memsession status --runtime-dir $MEMSESSION_RUNTIME_DIR`` finds it; by
default it is a fresh private temp folder), ``MEMSESSION_HTTP=127.0.0.1:9108``
serves ``/health`` and ``/metrics``, ``MEMSESSION_ACKNOWLEDGED=1`` makes a
request that changed its session wait until the sidecar has stored it, and
``MEMSESSION_HOST_NAME=web-1`` (with a PostgreSQL store) joins this host to the
others sharing that database (README, "Several hosts").
"""

import os

from memsession.service.gunicorn import GunicornHooks

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WORKERS", "4"))

GunicornHooks(
    store=os.environ.get("MEMSESSION_STORE", "sessions.json"),
    runtime_dir=os.environ.get("MEMSESSION_RUNTIME_DIR") or None,
    sidecar_args=[
        *(["--http", os.environ["MEMSESSION_HTTP"]] if os.environ.get("MEMSESSION_HTTP") else []),
        *(["--host-name", os.environ["MEMSESSION_HOST_NAME"]] if os.environ.get("MEMSESSION_HOST_NAME") else []),
    ],
    acknowledged=os.environ.get("MEMSESSION_ACKNOWLEDGED") == "1",
).install(globals())
