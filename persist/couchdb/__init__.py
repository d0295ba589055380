"""The CouchDB adapter: sessions as CouchDB documents, over CouchDB 3's HTTP API with httpx.

``CouchStore`` keeps one document per session (``store``, in the format
``documents`` spells out), on top of the clear watermark's document and its
sweep (``clear``) and the HTTP requests every part makes (``database``).
Two read the database's ``_changes`` feed, through one loop (``changes``):
``CouchFollower`` (``follower``) feeds other hosts' writes into a local
SessionCache (``cache.apply``), and ``CouchChangeFeed`` (``feed``) tells a
sidecar which sessions changed (``persist.feed``: hosts joined through the
store).
"""

from __future__ import annotations

try:
    import httpx  # noqa: F401  (checked here, before any part of the adapter needs it)
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("CouchStore needs httpx: pip install 'memsession[couchdb]'") from exc

from .feed import CouchChangeFeed
from .follower import CouchFollower
from .store import CouchStore

__all__ = ["CouchChangeFeed", "CouchFollower", "CouchStore"]
