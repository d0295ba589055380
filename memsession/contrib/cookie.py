"""The session cookie in headers: what a response does with it, ``Set-Cookie`` and ``Cookie``."""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from typing import NamedTuple

from .config import WebConfig

__all__ = ["Cookie", "parse_cookie_header", "set_cookie_header"]


class Cookie(NamedTuple):
    """What the response does with the session cookie. ``value`` None: delete it."""

    value: str | None
    #: Wall time the session expires at (None: never); a permanent cookie carries it.
    expires: float | None = None


def set_cookie_header(
    config: WebConfig, cookie: Cookie, wall: Callable[[], float], *, permanent: bool | None = None
) -> str:
    """The ``Set-Cookie`` header value for ``cookie``; ``permanent`` overrides ``config``.

    ``wall`` is the cache's wall clock, read only for a permanent cookie's Max-Age.
    """
    if permanent is None:
        permanent = config.permanent
    if cookie.value is None:
        parts = [f"{config.cookie_name}=", "Max-Age=0", "Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
    else:
        parts = [f"{config.cookie_name}={cookie.value}"]
        if cookie.expires is not None and permanent:
            max_age = max(0, round(cookie.expires - wall()))
            parts.append(f"Max-Age={max_age}")
            parts.append("Expires=" + email.utils.formatdate(cookie.expires, usegmt=True))
    parts.append(f"Path={config.cookie_path}")
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
