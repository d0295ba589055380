"""gunicorn config of the web benchmark's memsession apps: the embedded default (hooks start a sidecar)."""

import os

from memsession.service.gunicorn import GunicornHooks

GunicornHooks(store=os.environ["MEMSESSION_STORE"]).install(globals())
