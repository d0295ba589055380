"""Each integration's default timeouts are the ones the README's "Timeouts by default" table gives."""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings
from flask import Flask

from memsession import SessionCache
from memsession.contrib import django as django_engine
from memsession.contrib.asgi import SessionMiddleware as AsgiMiddleware
from memsession.contrib.flask import MemSession
from memsession.contrib.wsgi import SessionMiddleware as WsgiMiddleware

README = Path(__file__).resolve().parent.parent / "README.md"


def _table_row(name: str) -> str:
    text = README.read_text()
    table = text.split("**Timeouts by default.**", 1)[1].split("\n\n", 2)[1]
    rows = [row for row in table.splitlines() if row.startswith(f"| {name}")]
    assert len(rows) == 1, f"no README row for {name}"
    return rows[0]


def _documented(name: str) -> tuple[float | None, float | None]:
    cells = [cell.strip() for cell in _table_row(name).strip("|").split("|")]

    def seconds(cell: str) -> float | None:
        if cell.startswith("none"):
            return None
        found = re.match(r"([\d,]+) s\b", cell)
        assert found, cell
        return float(found.group(1).replace(",", ""))

    return seconds(cells[1]), seconds(cells[2])


def _effective(cache: SessionCache) -> tuple[float | None, float | None]:
    return cache.config.idle_timeout, cache.config.max_age


def test_session_cache_and_wsgi() -> None:
    row = "`SessionCache`, plain WSGI middleware"
    assert _effective(SessionCache()) == _documented(row)
    assert _effective(WsgiMiddleware(lambda e, s: [], secret_keys=["k"]).manager.cache) == _documented(row)


def test_flask() -> None:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "k"
    MemSession(app)
    assert _effective(app.extensions["memsession"].cache) == _documented("Flask")


def test_django() -> None:
    from django.test import override_settings

    if not settings.configured:  # run alone; with the whole suite, test_contrib_django configured them
        settings.configure(SECRET_KEY="k")
    with override_settings(MEMSESSION=None):  # Django's defaults, memsession's defaults
        options, _ = django_engine._settings()
    with SessionCache(**options) as cache:
        assert _effective(cache) == _documented("Django")


def test_starlette() -> None:
    middleware = AsgiMiddleware(lambda scope, receive, send: None, secret_key="k")
    assert _effective(middleware.manager.cache) == _documented("Starlette")
