"""One CouchDB database over HTTP, as the CouchDB adapter uses it: requests, bulk reads and deletes.

``CouchDatabase`` holds the ``httpx.Client`` whose ``base_url`` is the
database and makes every request of the adapter: each response body is read
with a size limit, and transport failures, 5xx and 429 answers become
``StoreUnavailable`` (the call may be retried), any other refusal
``StoreError``. Credentials in a URL are moved to HTTP basic auth and never
appear in reprs, logs or errors.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from memsession.errors import ConfigError, StoreError, StoreUnavailable

from ..base import check_open, json_default

__all__ = ["NAME", "CouchDatabase", "split_url"]

#: The adapter's name in errors, logs and counters.
NAME = "couchdb"


def split_url(url: str) -> tuple[httpx.URL, tuple[str, str] | None]:
    """The database URL without credentials, and the credentials."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigError("url", "<hidden>", f"not a URL: {type(exc).__name__}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError("url", parsed.copy_with(username=None, password=None), "must be an http(s) URL")
    auth = None
    if parsed.username or parsed.password:
        auth = (parsed.username, parsed.password)
        parsed = parsed.copy_with(username=None, password=None)
    if parsed.path.strip("/") == "":
        raise ConfigError("url", parsed, "must name the database: http://host:5984/<database>")
    if not parsed.path.endswith("/"):
        parsed = parsed.copy_with(path=parsed.path + "/")
    return parsed, auth


class CouchDatabase:
    """A database at ``url``, through a client made here, or through ``client`` (the caller's, left open).

    The options are checked by the caller (``CouchStore``).
    """

    def __init__(
        self,
        url: str | None,
        client: httpx.Client | None,
        *,
        timeout: float,
        max_response_bytes: int,
        verify: bool | str,
        trust_env: bool,
    ) -> None:
        self.max_response_bytes = max_response_bytes
        self._closed = False
        self._owns_client = client is None
        if client is None:
            assert url is not None
            base, auth = split_url(url)
            client = httpx.Client(base_url=base, auth=auth, timeout=timeout, verify=verify, trust_env=trust_env)
        self.client = client
        self.url = str(client.base_url)

    def _request(
        self,
        op: str,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...] = (200, 201, 202),
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> tuple[int, Any]:
        check_open(self._closed, NAME, op)
        content = None
        headers = {"Accept": "application/json"}
        if body is not None:
            content = orjson.dumps(body, default=json_default)
            headers["Content-Type"] = "application/json"
        try:
            with self.client.stream(method, path, params=params, content=content, headers=headers) as response:
                status = response.status_code
                chunks = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        raise StoreError(
                            f"CouchDB {op}: response larger than {self.max_response_bytes} bytes",
                            store=NAME,
                            op=op,
                        )
                    chunks.append(chunk)
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"CouchDB {op} failed: {type(exc).__name__}: {exc}", store=NAME, op=op) from exc
        raw = b"".join(chunks)
        try:
            payload = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            raise StoreError(f"CouchDB {op}: response is not JSON (HTTP {status})", store=NAME, op=op) from exc
        if status in ok:
            return status, payload
        reason = payload.get("reason") if isinstance(payload, dict) else None
        error = payload.get("error") if isinstance(payload, dict) else None
        message = f"CouchDB {op}: HTTP {status} {error or ''} {reason or ''}".strip()
        if status >= 500 or status == 429:
            raise StoreUnavailable(message, store=NAME, op=op)
        raise StoreError(message, store=NAME, op=op)

    def _current(self, op: str, ids: list[str], include_docs: bool) -> dict[str, dict[str, Any]]:
        """``{id: row}`` for the ids that exist (not deleted)."""
        _, payload = self._request(
            op,
            "POST",
            "_all_docs",
            params={"include_docs": "true"} if include_docs else None,
            body={"keys": ids},
        )
        out = {}
        for row in payload.get("rows", ()):
            value = row.get("value")
            if "error" in row or not isinstance(value, dict) or value.get("deleted"):
                continue
            out[row["key"]] = row
        return out

    def _remove(self, op: str, revs: dict[str, str]) -> int:
        if not revs:
            return 0
        docs = [{"_id": doc_id, "_rev": rev, "_deleted": True} for doc_id, rev in revs.items()]
        _, results = self._request(op, "POST", "_bulk_docs", body={"docs": docs})
        removed = 0
        for result in results:
            if result.get("ok"):
                removed += 1
            elif result.get("error") != "conflict":
                raise StoreError(f"CouchDB {op} of a document: {result.get('error')}", store=NAME, op=op)
        return removed

    def close(self) -> None:
        """Close the HTTP client the store made (a client passed in stays open). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            self.client.close()
