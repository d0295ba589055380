"""What the README shows for Starlette, as a user writes it: checked with ``mypy --strict``."""

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from memsession import SessionCache
from memsession.contrib.asgi import SessionMiddleware, get_session


async def login(request: Request) -> PlainTextResponse:
    session = get_session(request)
    session.regenerate()
    session["user"] = "ada"
    return PlainTextResponse("ok")


async def logout(request: Request) -> PlainTextResponse:
    get_session(request).destroy()
    return PlainTextResponse("bye")


plain = Starlette(routes=[Route("/login", login)], middleware=[Middleware(SessionMiddleware, secret_key="...")])
shared = Starlette(
    routes=[Route("/login", login), Route("/logout", logout)],
    middleware=[Middleware(SessionMiddleware, secret_key="...", https_only=True, cache=SessionCache(idle_timeout=1800))],
)
tuned = Starlette(middleware=[Middleware(SessionMiddleware, secret_key="...", max_age=600, maxsize=10_000,
                                         consistency_timeout=0.2)])
