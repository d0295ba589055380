"""The status page the sidecar's HTTP server sends at ``/``: ``status.html`` and its headers.

The page is one self-contained file (inline CSS and script, no other asset)
that reads ``/health`` once a second and draws the writes per second. Its
Content-Security-Policy allows exactly its own inline style and script (by
hash), fetches from its own origin and an empty ``data:`` icon (so that the
browser asks for no ``/favicon.ico``): nothing else loads, whatever a stat
(a store error message, say) contains.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib import resources

from ..errors import ConfigError

__all__ = ["status_page"]


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def _inline(tag: str, html: str) -> str:
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
    if len(found) != 1:
        # A packaging mistake, not a request's fault: say so at start.
        raise ConfigError("status.html", f"{len(found)} <{tag}> blocks", f"must hold exactly one inline <{tag}>")
    return str(found[0])


@lru_cache(maxsize=1)
def status_page() -> tuple[bytes, dict[str, str]]:
    """The page and the headers to send with it (read from the package once)."""
    html = resources.files("memsession.service").joinpath("status.html").read_text(encoding="utf-8")
    policy = (f"default-src 'none'; script-src {_hash(_inline('script', html))}; "
              f"style-src {_hash(_inline('style', html))}; connect-src 'self'; img-src data:; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    headers = {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
               "Cache-Control": "no-cache"}
    return html.encode(), headers
