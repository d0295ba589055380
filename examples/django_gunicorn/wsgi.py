"""WSGI entry point: ``gunicorn -c gunicorn.conf.py wsgi:application`` (from this directory).

gunicorn imports it in each worker after forking, so the worker's session
cache (and its bus sockets) are born in the worker."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

from django.core.wsgi import get_wsgi_application

from memsession.contrib.django import get_cache

application = get_wsgi_application()
# Build the worker's session cache now (from settings.MEMSESSION), so it joins
# the sidecar that gunicorn.conf.py's hooks start before the worker serves.
get_cache()
