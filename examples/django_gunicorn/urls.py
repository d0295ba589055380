"""Three views: who am I, log in, log out."""

import os

from django.http import HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST


def whoami(request):
    return HttpResponse(f"pid {os.getpid()} sees user={request.session.get('user')!r}")


@csrf_exempt
@require_POST
def login(request):
    request.session.cycle_key()  # a new id at login, as django.contrib.auth.login does
    request.session["user"] = request.GET.get("user", "ada")
    return HttpResponse(f"pid {os.getpid()}")


@csrf_exempt
@require_POST
def logout(request):
    request.session.flush()
    return HttpResponse(f"pid {os.getpid()}")


urlpatterns = [path("whoami", whoami), path("login", login), path("logout", logout)]
