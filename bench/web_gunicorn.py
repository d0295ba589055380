"""gunicorn config of the web benchmark's memsession apps: the embedded default (hooks start a sidecar)."""

import os

from memsession.contrib.gunicorn import GunicornHooks

GunicornHooks(store=os.environ["MEMSESSION_STORE"]).install(globals())
