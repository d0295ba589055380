"""gunicorn settings for the end-to-end tests of the embedded default: the hooks start the sidecar."""

import os

from memsession.service.gunicorn import GunicornHooks

GunicornHooks(store=os.environ["MEMSESSION_STORE"]).install(globals())
