"""The session cookie in headers: what a response does with it, ``Set-Cookie`` and ``Cookie``."""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable
from typing import NamedTuple

from .config import WebConfig

__all__ = ["Cookie", "HttpDates", "cookie_attributes", "parse_cookie_header", "set_cookie_header"]


class Cookie(NamedTuple):
    """What the response does with the session cookie. ``value`` None: delete it."""

    value: str | None
    #: Wall time the session expires at (None: never); a permanent cookie carries it.
    expires: float | None = None


def cookie_attributes(config: WebConfig) -> str:
    """The attributes every ``Set-Cookie`` of ``config`` ends with (Path, Domain, Secure, HttpOnly, ...).

    They depend on the configuration only: a ``SessionManager`` joins them once.
    """
    parts = [f"Path={config.cookie_path}"]
    if config.cookie_domain:
        parts.append(f"Domain={config.cookie_domain}")
    if config.cookie_secure:
        parts.append("Secure")
    if config.cookie_httponly:
        parts.append("HttpOnly")
    if config.cookie_samesite:
        parts.append(f"SameSite={config.cookie_samesite}")
    if config.cookie_partitioned:
        parts.append("Partitioned")
    return "; ".join(parts)


class HttpDates:
    """``Expires`` dates (RFC 7231 IMF-fixdate), the last one remembered.

    An HTTP date names a whole second, so a server setting cookies all the
    time formats about one a second rather than one per response.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[int, str] = (-1 << 63, "")

    def __call__(self, when: float) -> str:
        second = math.floor(when)
        last_second, text = self._last  # one tuple, replaced whole: safe between threads
        if second != last_second:
            text = email.utils.formatdate(second, usegmt=True)
            self._last = (second, text)
        return text


_DELETED = "=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; "


def set_cookie_header(
    config: WebConfig,
    cookie: Cookie,
    wall: Callable[[], float],
    *,
    permanent: bool | None = None,
    attributes: str | None = None,
    http_date: Callable[[float], str] | None = None,
) -> str:
    """The ``Set-Cookie`` header value for ``cookie``; ``permanent`` overrides ``config``.

    ``wall`` is the cache's wall clock, read only for a permanent cookie's Max-Age.
    ``attributes`` (``cookie_attributes(config)``) and ``http_date`` (an ``HttpDates``)
    let a caller that sets many cookies prepare them once.
    """
    if attributes is None:
        attributes = cookie_attributes(config)
    name = config.cookie_name
    if cookie.value is None:
        return f"{name}{_DELETED}{attributes}"
    if permanent is None:
        permanent = config.permanent
    if cookie.expires is not None and permanent:
        max_age = max(0, round(cookie.expires - wall()))
        expires = (http_date or HttpDates())(cookie.expires)
        return f"{name}={cookie.value}; Max-Age={max_age}; Expires={expires}; {attributes}"
    return f"{name}={cookie.value}; {attributes}"


def parse_cookie_header(header: str, name: str) -> list[str]:
    """Every value of cookie ``name`` in a ``Cookie`` header, in order.

    Browsers may send one name several times (different paths or domains);
    callers try each and keep the first that verifies.
    """
    values: list[str] = []
    if name not in header:
        return values
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values.append(value)
    return values
