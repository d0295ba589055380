"""Django settings: the one line that matters is SESSION_ENGINE."""

import os

SECRET_KEY = os.environ.get("SECRET_KEY", "change-me: examples only")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.sessions"]
# memsession's SessionMiddleware is Django's plus read-your-writes across workers.
MIDDLEWARE = ["memsession.contrib.django.SessionMiddleware"]
ROOT_URLCONF = "urls"
DATABASES: dict = {}
USE_TZ = True

SESSION_ENGINE = "memsession.contrib.django"
SESSION_COOKIE_AGE = 30 * 60  # also memsession's idle timeout
MEMSESSION = {"max_age": 8 * 3600}  # absolute lifetime, however active
