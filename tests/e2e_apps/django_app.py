"""The Django app of the end-to-end tests: ``tests.e2e_apps.django_app:application``.

Uses memsession's SessionMiddleware, so the companion cookie gives
read-your-writes across workers. With ``MEMSESSION_RUNTIME_DIR`` it joins that
hub; otherwise it relies on the settings alone (the embedded default).
"""

from __future__ import annotations

import os

from django.conf import settings

if not settings.configured:
    settings.configure(
        SECRET_KEY="e2e-django-secret",
        DEBUG=False,
        ALLOWED_HOSTS=["127.0.0.1"],
        INSTALLED_APPS=["django.contrib.sessions"],
        MIDDLEWARE=["memsession.contrib.django.SessionMiddleware"],
        SESSION_ENGINE="memsession.contrib.django",
        ROOT_URLCONF=__name__,
        DATABASES={},
        USE_TZ=True,
    )

import django

django.setup()

from django.core.wsgi import get_wsgi_application
from django.http import JsonResponse
from django.urls import path

from memsession.contrib.django import get_cache, set_cache

from . import worker_cache


def me(request):
    return JsonResponse({"pid": os.getpid(), "session": dict(request.session.items())})


def login(request):
    request.session.cycle_key()
    request.session["user"] = request.GET["user"]
    return JsonResponse({"pid": os.getpid()})


def write(request):
    request.session[request.GET["key"]] = request.GET["value"]
    return JsonResponse({"pid": os.getpid()})


def logout(request):
    request.session.flush()
    return JsonResponse({"pid": os.getpid()})


urlpatterns = [path("me", me), path("login", login), path("write", write), path("logout", logout)]

application = get_wsgi_application()
if os.environ.get("MEMSESSION_RUNTIME_DIR"):
    set_cache(worker_cache())  # joined to the test's own hub
else:
    get_cache()  # under GunicornHooks: built now, so the worker joins the sidecar before serving
