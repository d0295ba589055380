"""WSGI entry point. gunicorn imports it in each worker after forking, so the
worker's session cache (and its bus sockets) are born in the worker."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

from django.core.wsgi import get_wsgi_application

from memsession import SessionCache
from memsession.bus import ZmqBus
from memsession.contrib.django import set_cache

application = get_wsgi_application()
set_cache(
    SessionCache(
        idle_timeout=30 * 60, max_age=8 * 3600, bus=ZmqBus(runtime_dir=os.environ["MEMSESSION_RUNTIME_DIR"])
    )
)
