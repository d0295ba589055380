"""gunicorn settings: 4 workers, and memsession's embedded default.

The master starts a sidecar (hub + JSON file store) and every worker's
cache joins it: one session, seen by every worker, kept across restarts.
"""

import os

from memsession.service.gunicorn import GunicornHooks

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = 4
loglevel = "warning"

GunicornHooks(store=os.environ.get("MEMSESSION_STORE", "sessions.json")).install(globals())
