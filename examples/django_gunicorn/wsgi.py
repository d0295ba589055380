"""WSGI entry point: ``gunicorn -c gunicorn.conf.py wsgi:application`` (from this directory).

gunicorn imports it in each worker after forking, so the worker's session
cache (and its bus sockets) are born in the worker."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

from django.core.wsgi import get_wsgi_application

from memsession.contrib.django import set_cache
from memsession.contrib.gunicorn import session_cache

application = get_wsgi_application()
# The worker's cache, joined to the sidecar gunicorn.conf.py's hooks start.
set_cache(session_cache(idle_timeout=30 * 60, max_age=8 * 3600))
