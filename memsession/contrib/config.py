"""The web integrations' options, checked once when an integration starts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..config import Config
from ..errors import ConfigError
from ..validate import check_number

__all__ = ["WebConfig"]

_SAMESITE = ("Lax", "Strict", "None")
_TOKEN_BAD = frozenset(' \t\r\n"(),/:;<=>?@[\\]{}')


@dataclass(frozen=True, slots=True, kw_only=True)
class WebConfig:
    """Options of the web integrations, with their defaults.

    Each integration translates its framework's settings (``app.config``,
    Django settings, middleware arguments) into one of these once, at start.
    """

    #: Newest first; the first signs cookies, all of them verify (rotation).
    secret_keys: tuple[str | bytes, ...] = ()
    cookie_name: str = "session"
    cookie_domain: str | None = None
    cookie_path: str = "/"
    cookie_secure: bool = False
    cookie_httponly: bool = True
    #: "Lax", "Strict", "None" (needs ``cookie_secure``) or None to omit.
    cookie_samesite: str | None = "Lax"
    #: CHIPS: a cookie partitioned by top-level site (needs ``cookie_secure``).
    cookie_partitioned: bool = False
    #: The cookie carries Max-Age/Expires from the session's expiry; False
    #: makes it a browser-session cookie (the server still expires it).
    permanent: bool = True
    #: Re-send the cookie (with its later expiry) when a read slid the idle
    #: timeout; touches are coalesced, so at most once per ``touch_interval``.
    refresh_each_request: bool = True
    #: Longest wait (seconds) for the user's last write to reach this process.
    consistency_timeout: float = 0.1
    #: Salt that separates cookie signatures from other uses of the secret.
    salt: str = "memsession.cookie"

    def __post_init__(self) -> None:
        keys = self.secret_keys
        if isinstance(keys, (str, bytes)):
            object.__setattr__(self, "secret_keys", keys := (keys,))
        else:
            object.__setattr__(self, "secret_keys", keys := tuple(keys))
        if not keys or not all(isinstance(k, (str, bytes)) and k for k in keys):
            raise ConfigError("secret_keys", keys, "needs at least one non-empty secret (str or bytes)")
        name = self.cookie_name
        if not isinstance(name, str) or not name or not name.isascii() or _TOKEN_BAD.intersection(name):
            raise ConfigError("cookie_name", name, "must be a non-empty cookie token")
        if self.cookie_samesite is not None:
            samesite = str(self.cookie_samesite).capitalize()
            if samesite not in _SAMESITE:
                raise ConfigError("cookie_samesite", self.cookie_samesite, "must be Lax, Strict, None or None")
            if samesite == "None" and not self.cookie_secure:
                raise ConfigError("cookie_samesite", self.cookie_samesite, "SameSite=None needs cookie_secure")
            object.__setattr__(self, "cookie_samesite", samesite)
        if self.cookie_partitioned and not self.cookie_secure:
            raise ConfigError("cookie_partitioned", True, "a partitioned cookie needs cookie_secure")
        check_number("consistency_timeout", self.consistency_timeout, allow_zero=True)
        if not isinstance(self.cookie_path, str) or not self.cookie_path.startswith("/"):
            raise ConfigError("cookie_path", self.cookie_path, "must start with /")

    @classmethod
    def split_options(cls, options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Options for ``WebConfig`` and options for the cache ``Config``; unknown names fail."""
        web_names = {f.name for f in fields(cls)}
        cache_names = {f.name for f in fields(Config)}
        web, cache = {}, {}
        for name, value in options.items():
            if name in web_names:
                web[name] = value
            elif name in cache_names:
                cache[name] = value
            else:
                known = ", ".join(sorted(web_names | cache_names))
                raise ConfigError(name, value, f"unknown option; known: {known}")
        return web, cache
