"""A store from a URL: the scheme picks the adapter.

=====================================  =====================================
``file:///abs/path/sessions.json``     ``JsonFileStore`` (``file:sessions.json``
                                        or a bare path is relative to the cwd)
``postgresql://...`` / ``postgres://``  ``PostgresStore`` (the URL is the conninfo)
``couchdb://host:port/db``              ``CouchStore`` over http
``couchdbs://...``, ``http(s)://.../db``  ``CouchStore`` (https for the first)
=====================================  =====================================

Options that are not part of the URL are keyword arguments, passed to the
adapter. Credentials in a URL are never logged: ``redact`` hides them.
``check_store`` refuses, before anything starts, a location the store can't
use whoever opens it (a file in a missing folder); a server is checked when
the store connects.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from memsession.errors import ConfigError

from .base import Store

__all__ = ["check_store", "file_path", "open_store", "redact", "store_kind"]


def store_kind(url: str) -> str:
    """``"file"``, ``"postgres"`` or ``"couchdb"``; ``ConfigError`` for anything else."""
    if not isinstance(url, str) or not url:
        raise ConfigError("store", url, "give a store URL (file:///path.json, postgresql://..., couchdb://...)")
    scheme = url.split(":", 1)[0].lower() if "://" in url or url.startswith("file:") else ""
    if scheme in ("", "file"):
        return "file"
    if scheme in ("postgresql", "postgres"):
        return "postgres"
    if scheme in ("couchdb", "couchdbs", "http", "https"):
        return "couchdb"
    raise ConfigError("store", redact(url), f"unknown store scheme {scheme!r}")


def file_path(url: str) -> str:
    """The filesystem path of a ``file:`` URL or a bare path."""
    if url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError("store", url, "file URLs must be local (file:///path)")
        return unquote(parts.path)
    if url.startswith("file:"):
        return os.path.abspath(unquote(url[5:]))
    return os.path.abspath(url)


def check_store(url: str) -> None:
    """``ConfigError`` (option ``store``) for a URL no store can open, saying how to fix it."""
    if store_kind(url) != "file":
        return
    from .jsonfile.store import folder_problem

    problem = folder_problem(file_path(url))
    if problem is not None:
        raise ConfigError("store", url, problem)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def open_store(url: str, **options: Any) -> Store:
    """Open the store ``url`` names; ``options`` go to the adapter's constructor."""
    kind = store_kind(url)
    if kind == "file":
        from .jsonfile import JsonFileStore

        return JsonFileStore(file_path(url), **options)
    if kind == "postgres":
        from .postgres import PostgresStore

        return PostgresStore(url, **options)
    try:
        from .couchdb import CouchStore
    except ImportError as exc:
        raise ConfigError("store", redact(url), f"the CouchDB adapter is not available: {exc}") from exc
    parts = urlsplit(url)
    scheme = {"couchdb": "http", "couchdbs": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    return CouchStore(urlunsplit(parts._replace(scheme=scheme)), **options)
