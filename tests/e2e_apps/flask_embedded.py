"""The Flask app of the end-to-end tests on the embedded default (``gunicorn_embedded.conf.py``'s hooks)."""

from __future__ import annotations

from memsession.contrib.process import session_cache

from .flask_app import create_app

app = create_app(session_cache())
