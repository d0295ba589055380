"""Settings, views and WSGI app of the Django web benchmark (``bench.web_django:application``).

``BENCH_SESSION`` is ``memsession`` (the embedded default: ``bench/web_gunicorn.py``'s
hooks run a sidecar) or ``cached_db`` (Django's cache-backed database
sessions: per-worker local-memory cache in front of SQLite in ``BENCH_DB``).
"""

from __future__ import annotations

import os

from django.conf import settings

KIND = os.environ.get("BENCH_SESSION", "memsession")

if not settings.configured:
    settings.configure(
        SECRET_KEY="bench-secret",
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1"],
        INSTALLED_APPS=["django.contrib.sessions"],
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
        ROOT_URLCONF=__name__,
        USE_TZ=True,
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": os.environ.get("BENCH_DB", ":memory:"),
                "OPTIONS": {"timeout": 30},
            }
        },
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        SESSION_ENGINE={
            "memsession": "memsession.contrib.django",
            "cached_db": "django.contrib.sessions.backends.cached_db",
        }[KIND],
    )

import django

django.setup()

from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import path


def read(request):
    return HttpResponse(str(request.session.get("n", 0)))


def write(request):
    request.session["n"] = request.session.get("n", 0) + 1
    return HttpResponse(str(request.session["n"]))


urlpatterns = [path("read", read), path("write", write)]

application = get_wsgi_application()

if KIND == "memsession":
    from memsession.contrib.django import set_cache
    from memsession.contrib.process import session_cache

    set_cache(session_cache(idle_timeout=settings.SESSION_COOKIE_AGE, max_age=None))
