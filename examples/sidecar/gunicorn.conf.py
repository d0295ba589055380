"""The embedded shape: gunicorn starts everything, no other service to run.

    gunicorn -c examples/sidecar/gunicorn.conf.py examples.sidecar.app:app

The master spawns ``memsession sidecar`` (hub + JSON file store) as its child;
the workers share every session through it; sessions survive a restart in
``MEMSESSION_STORE`` (default ``./sessions.json``).
"""

import os

from memsession.contrib.gunicorn import GunicornHooks

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WORKERS", "4"))

GunicornHooks(store=os.environ.get("MEMSESSION_STORE", "sessions.json")).install(globals())
