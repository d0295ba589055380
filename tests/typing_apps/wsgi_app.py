"""What the README shows for plain WSGI, as a user writes it: checked with ``mypy --strict``."""

from collections.abc import Callable, Iterable
from typing import Any

from memsession.contrib.wsgi import SessionMiddleware, get_session


def inner(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    session = get_session(environ)
    session.regenerate()
    session["user"] = "ada"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


app = SessionMiddleware(inner, secret_keys=["..."], idle_timeout=1800)
